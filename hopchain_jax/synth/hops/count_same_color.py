"""count_same_color: count the objects of another category that share a found instance's colour (Level 2).
Program: attribute {instance, name: color}; count {filter with that colour}."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.hops.base import HopForm, register_form, there_are

SENTENCES = {"count_same_color": ("Count the {cats} that have the same colour as {ref}.",
                                  "Count how many {cats} share the colour of {ref}.",
                                  "Note how many {cats} are the same colour as {ref}.")}
QUESTIONS = ("How many {cats} have the same colour as {ref}?", "What is the number of {cats} sharing the colour of {ref}?")


def value_options(scene, inst_id: str) -> list[tuple]:
    """Categories of which some but not all instances have the instance's colour, within the count range."""
    inst = scene.by_id[inst_id]
    out = []
    for other in sorted(set(scene.by_cat) - {inst["category"]}):
        same = [c for c in scene.by_cat[other] if c["attributes"]["color"] == inst["attributes"]["color"]]
        if scene.cfg.min_count <= len(same) <= scene.cfg.max_count and len(same) < len(scene.by_cat[other]):
            out.append((len(same), tuple(c["id"] for c in same), (("category", other),)))
    return out


def value_from(scene, alt_id: str, params: dict):
    return scene.ex.op_count({}, {"category": params["category"], "color": scene.by_id[alt_id]["attributes"]["color"]})


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    s = r.say(SENTENCES["count_same_color"], cats=phrasing.plural(spec.params["category"]), ref=ref)
    color = r.step("attribute", {"instance": arg, "name": "color"})
    sid = r.main_step("count", {"filter": {"category": spec.params["category"], "color": {"ref": color}}})
    return s, lambda env: f"That colour is {env[color]}; {there_are(env[sid]).lower()}: {r.counted(spec)}."


FORM = register_form(HopForm(
    name="count_same_color", op="count", role="value", kind="perception", level=2, sentences=SENTENCES,
    questions=QUESTIONS, emit=emit, value_options=value_options, value_from=value_from, scope="set",
    question_fields=lambda r, spec: {"cats": phrasing.plural(spec.params["category"]), "ref": r.ref_phrase},
    blind_kind=lambda spec, subject_category: ("count", spec.params["category"], "same_color"),
    asks=frozenset({"color"}), outline="dashed", doc="the objects of a category sharing a found instance's colour"))

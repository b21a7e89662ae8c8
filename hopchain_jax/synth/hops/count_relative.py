"""count_relative: count the objects of another category directly left of / right of / above / below a
found instance (Level 2). Program: count {filter, relation, anchor}."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.clarity import Reject
from hopchain_jax.synth.hops.base import HopForm, register_form, there_are
from hopchain_jax.synth.program import DIRECTIONS

SENTENCES = {"count_relative": ("Count the {cats} {rel} {ref}.", "Count how many {cats} are {rel} {ref}.",
                                "Note how many {cats} there are {rel} {ref}.")}
QUESTIONS = ("How many {cats} are {rel} {ref}?", "What is the number of {cats} {rel} {ref}?")


def value_options(scene, inst_id: str) -> list[tuple]:
    inst = scene.by_id[inst_id]
    out = []
    for other in sorted(set(scene.by_cat) - {inst["category"]}):
        for relation in DIRECTIONS:
            try:
                counted = scene.clear_count_relative(inst, other, relation)
            except Reject:
                continue
            out.append((len(counted), tuple(c["id"] for c in counted), (("category", other), ("relation", relation))))
    return out


def value_from(scene, alt_id: str, params: dict):
    return scene.count_from(alt_id, params["relation"], params["category"])


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    cat, relation = spec.params["category"], spec.params["relation"]
    s = r.say(SENTENCES["count_relative"], cats=phrasing.plural(cat), rel=phrasing.RELATION_WORDS[relation], ref=ref)
    sid = r.main_step("count", {"filter": {"category": cat}, "relation": relation, "anchor": arg})
    return s, lambda env: f"{there_are(env[sid])}: {r.counted(spec)}."


FORM = register_form(HopForm(
    name="count_relative", op="count", role="value", kind="perception", level=2, sentences=SENTENCES,
    questions=QUESTIONS, emit=emit, value_options=value_options, value_from=value_from, scope="set",
    question_fields=lambda r, spec: {"cats": phrasing.plural(spec.params["category"]),
                                     "rel": phrasing.RELATION_WORDS[spec.params["relation"]], "ref": r.ref_phrase},
    blind_kind=lambda spec, subject_category: ("count", spec.params["category"], spec.params["relation"]),
    outline="dashed", doc="the objects of a category in a direction's cone from a found instance"))

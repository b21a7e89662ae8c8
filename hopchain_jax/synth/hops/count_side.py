"""count_side (opt-in: ComposerConfig.opt_in_forms=("count_side",)): count the objects of another category
in the same half of the picture as a found instance, left / right (axis x) or top / bottom (axis y)
(Level 2). Program: count_side {filter, anchor, axis}.

The example of adding a hop op through the registry (docs/extending.md): the op in program.py
(Executor.op_count_side, NUMBER_OPS, the spec), this module, and the spec-only executor of the tests."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.clarity import Reject
from hopchain_jax.synth.hops.base import HopForm, register_form, there_are

HALVES = {"x": ("left", "right"), "y": ("top", "bottom")}
SENTENCES = {"count_side": ("Count the {cats} in the same half of the picture ({halves}) as {ref}.",
                            "Count how many {cats} are on the same side of the picture ({halves}) as {ref}.")}
QUESTIONS = ("How many {cats} are in the same half of the picture ({halves}) as {ref}?",
             "What is the number of {cats} on the same side of the picture ({halves}) as {ref}?")


def _halves(axis: str) -> str:
    return "{} or {}".format(*HALVES[axis])


def value_options(scene, inst_id: str) -> list[tuple]:
    inst = scene.by_id[inst_id]
    out = []
    for other in sorted(set(scene.by_cat) - {inst["category"]}):
        for axis in HALVES:
            try:
                counted = scene.clear_side(inst, other, axis)
            except Reject:
                continue
            out.append((len(counted), tuple(c["id"] for c in counted), (("category", other), ("axis", axis))))
    return out


def value_from(scene, alt_id: str, params: dict):
    return scene.ex.op_count_side({}, {"category": params["category"]}, alt_id, params["axis"])


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    cat, axis = spec.params["category"], spec.params["axis"]
    s = r.say(SENTENCES["count_side"], cats=phrasing.plural(cat), halves=_halves(axis), ref=ref)
    sid = r.main_step("count_side", {"filter": {"category": cat}, "anchor": arg, "axis": axis})
    subject = r.subject(spec)
    half = HALVES[axis][int(r.scene.side(subject, axis) > 0)]
    return s, lambda env: f"That {subject['category']} is in the {half} half; {there_are(env[sid]).lower()} there: {r.counted(spec)}."


FORM = register_form(HopForm(
    name="count_side", op="count_side", role="value", kind="perception", level=2, sentences=SENTENCES,
    questions=QUESTIONS, emit=emit, value_options=value_options, value_from=value_from, scope="set",
    question_fields=lambda r, spec: {"cats": phrasing.plural(spec.params["category"]),
                                     "halves": _halves(spec.params["axis"]), "ref": r.ref_phrase},
    blind_kind=lambda spec, subject_category: ("count_side", spec.params["category"], spec.params["axis"]),
    outline="dashed", default=False, doc="the objects of a category in the same half of the picture as a found instance"))

"""compare: of the last two found instances, the larger or the smaller one (Level 2; the composer builds
it when their areas differ clearly and neither is occluded). Program: compare {a, b, key: area, order}."""
from __future__ import annotations

from hopchain_jax.synth.hops.base import HopForm, register_form

SENTENCES = {
    "compare_area": ("Of {ref_a} and {ref_b}, take the {bigger} one.", "Compare {ref_a} with {ref_b} and keep the {bigger} of the two.",
                     "Which is {bigger}, {ref_a} or {ref_b}? Take that one."),
}


def emit(r, spec):
    arg_a, ref_a = r.ref(spec.uses[0])
    arg_b, ref_b = r.ref(spec.uses[1])
    bigger = "larger" if spec.params["order"] == "max" else "smaller"
    s = r.say(SENTENCES["compare_area"], ref_a=ref_a, ref_b=ref_b, bigger=bigger)
    sid = r.main_step("compare", {"a": arg_a, "b": arg_b, "key": "area", "order": spec.params["order"]})
    return s, lambda env: f"The {bigger} one is {r.scene.describe(env[sid])}."


FORM = register_form(HopForm(name="compare", op="compare", role="compare", kind="perception", level=2,
                             sentences=SENTENCES, emit=emit, doc="the larger or smaller of the last two found instances"))

"""between: an instance-chain hop to the one instance of a third category lying between the last two
found instances (Level 2). Program: between {a, b, filter}."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.clarity import Reject
from hopchain_jax.synth.hops.base import HopForm, register_form

SENTENCES = {
    "between": ("Find the {cat} that lies between {ref_a} and {ref_b}.",
                "Look at the {cat} located between {ref_a} and {ref_b}.",
                "There is {a_cat} between {ref_a} and {ref_b}; find it."),
}


def link_options(scene, anchor_id: str, other_id: str | None = None) -> list[tuple]:
    """(target id, params) of every clear `between` step on the segment other -> anchor."""
    if other_id is None:
        return []
    anchor, other = scene.by_id[anchor_id], scene.by_id[other_id]
    if other["category"] == anchor["category"]:
        return []
    out = []
    for cat in sorted(scene.by_cat):
        if cat in (anchor["category"], other["category"]) or len(scene.by_cat[cat]) < 2:
            continue
        try:
            target = scene.clear_between(other, anchor, cat)
        except Reject:
            continue
        if scene.pick_matters(anchor, target, lambda alt: scene.ex.op_between({}, other_id, alt, {"category": cat})):
            out.append((target["id"], (("category", cat),)))
    return out


def emit(r, spec):
    arg_a, ref_a = r.ref(spec.uses[0])
    arg_b, ref_b = r.ref(spec.uses[1])
    cat = spec.params["category"]
    s = r.say(SENTENCES["between"], cat=cat, a_cat=phrasing.with_article(cat), ref_a=ref_a, ref_b=ref_b)
    return s, r.found(r.main_step("between", {"a": arg_a, "b": arg_b, "filter": {"category": spec.params["category"]}}))


FORM = register_form(HopForm(name="between", op="between", role="link", kind="instance_chain", level=2,
                             sentences=SENTENCES, emit=emit, link_options=link_options, arity=2, weight=2.0,
                             doc="to the instance of a third category between the last two found ones"))

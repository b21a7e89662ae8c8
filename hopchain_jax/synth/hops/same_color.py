"""same_color: an instance-chain hop to the one instance of another category that has the last found
instance's colour (Level 1). Program: attribute {instance, name: color}; select {filter with that colour}."""
from __future__ import annotations

from hopchain_jax.synth.hops.base import HopForm, register_form

SENTENCES = {
    "same_color": ("Find the {cat} that has the same colour as {ref}.", "Look at the {cat} whose colour matches {ref}.",
                   "Locate the {cat} painted in the same colour as {ref}."),
}


def link_options(scene, anchor_id: str, other_id: str | None = None) -> list[tuple]:
    """(target id, params) for every category with several instances, one of which has the anchor's
    colour, where a mistaken anchor would lead elsewhere."""
    anchor = scene.by_id[anchor_id]
    out = []
    for cat in sorted(scene.by_cat):
        if cat == anchor["category"] or len(scene.by_cat[cat]) < 2:
            continue
        target = scene.unique({"category": cat, "color": anchor["attributes"]["color"]})
        if target is not None and scene.pick_matters(
                anchor, target, lambda alt: scene.ex.op_select({}, {"category": cat, "color": scene.by_id[alt]["attributes"]["color"]})):
            out.append((target["id"], (("category", cat),)))
    return out


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    s = r.say(SENTENCES["same_color"], cat=spec.params["category"], ref=ref)
    color = r.step("attribute", {"instance": arg, "name": "color"})
    sid = r.main_step("select", {"filter": {"category": spec.params["category"], "color": {"ref": color}}})
    return s, lambda env: f"That colour is {env[color]}. {r.found(sid)(env)}"


FORM = register_form(HopForm(name="same_color", op="select", role="link", kind="instance_chain", level=1,
                             sentences=SENTENCES, emit=emit, link_options=link_options,
                             asks=frozenset({"color"}), gives=frozenset({"color"}),
                             doc="to the instance of another category sharing the last found instance's colour"))

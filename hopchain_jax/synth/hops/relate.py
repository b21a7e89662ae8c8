"""relate: an instance-chain hop from the last found instance to the nearest / farthest / directly left of
... / in front of / behind instance of another category (Level 2).
Program: relate {anchor, relation, filter}."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.clarity import Reject
from hopchain_jax.synth.hops.base import HopForm, register_form
from hopchain_jax.synth.program import DIRECTIONS

SENTENCES = {
    "relate_nearest": ("Find the {cat} closest to {ref}.", "Look at the {cat} nearest to {ref}.",
                       "Move from {ref} to the {cat} closest to it."),
    "relate_farthest": ("Find the {cat} farthest from {ref}.", "Look at the {cat} that is farthest away from {ref}.",
                        "Among the {cats}, take the one farthest from {ref}."),
    "relate_in_front_of": ("Find the {cat} that partly covers {ref}.", "Look at the {cat} lying in front of {ref}, hiding part of it.",
                           "Locate the {cat} that overlaps {ref} from the front."),
    "relate_behind": ("Find the {cat} partly covered by {ref}.", "Look at the {cat} lying behind {ref}, partly hidden by it.",
                      "Locate the {cat} partly hidden behind {ref}."),
    "relate_direction": ("Find the {cat} nearest to {ref} among those {rel} it.",
                         "Among the {cats} {rel} {ref}, take the one closest to it.",
                         "Look {rel} {ref} and find the nearest {cat} there."),
}
LINK_RELATIONS = ("nearest", "farthest", *DIRECTIONS, "in_front_of", "behind")


def link_options(scene, anchor_id: str, other_id: str | None = None) -> list[tuple]:
    """(target id, params) of every clear relate step from `anchor_id` to an instance of another
    category with several instances, where a mistaken anchor would lead elsewhere."""
    anchor = scene.by_id[anchor_id]
    out = []
    for cat in sorted(scene.by_cat):
        if cat == anchor["category"] or len(scene.by_cat[cat]) < 2:
            continue
        for relation in LINK_RELATIONS:
            try:
                target = scene.clear_relate(anchor, relation, cat)
            except Reject:
                continue
            if scene.pick_matters(anchor, target, lambda alt: scene.relate_from(alt, relation, cat)):
                out.append((target["id"], (("category", cat), ("relation", relation))))
    return out


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    cat, rel = spec.params["category"], spec.params["relation"]
    if rel in DIRECTIONS:
        s = r.say(SENTENCES["relate_direction"], cat=cat, cats=phrasing.plural(cat), ref=ref, rel=phrasing.RELATION_WORDS[rel])
    else:
        s = r.say(SENTENCES[f"relate_{rel}"], cat=cat, cats=phrasing.plural(cat), ref=ref)
    return s, r.found(r.main_step("relate", {"anchor": arg, "relation": rel, "filter": {"category": cat}}))


FORM = register_form(HopForm(name="relate", op="relate", role="link", kind="instance_chain", level=2,
                             sentences=SENTENCES, emit=emit, link_options=link_options,
                             doc="from the last found instance to the nearest / farthest / directional / occluding one"))

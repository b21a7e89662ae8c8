"""superlative: hop 0 picks the extreme instance of a category (Level 2): the largest (of exactly two:
"the larger of the two stars"), leftmost, the one with the most dots, the card with the largest number. Program: superlative {filter, key, order}."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.clarity import Reject
from hopchain_jax.synth.hops.base import HopForm, HopSpec, register_form
from hopchain_jax.world.catalog import CATEGORIES

SENTENCES = {
    "superlative_position": ("Find the {sup} {cat}.", "Look at the {sup} {cat} in the image.",
                             "Locate the {sup} {cat}."),
    "superlative_value": ("Find the {cat} with the {most} {parts}.", "Look for the {cat} that has the {most} {parts}.",
                          "Among the {cats}, pick the one with the {most} {parts}."),
    "superlative_pair": ("Find {extreme}.", "Look at {extreme}.", "Of the two {cats}, take the {comp} one."),
    "superlative_number": ("Find the card with the {most} number.", "Among the cards, pick the one showing the {most} number.",
                           "Look for the card whose number is the {most}."),
}


def anchor_options(scene) -> list[HopSpec]:
    """A superlative for every clear (category, key, order) of a category with several instances."""
    options = []
    for cat, members in sorted(scene.by_cat.items()):
        if len(members) < 2:
            continue
        keys = ["area", "center_x", "center_y"]
        if CATEGORIES[cat].part:
            keys.append("part_count")
        if CATEGORIES[cat].text == "number":
            keys.append("number")
        for key in keys:
            for order in ("max", "min"):
                try:
                    best = scene.clear_superlative(cat, key, order)
                except Reject:
                    continue
                known = {"part_count": {"parts"}, "number": {"number"}}.get(key, set())
                options.append(HopSpec("superlative", "perception", 2, best["id"], best["id"],
                                       params={"category": cat, "key": key, "order": order}, known=frozenset(known)))
    return options


def emit(r, spec):
    cat, key, order = spec.params["category"], spec.params["key"], spec.params["order"]
    if key == "part_count":
        s = r.say(SENTENCES["superlative_value"], cat=cat, cats=phrasing.plural(cat), parts=phrasing.parts_word(cat),
                  most="most" if order == "max" else "fewest")
    elif key == "number":
        s = r.say(SENTENCES["superlative_number"], most="largest" if order == "max" else "smallest")
    elif len(r.scene.by_cat[cat]) == 2 and (key, order) in phrasing.COMPARATIVE_WORDS:
        s = r.say(SENTENCES["superlative_pair"], extreme=phrasing.extreme_phrase(key, order, cat, 2),
                  cats=phrasing.plural(cat), comp=phrasing.COMPARATIVE_WORDS[key, order])
    else:
        s = r.say(SENTENCES["superlative_position"], cat=cat, sup=phrasing.SUPERLATIVE_WORDS[key, order])
    return s, r.found(r.main_step("superlative", {"filter": {"category": cat}, "key": key, "order": order}))


FORM = register_form(HopForm(name="superlative", op="superlative", role="anchor", kind="perception", level=2,
                             sentences=SENTENCES, emit=emit, anchor_options=anchor_options,
                             doc="the extreme instance of a category by size, position, part count or number"))

"""select: hop 0 picks one instance out of several of its category by what it shows alone (Level 1).

"Find the card showing the number 7." / "Find the ladybug with exactly 4 dots." / "Find the red mug." /
"Find the large house." Program: select {filter}."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.hops.base import HopForm, HopSpec, register_form
from hopchain_jax.world.catalog import CATEGORIES

SENTENCES = {
    "select_text_word": ('Find the sign that reads "{text}".', 'Locate the sign with the word "{text}" on it.',
                         'Look at the sign showing the word "{text}".'),
    "select_text_number": ("Find the card showing the number {text}.", "Locate the card with {text} written on it.",
                           "Look at the card that shows {text}."),
    "select_part_count": ("Find the {cat} with exactly {n} {parts}.", "Locate the {cat} that has {n} {parts}.",
                          "Look for the {cat} showing {n} {parts}."),
    "select_color": ("Find the {color} {cat}.", "Look at the {color} {cat}.", "Locate the {color} {cat}."),
    "select_size": ("Find the {size} {cat}.", "Look at the {size} {cat}.", "Among the {cats}, pick the {size} one."),
}
# mode -> (attribute key, what the words then give away about the instance)
MODES = (("text", "text", {"text", "number"}), ("part_count", "part_count", {"parts"}),
         ("color", "color", {"color"}), ("size", "size", {"size"}))


def anchor_options(scene) -> list[HopSpec]:
    """A select for every instance one description picks out alone among several of its category (a
    unique text, part count, colour or size class; a size class only where the category's area order
    shows it: ClearScene.size_class_visible)."""
    options = []
    for cat, members in scene.by_cat.items():
        if len(members) < 2:
            continue  # picking the only one of its kind is no perception work
        for inst in members:
            attrs = inst["attributes"]
            for mode, key, known in MODES:
                value = attrs.get(key)
                if value is None or (mode == "size" and not scene.size_class_visible(inst)):
                    continue
                filt = {"category": cat, key: value}
                if scene.unique(filt):
                    options.append(HopSpec("select", "perception", 1, inst["id"], inst["id"],
                                           params={"filter": filt, "mode": mode}, known=frozenset(known)))
    return options


def emit(r, spec):
    f, mode = spec.params["filter"], spec.params["mode"]
    cat = f["category"]
    if mode == "text":
        s = r.say(SENTENCES["select_text_word" if CATEGORIES[cat].text == "word" else "select_text_number"], text=f["text"])
    elif mode == "part_count":
        s = r.say(SENTENCES["select_part_count"], cat=cat, n=f["part_count"], parts=phrasing.parts_word(cat, f["part_count"]))
    elif mode == "size":
        s = r.say(SENTENCES["select_size"], cat=cat, cats=phrasing.plural(cat), size=phrasing.SIZE_WORDS[f["size"]])
    else:
        s = r.say(SENTENCES["select_color"], cat=cat, color=f["color"])
    return s, r.found(r.main_step("select", {"filter": dict(f)}))


FORM = register_form(HopForm(name="select", op="select", role="anchor", kind="perception", level=1,
                             sentences=SENTENCES, emit=emit, anchor_options=anchor_options,
                             doc="pick one of several instances of a category by its text, part count, colour or size"))

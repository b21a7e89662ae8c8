"""Shared wording: the words for objects, places and relations, and the arithmetic questions.

Each hop form's own sentence and question templates live in its module (hops/).

Templates never mention boxes, masks, coordinates, crops or ids (record.FORBIDDEN_WORDS enforces it);
objects are named only by what a viewer sees: category, colour, text, parts, position, relations.
"""
from __future__ import annotations

import numpy as np

from hopchain_jax.world.catalog import CATEGORIES

# Directions are cones around the stated direction (program.py); "directly" tells the reader so, and the
# composer keeps every object of the asked category well inside or well outside the cone.
RELATION_WORDS = {
    "left_of": "directly to the left of",
    "right_of": "directly to the right of",
    "above": "directly above",
    "below": "directly below",
}

SIZE_WORDS = {"small": "small", "medium": "medium-sized", "large": "large"}

# Of exactly two objects, sizes are compared, not ranked: "the larger of the two stars".
COMPARATIVE_WORDS = {("area", "max"): "larger", ("area", "min"): "smaller"}

SUPERLATIVE_WORDS = {
    ("area", "max"): "largest", ("area", "min"): "smallest",
    ("center_x", "min"): "leftmost", ("center_x", "max"): "rightmost",
    ("center_y", "min"): "topmost", ("center_y", "max"): "lowest",
}

# Final questions that combine the earlier number (first) with this hop's number (second).
COMBINE: dict[str, tuple[str, ...]] = {
    "add": ("What is the sum of the two numbers?", "Add the two numbers together. What do you get?",
            "What do the two numbers add up to?"),
    "sub_first_minus_second": ("What is the first number minus the second?",
                               "Subtract the second number from the first. What is the result?"),
    "sub_second_minus_first": ("What is the second number minus the first?",
                               "Subtract the first number from the second. What is the result?"),
    "mul": ("What is the product of the two numbers?", "Multiply the two numbers. What is the result?"),
}


def choose(templates: tuple[str, ...], rng: np.random.Generator) -> str:
    return templates[int(rng.integers(len(templates)))]


def say(templates: tuple[str, ...], rng: np.random.Generator, **fields) -> str:
    """One of `templates` (drawn from rng), formatted with `fields`, first letter capitalised."""
    text = choose(templates, rng).format(**fields)
    return text[0].upper() + text[1:]


def extreme_phrase(key: str, order: str, category: str, members: int) -> str:
    """How an extreme of a category is named: "the largest star", or of exactly two "the larger of the two stars"."""
    if members == 2 and (key, order) in COMPARATIVE_WORDS:
        return f"the {COMPARATIVE_WORDS[key, order]} of the two {plural(category)}"
    return f"the {SUPERLATIVE_WORDS[key, order]} {category}"


def with_article(word: str) -> str:
    """"a card", "an umbrella": the indefinite article by the word's first letter (the catalog has no
    silent h or "u" sounding "you")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def plural(category: str) -> str:
    return CATEGORIES[category].plural


def parts_word(category: str, n: int | None = None) -> str:
    cat = CATEGORIES[category]
    return cat.part_singular if n == 1 else cat.part


def region_words(cx: float, cy: float, width: int, height: int) -> str:
    """Coarse place in the picture ("top left", "middle", "bottom right") for rationales."""
    col = ("left", "center", "right")[min(2, int(3 * cx / width))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / height))]
    if row == "middle" and col == "center":
        return "middle"
    return f"{row} {col}" if col != "center" else f"{row} center"


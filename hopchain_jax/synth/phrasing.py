"""Question and rationale wording: several templates per op, and the words for objects and places.

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

SUPERLATIVE_WORDS = {
    ("area", "max"): "largest", ("area", "min"): "smallest",
    ("center_x", "min"): "leftmost", ("center_x", "max"): "rightmost",
    ("center_y", "min"): "topmost", ("center_y", "max"): "lowest",
}

# Imperative sentences for each hop op; {ref} is how an earlier object is named ("that sign").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "select_text_word": ('Find the sign that reads "{text}".', 'Locate the sign with the word "{text}" on it.',
                         'Look at the sign showing the word "{text}".'),
    "select_text_number": ("Find the card showing the number {text}.", "Locate the card with {text} written on it.",
                           "Look at the card that shows {text}."),
    "select_part_count": ("Find the {cat} with exactly {n} {parts}.", "Locate the {cat} that has {n} {parts}.",
                          "Look for the {cat} showing {n} {parts}."),
    "select_color": ("Find the {color} {cat}.", "Look at the {color} {cat}.", "Locate the {color} {cat}."),
    "select_size": ("Find the {size} {cat}.", "Look at the {size} {cat}.", "Among the {cats}, pick the {size} one."),
    "superlative_position": ("Find the {sup} {cat}.", "Look at the {sup} {cat} in the image.",
                             "Locate the {sup} {cat}."),
    "superlative_value": ("Find the {cat} with the {most} {parts}.", "Look for the {cat} that has the {most} {parts}.",
                          "Among the {cats}, pick the one with the {most} {parts}."),
    "superlative_number": ("Find the card with the {most} number.", "Among the cards, pick the one showing the {most} number.",
                           "Look for the card whose number is the {most}."),
    "relate_nearest": ("Find the {cat} closest to {ref}.", "Look at the {cat} nearest to {ref}.",
                       "Move from {ref} to the {cat} closest to it."),
    "relate_farthest": ("Find the {cat} farthest from {ref}.", "Look at the {cat} that is farthest away from {ref}.",
                        "Among the {cats}, take the one farthest from {ref}."),
    "relate_in_front_of": ("Find the {cat} that partly covers {ref}.", "Look at the {cat} lying in front of {ref}, hiding part of it.",
                           "Locate the {cat} that overlaps {ref} from the front."),
    "relate_behind": ("Find the {cat} partly covered by {ref}.", "Look at the {cat} lying behind {ref}, partly hidden by it.",
                      "Locate the {cat} partly hidden behind {ref}."),
    "compare_area": ("Of {ref_a} and {ref_b}, take the {bigger} one.", "Compare {ref_a} with {ref_b} and keep the {bigger} of the two.",
                     "Which is {bigger}, {ref_a} or {ref_b}? Take that one."),
    "relate_direction": ("Find the {cat} nearest to {ref} among those {rel} it.",
                         "Among the {cats} {rel} {ref}, take the one closest to it.",
                         "Look {rel} {ref} and find the nearest {cat} there."),
    "between": ("Find the {cat} that lies between {ref_a} and {ref_b}.",
                "Look at the {cat} located between {ref_a} and {ref_b}.",
                "There is a {cat} between {ref_a} and {ref_b}; find it."),
    "same_color": ("Find the {cat} that has the same colour as {ref}.", "Look at the {cat} whose colour matches {ref}.",
                   "Locate the {cat} painted in the same colour as {ref}."),
    "count_parts": ("Count the {parts} on {ref}.", "Count how many {parts} {ref} has.", "Note the number of {parts} on {ref}."),
    "read_number": ("Read the number on {ref}.", "Note the number written on {ref}.", "Read off the number shown on {ref}."),
    "count_letters": ("Count the letters of the word on {ref}.", "Read the word on {ref} and count its letters.",
                      "Note how many letters the word on {ref} has."),
    "count_relative": ("Count the {cats} {rel} {ref}.", "Count how many {cats} are {rel} {ref}.",
                       "Note how many {cats} there are {rel} {ref}."),
    "count_same_color": ("Count the {cats} that have the same colour as {ref}.",
                         "Count how many {cats} share the colour of {ref}.",
                         "Note how many {cats} are the same colour as {ref}."),
}

# The same hops asked as the final question when nothing is combined afterwards.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "count_parts": ("How many {parts} does {ref} have?", "What is the number of {parts} on {ref}?"),
    "read_number": ("What number is written on {ref}?", "Which number does {ref} show?"),
    "count_letters": ("How many letters does the word on {ref} have?", "What is the number of letters in the word on {ref}?"),
    "count_relative": ("How many {cats} are {rel} {ref}?", "What is the number of {cats} {rel} {ref}?"),
    "count_same_color": ("How many {cats} have the same colour as {ref}?",
                         "What is the number of {cats} sharing the colour of {ref}?"),
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


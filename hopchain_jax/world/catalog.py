"""What the procedural world can contain: categories, their countable parts, colours, sizes, words.

Everything a scene may show is declared here so the renderer, the chain composer and the
question phrasing agree on one vocabulary.
"""
from __future__ import annotations

import dataclasses

# Colour name -> RGB. Hues are far apart so a viewer names each one without hesitation.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 215, 30),
    "green": (50, 165, 60),
    "blue": (40, 95, 220),
    "purple": (135, 60, 190),
    "pink": (245, 130, 190),
}

# Size class -> edge of the square tile the object is drawn in, in pixels (canvas 800x600).
# Neighbouring classes differ by at least 1.35x in edge (1.8x in area) so "larger" is never close.
SIZES: dict[str, int] = {"small": 74, "medium": 100, "large": 136}
SIZE_ORDER = ("small", "medium", "large")

# Words printed on signs: short, unambiguous, and never one of the words a question may not use.
SIGN_WORDS = (
    "CAFE", "MOON", "STOP", "PARK", "BANK", "SHOP", "ZOO", "TAXI", "HOTEL", "FARM",
    "LAKE", "GATE", "EXIT", "OPEN", "SALE", "BUS", "INN", "GYM", "PIER", "TOYS",
)


@dataclasses.dataclass(frozen=True)
class Category:
    """One kind of object the world can draw.

    name: singular noun used in questions ("ladybug"); plural: its plural.
    part: plural name of the countable part ("dots") or None; part_singular: "dot"; part_range: inclusive (min, max) count.
    text: "number" (a card showing an integer), "word" (a sign showing a word) or None.
    colors: colour names this category may take.
    """

    name: str
    plural: str
    part: str | None = None
    part_singular: str | None = None
    part_range: tuple[int, int] = (0, 0)
    text: str | None = None
    colors: tuple[str, ...] = tuple(COLORS)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("ladybug", "ladybugs", part="dots", part_singular="dot", part_range=(1, 7),
                 colors=("red", "orange", "yellow", "pink", "green")),
        Category("monster", "monsters", part="eyes", part_singular="eye", part_range=(1, 5)),
        Category("flower", "flowers", part="petals", part_singular="petal", part_range=(4, 9)),
        Category("die", "dice", part="pips", part_singular="pip", part_range=(1, 6)),
        Category("house", "houses", part="windows", part_singular="window", part_range=(1, 6)),
        Category("star", "stars", part="points", part_singular="point", part_range=(4, 8)),
        Category("card", "cards", text="number"),
        Category("sign", "signs", text="word"),
        Category("ball", "balls"),
        Category("mug", "mugs"),
    )
}

# Numbers printed on cards (inclusive range); kept small so arithmetic over them stays readable.
CARD_NUMBER_RANGE = (1, 20)

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

# Size class -> nominal edge of the square tile the object is drawn in, in pixels, on a canvas whose
# short side is NOMINAL_SHORT_SIDE; scenes scale it by min(W, H) / NOMINAL_SHORT_SIDE and a small
# per-object jitter. Neighbouring classes differ by at least 1.35x in nominal edge (1.8x in area), so
# after a jitter of at most MAX_SIZE_JITTER they still differ by >= MIN_SIZE_RATIO and "larger" is never close.
SIZES: dict[str, int] = {"small": 74, "medium": 100, "large": 136}
SIZE_ORDER = ("small", "medium", "large")
NOMINAL_SHORT_SIDE = 600
MIN_SIZE_RATIO = 1.25
MAX_SIZE_JITTER = 0.03

# Words printed on signs (letter counting asks for their length): common words, five of each length
# 3..8 so every answer is equally likely, none of them one of the words a question may not use.
SIGN_WORDS = (
    "INN", "ART", "SPA", "TEA", "BUS",
    "EXIT", "PIER", "TAXI", "FISH", "CITY",
    "PIZZA", "FRUIT", "TRAIN", "SUSHI", "PLAZA",
    "TICKET", "POLICE", "TENNIS", "ISLAND", "BAKERY",
    "FLORIST", "LIBRARY", "AIRPORT", "PARKING", "STATION",
    "FESTIVAL", "BUILDING", "HOSPITAL", "CROSSING", "SHOPPING",
)


def sign_min_size(word: str) -> str:
    """Smallest size class a sign showing `word` may take, so its letters stay at least 18 px tall
    at the smallest scale (short side 480 px): a small board holds 4 letters, a medium one 6 and a
    large one 8 (the longest words slightly condensed)."""
    if len(word) <= 4:
        return "small"
    return "medium" if len(word) <= 6 else "large"


# Many small parts need room: a ladybug with 5+ dots or a flower with 7+ petals is never drawn on a
# tile edge below MIN_DENSE_EDGE px (on the smallest canvases such objects skip the small size class).
DENSE_PARTS = {"ladybug": 5, "flower": 7}
MIN_DENSE_EDGE = 66


@dataclasses.dataclass(frozen=True)
class Category:
    """One kind of object the world can draw.

    name: singular noun used in questions ("ladybug"); plural: its plural.
    part: plural name of the countable part ("dots") or None; part_singular: "dot"; part_range: inclusive (min, max) count.
    text: "number" (a card showing an integer), "word" (a sign showing a word) or None.
    colors: colour names this category may take.
    max_angle: largest rotation (degrees, either way) a scene gives it; None = the default of its kind
    (see `max_angle`).
    """

    name: str
    plural: str
    part: str | None = None
    part_singular: str | None = None
    part_range: tuple[int, int] = (0, 0)
    text: str | None = None
    colors: tuple[str, ...] = tuple(COLORS)
    max_angle: float | None = None

    @property
    def plain(self) -> bool:
        """Neither countable parts nor text: such objects may be partly hidden behind another one."""
        return self.part is None and self.text is None


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
        Category("kite", "kites"),
        Category("umbrella", "umbrellas"),
    )
}

# Default rotation limits (degrees, either way): plain objects tilt most; objects with text least so
# it stays easy to read; objects with countable parts in between.
MAX_ANGLE_PLAIN = 25.0
MAX_ANGLE_PARTS = 20.0
MAX_ANGLE_TEXT = 10.0


def max_angle(category: str) -> float:
    """Largest rotation, in degrees either way, a scene may give an object of `category`."""
    cat = CATEGORIES[category]
    if cat.max_angle is not None:
        return cat.max_angle
    if cat.text is not None:
        return MAX_ANGLE_TEXT
    return MAX_ANGLE_PARTS if cat.part is not None else MAX_ANGLE_PLAIN

# Numbers printed on cards (inclusive range); kept small so arithmetic over them stays readable.
CARD_NUMBER_RANGE = (1, 20)


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """What to draw for one object (also importable from hopchain_jax.world.scene).

    category: key of CATEGORIES; color: key of COLORS; size: key of SIZES.
    text: the word or number printed on it (signs, cards) or None.
    part_count: how many countable parts it shows (dots, eyes, ...) or None for categories without.
    """

    category: str
    color: str
    size: str
    text: str | None = None
    part_count: int | None = None

"""Seeded scene layout: which objects a scene holds and where their tiles sit.

A scene is drawn on a fixed canvas split into a grid of cells; each object occupies one cell, its
square tile jittered inside the cell, so objects never overlap and every spatial relation a question
uses can be read off the picture. Everything is a pure function of the seed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hopchain_jax.world.catalog import CARD_NUMBER_RANGE, CATEGORIES, SIGN_WORDS, SIZES


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """What to draw for one object.

    category: key of CATEGORIES; color: key of COLORS; size: key of SIZES.
    text: the word or number printed on it (signs, cards) or None.
    part_count: how many countable parts it shows (dots, eyes, ...) or None for categories without.
    """

    category: str
    color: str
    size: str
    text: str | None = None
    part_count: int | None = None


@dataclasses.dataclass(frozen=True)
class Placement:
    """An object and the top-left pixel of its square tile (edge SIZES[spec.size]) on the canvas."""

    spec: ObjectSpec
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Canvas and population of procedural scenes.

    width/height: canvas in pixels; cols/rows: layout grid; min_objects/max_objects: objects per scene;
    min_categories/max_categories: distinct categories per scene (repeats of a category are what make
    relations necessary to pick one instance out).
    """

    width: int = 800
    height: int = 600
    cols: int = 5
    rows: int = 4
    min_objects: int = 8
    max_objects: int = 13
    min_categories: int = 4
    max_categories: int = 6

    def __post_init__(self):
        cell = min(self.width // self.cols, self.height // self.rows)
        if max(SIZES.values()) > cell:
            raise ValueError(
                f"SceneConfig: grid cell of {cell}px cannot hold the largest tile ({max(SIZES.values())}px); "
                "use fewer cols/rows or a larger canvas")
        if not 1 <= self.min_objects <= self.max_objects <= self.cols * self.rows:
            raise ValueError("SceneConfig: need 1 <= min_objects <= max_objects <= cols*rows")


@dataclasses.dataclass(frozen=True)
class Scene:
    seed: int
    width: int
    height: int
    placements: tuple[Placement, ...]


def _sample_spec(category: str, rng: np.random.Generator) -> ObjectSpec:
    cat = CATEGORIES[category]
    color = str(rng.choice(cat.colors))
    size = str(rng.choice(list(SIZES)))
    text = None
    if cat.text == "number":
        text = str(int(rng.integers(CARD_NUMBER_RANGE[0], CARD_NUMBER_RANGE[1] + 1)))
    elif cat.text == "word":
        text = str(rng.choice(SIGN_WORDS))
        if len(text) > 4 and size == "small":  # long words need room to stay legible
            size = "medium"
    part_count = None
    if cat.part is not None:
        part_count = int(rng.integers(cat.part_range[0], cat.part_range[1] + 1))
    return ObjectSpec(category, color, size, text, part_count)


def sample_scene(seed: int, config: SceneConfig = SceneConfig()) -> Scene:
    """The scene for `seed`: a deterministic function of (seed, config)."""
    rng = np.random.default_rng(seed)
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    n_cats = int(rng.integers(config.min_categories, config.max_categories + 1))
    categories = list(rng.choice(sorted(CATEGORIES), size=n_cats, replace=False))
    # Every chosen category appears at least once; the rest are repeats, so most scenes hold
    # several instances of some category.
    chosen = categories + list(rng.choice(categories, size=max(0, n_objects - n_cats)))
    rng.shuffle(chosen)
    cells = rng.choice(config.cols * config.rows, size=len(chosen), replace=False)
    cell_w, cell_h = config.width // config.cols, config.height // config.rows
    placements = []
    for category, cell in zip(chosen, cells):
        spec = _sample_spec(str(category), rng)
        edge = SIZES[spec.size]
        col, row = divmod(int(cell), config.rows)
        x = col * cell_w + int(rng.integers(0, cell_w - edge + 1))
        y = row * cell_h + int(rng.integers(0, cell_h - edge + 1))
        placements.append(Placement(spec, x, y))
    return Scene(seed, config.width, config.height, tuple(placements))

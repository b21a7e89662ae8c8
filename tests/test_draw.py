"""Tile drawing: sizes, binary alpha, coverage, determinism and countable parts."""
from __future__ import annotations

import numpy as np
import pytest

import collections

from PIL import ImageDraw, ImageFont

from hopchain_jax.world.catalog import (CATEGORIES, COLORS, MAX_SIZE_JITTER, NOMINAL_SHORT_SIDE, SIGN_WORDS,
                                        SIZE_ORDER, SIZES, max_angle, sign_min_size)
from hopchain_jax.world.draw import MIN_CONDENSE, MIN_FONT_SIZE, OUTLINE, draw_tile, object_sprite, part_color
from hopchain_jax.world.scene import DEFAULT_RESOLUTIONS, ObjectSpec


def _spec(category: str, color: str, size: str, part_count: int | None = None,
          text: str | None = None) -> ObjectSpec:
    cat = CATEGORIES[category]
    if cat.part is not None and part_count is None:
        part_count = cat.part_range[0]
    if cat.text == "number" and text is None:
        text = "17"
    if cat.text == "word" and text is None:
        text = "HOTEL"
    return ObjectSpec(category, color, size, text, part_count)


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask: (labels with 0 = background, count)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0] = n
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    stack.append((yy, xx))
    return labels, n


def _rgba(spec: ObjectSpec, seed: int = 0) -> np.ndarray:
    return np.asarray(draw_tile(spec, np.random.default_rng(seed)))


def _color_mask(arr: np.ndarray, rgb) -> np.ndarray:
    return (arr[..., 3] == 255) & np.all(arr[..., :3] == np.asarray(rgb, dtype=np.uint8), axis=-1)


def test_label_helper():
    m = np.array([[1, 1, 0, 1],
                  [0, 1, 0, 1],
                  [1, 0, 0, 0]], dtype=bool)
    assert _label(m)[1] == 3  # diagonal neighbours are separate under 4-connectivity


@pytest.mark.parametrize("category", sorted(CATEGORIES))
@pytest.mark.parametrize("size", list(SIZES))
def test_tile_size_alpha_and_coverage(category, size):
    color = CATEGORIES[category].colors[0]
    tile = draw_tile(_spec(category, color, size), np.random.default_rng(3))
    edge = SIZES[size]
    assert tile.mode == "RGBA" and tile.size == (edge, edge)
    arr = np.asarray(tile)
    alpha = arr[..., 3]
    assert set(np.unique(alpha).tolist()) <= {0, 255}
    assert np.all(arr[alpha == 0, :3] == 0)
    opaque = alpha > 0
    assert 0.2 < opaque.mean() < 0.95
    ys, xs = np.nonzero(opaque)
    extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert 0.78 * edge <= extent <= edge


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_deterministic_for_same_seed(category):
    spec = _spec(category, CATEGORIES[category].colors[-1], "medium")
    a = _rgba(spec, seed=11)
    b = _rgba(spec, seed=11)
    assert np.array_equal(a, b)


def _count_cases():
    cases = []
    for category in ("ladybug", "die", "house", "monster", "flower"):
        cat = CATEGORIES[category]
        lo, hi = cat.part_range
        for i, count in enumerate(range(lo, hi + 1)):
            color = cat.colors[i % len(cat.colors)]
            size = list(SIZES)[i % len(SIZES)]
            cases.append((category, color, size, count))
    # The tightest layouts at the smallest size, and every die colour (pip colour depends on it).
    cases += [("ladybug", "red", "small", 7), ("monster", "blue", "small", 5),
              ("house", "purple", "small", 6), ("flower", "purple", "small", 9)]
    cases += [("die", c, "small", 5) for c in COLORS]
    return cases


@pytest.mark.parametrize("category,color,size,count", _count_cases())
def test_countable_parts_are_separate_blobs(category, color, size, count):
    spec = _spec(category, color, size, part_count=count)
    arr = _rgba(spec, seed=count)
    rgb = part_color(spec)
    assert rgb is not None
    labels, n = _label(_color_mask(arr, rgb))
    assert n == count
    if category == "flower":
        return
    # Dots, pips, pupils and panes: each blob is ringed by one colour (body, face, eyeball, frame),
    # so it touches nothing else, and the blobs are of similar size.
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= 4 and sizes.max() <= 2 * sizes.min() + 4
    grown = np.zeros_like(labels, dtype=bool)
    part = labels > 0
    grown[1:] |= part[:-1]
    grown[:-1] |= part[1:]
    grown[:, 1:] |= part[:, :-1]
    grown[:, :-1] |= part[:, 1:]
    ring = grown & ~part
    ring_colors = {tuple(c) for c in arr[ring][:, :4].tolist()}
    assert len(ring_colors) == 1, ring_colors
    (ring_rgba,) = ring_colors
    assert ring_rgba[3] == 255
    if category in ("ladybug", "die"):
        assert ring_rgba[:3] == COLORS[color]


def test_monster_eyeballs_are_separate():
    for count in range(1, 6):
        spec = _spec("monster", "green", "small", part_count=count)
        arr = _rgba(spec)
        assert _label(_color_mask(arr, (255, 255, 255)))[1] == count


@pytest.mark.parametrize("color", sorted(COLORS))
def test_die_pips_contrast(color):
    rgb = part_color(_spec("die", color, "small"))
    assert rgb == ((0, 0, 0) if color in ("yellow", "orange", "pink", "green") else (255, 255, 255))


def _smallest_edge(size: str) -> int:
    """The smallest tile edge a scene gives this size class (smallest resolution, most negative jitter)."""
    scale = min(min(r) for r in DEFAULT_RESOLUTIONS) / NOMINAL_SHORT_SIDE
    return int(round(SIZES[size] * scale * (1 - MAX_SIZE_JITTER)))


FORBIDDEN = ("BOX", "MASK", "SEGMENT", "CROP", "ID", "INSTANCE", "LABEL", "COORDINATE")


def test_sign_words_spread_over_lengths():
    lengths = collections.Counter(len(w) for w in SIGN_WORDS)
    assert sorted(lengths) == [3, 4, 5, 6, 7, 8] and len(set(lengths.values())) == 1
    assert len(set(SIGN_WORDS)) == len(SIGN_WORDS) >= 24
    for w in SIGN_WORDS:
        assert w.isalpha() and w.isupper() and not any(f in w for f in FORBIDDEN)
    # the longer the word, the bigger the board it needs; short words may be small
    assert [sign_min_size(w) for w in ("INN", "TAXI", "PIZZA", "TICKET", "LIBRARY", "SHOPPING")] == \
        ["small", "small", "medium", "medium", "large", "large"]


@pytest.mark.parametrize("word", SIGN_WORDS)
def test_sign_words_fit_their_smallest_board(word):
    # Every word at the smallest tile its sign can get: the whole word is on the board, at >= 18 px,
    # squeezed by no more than MIN_CONDENSE.
    size = sign_min_size(word)
    e = _smallest_edge(size)
    d = ImageDraw.Draw(draw_tile(_spec("sign", "yellow", size, text=word), np.random.default_rng(0)))
    l, t, r, b = d.textbbox((0, 0), word, font=ImageFont.load_default(size=MIN_FONT_SIZE), stroke_width=1)
    for color, ink in (("yellow", (0, 0, 0)), ("blue", (255, 255, 255))):
        arr = np.asarray(draw_tile(_spec("sign", color, size, text=word), np.random.default_rng(0), edge=e))
        ys, xs = np.nonzero(_color_mask(arr, ink))
        board = np.nonzero(_color_mask(arr, COLORS[color]))[1]  # the board's face spans these columns
        assert board.min() + 2 <= xs.min() and xs.max() <= board.max() - 2  # clear of the rim
        assert ys.max() - ys.min() + 1 >= 12  # cap height of an 18 px font or more
        assert xs.max() - xs.min() + 1 >= MIN_CONDENSE * (r - l) - 2


@pytest.mark.parametrize("size,word", [(size, word) for word in ("SHOPPING", "TICKET", "INN") for size in SIZES
                                       if SIZE_ORDER.index(size) >= SIZE_ORDER.index(sign_min_size(word))])
def test_sign_text_is_inside_board(size, word):
    # The text colour appears on the board only; the tile edges stay clear of ink (at every size
    # class a scene may draw the word at).
    for color in ("yellow", "blue"):
        arr = _rgba(_spec("sign", color, size, text=word))
        ink = (255, 255, 255) if color == "blue" else (0, 0, 0)
        mask = _color_mask(arr, ink)
        assert mask.sum() > 30
        ys, xs = np.nonzero(mask)
        edge = SIZES[size]
        assert xs.min() > 0 and ys.min() > 0 and xs.max() < edge - 1 and ys.max() < edge - 1
        assert ys.max() - ys.min() + 1 >= 12  # cap height of an 18 px font or more


def _rotated_cases():
    cases = []
    for category in ("ladybug", "die", "house", "monster", "flower"):
        cat = CATEGORIES[category]
        lo, hi = cat.part_range
        a = max_angle(category)
        for i, count in enumerate(range(lo, hi + 1)):
            color = cat.colors[i % len(cat.colors)]
            for edge in (57, 60, 78, 224):
                cases.append((category, color, count, edge, (-a, -0.55 * a, 0.3 * a, 0.8 * a, a)))
    return cases


@pytest.mark.parametrize("category,color,count,edge,angles", _rotated_cases())
def test_rotated_sprites_keep_parts_countable(category, color, count, edge, angles):
    # Scenes rotate objects (nearest-neighbour) up to max_angle and outline them: parts stay
    # separate one-colour blobs with one surrounding colour, from the smallest tile to the largest.
    spec = _spec(category, color, "small", part_count=count)
    rgb = part_color(spec)
    for angle in angles:
        sprite = object_sprite(spec, edge, round(float(angle), 1), count, (3, 2))
        arr = np.asarray(sprite.image)
        assert np.array_equal(arr[..., 3] == 255, np.pad(sprite.mask, _pads(sprite, arr)))
        labels, n = _label(_color_mask(arr, rgb))
        assert n == count, (angle, n)
        if category == "flower":
            continue
        part = labels > 0
        grown = np.zeros_like(part)
        grown[1:] |= part[:-1]
        grown[:-1] |= part[1:]
        grown[:, 1:] |= part[:, :-1]
        grown[:, :-1] |= part[:, 1:]
        assert len({tuple(c) for c in arr[grown & ~part].tolist()}) == 1, angle


def _pads(sprite, arr):
    (ox, oy), (w, h) = sprite.origin, sprite.size
    return ((oy, arr.shape[0] - oy - h), (ox, arr.shape[1] - ox - w))


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_sprite_is_outlined_and_shadowed(category):
    spec = _spec(category, CATEGORIES[category].colors[0], "medium")
    sprite = object_sprite(spec, 100, 9.0, 1, (3, 2))
    arr = np.asarray(sprite.image)
    solid = arr[..., 3] == 255
    assert np.array_equal(solid, np.pad(sprite.mask, _pads(sprite, arr)))
    # the mask's rim is the dark outline; outside it only translucent shadow
    m = sprite.mask
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    (ox, oy), (w, h) = sprite.origin, sprite.size
    rim = arr[oy:oy + h, ox:ox + w][m & ~inner]
    assert np.all(rim[:, :3] == OUTLINE)
    shade = arr[~solid, 3]
    assert shade.max() > 0 and shade.max() < 128


def test_card_digits_are_large():
    for size in SIZES:
        arr = _rgba(_spec("card", "red", size, text="20"))
        ys, xs = np.nonzero(_color_mask(arr, (0, 0, 0)))
        edge = SIZES[size]
        assert xs.max() - xs.min() + 1 >= 0.4 * edge
        assert ys.max() - ys.min() + 1 >= 0.25 * edge


def test_rejects_bad_specs():
    with pytest.raises(ValueError):
        draw_tile(ObjectSpec("dragon", "red", "small"), np.random.default_rng(0))
    with pytest.raises(ValueError):
        draw_tile(ObjectSpec("die", "red", "small", None, 7), np.random.default_rng(0))
    with pytest.raises(ValueError):
        draw_tile(ObjectSpec("card", "red", "small"), np.random.default_rng(0))

"""Seeded scene layout: which objects a scene holds, how big, how tilted, where, and in what depth order.

`sample_scene(seed, config)` is a pure function of (seed, config). A scene picks a canvas size from
`config.resolutions`, a backdrop style, 4-7 categories with uneven repeats (Dirichlet weights, so some
category has several instances to count), and for every object its attributes, tile edge (size class
scaled by min(W, H) / 600 with a small jitter), rotation and cosmetic variant.

Objects are placed freely (rejection sampling, no grid), fully inside the canvas. Apart from intended
occlusions, the boxes of any two objects' masks keep a gap of `config.gap` (scaled) pixels, so every
spatial relation a question uses can be read off the picture. Intended occlusions: a "plain" object
(no countable parts, no text: ball, mug, kite, umbrella) may, with probability `p_overlap`, be partly
covered by exactly one object drawn after it, which hides between `overlap_range` of its own full mask.
Objects with parts or text are never covered (they may cover a plain object). `placements` are in
depth order: later placements are drawn in front of earlier ones.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from hopchain_jax.world import backdrop
from hopchain_jax.world.catalog import (CARD_NUMBER_RANGE, CATEGORIES, COLORS, DENSE_PARTS, MAX_SIZE_JITTER,
                                        MIN_DENSE_EDGE, MIN_SIZE_RATIO, NOMINAL_SHORT_SIDE, SIGN_WORDS,
                                        SIZE_ORDER, SIZES, ObjectSpec, max_angle, sign_min_size)
from hopchain_jax.world.draw import object_sprite, shadow_geometry

__all__ = ["ObjectSpec", "Placement", "Scene", "SceneConfig", "sample_scene"]

# An object in front of another keeps most of itself off the one behind, so it reads as lying on top
# of it rather than as a decoration printed on it.
MAX_FRONT_INSIDE = 0.6

DEFAULT_RESOLUTIONS = ((640, 480), (800, 600), (1024, 768), (768, 1024), (1280, 720), (960, 960))


@dataclasses.dataclass(frozen=True)
class Placement:
    """An object and where its sprite sits on the canvas.

    x, y: top-left pixel of the sprite, i.e. of the box of its full mask (rotated, outlined tile).
    edge: tile edge in pixels before rotation (None: the nominal SIZES[spec.size]).
    angle: rotation in degrees, counter-clockwise. variant: seed of the drawer's cosmetic choices.
    The sprite is `draw.object_sprite(spec, tile_edge, angle, variant, draw.shadow_geometry(scene.scale))`.
    """

    spec: ObjectSpec
    x: int
    y: int
    edge: int | None = None
    angle: float = 0.0
    variant: int = 0

    @property
    def tile_edge(self) -> int:
        return SIZES[self.spec.size] if self.edge is None else self.edge


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Canvas and population of procedural scenes.

    resolutions: (width, height) canvases; each scene picks one. backgrounds: backdrop styles to pick from.
    min_objects/max_objects: objects wanted per scene (fewer if they do not all fit).
    min_categories/max_categories: distinct categories per scene; max_instances: most objects of one
    category; concentration: Dirichlet parameter of the category weights (smaller = more uneven repeats).
    size_jitter: per-object relative jitter of the tile edge (<= MAX_SIZE_JITTER keeps size classes apart).
    angle_scale: multiplies every category's rotation limit (0 = upright objects).
    p_overlap: chance that a plain object is partly covered by a later one; overlap_range: the fraction
    of its full mask the cover hides. gap: pixels (at short side 600) between the boxes of objects that
    do not overlap. clutter: (min, max) unlabelled background items. palette_size: (min, max) colours a
    scene draws its objects in (objects sharing colours make same-colour sets worth counting).
    """

    resolutions: tuple[tuple[int, int], ...] = DEFAULT_RESOLUTIONS
    backgrounds: tuple[str, ...] = backdrop.STYLES
    min_objects: int = 12
    max_objects: int = 22
    min_categories: int = 4
    max_categories: int = 7
    max_instances: int = 8
    concentration: float = 1.5
    size_jitter: float = MAX_SIZE_JITTER
    angle_scale: float = 1.0
    p_overlap: float = 0.35
    overlap_range: tuple[float, float] = (0.10, 0.40)
    gap: float = 8.0
    clutter: tuple[int, int] = (3, 8)
    palette_size: tuple[int, int] = (3, 5)

    def __post_init__(self):
        # Accept lists (a config read back from JSON) and store tuples, so the config stays hashable.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("resolutions", tuple((int(w), int(h)) for w, h in self.resolutions))
        set_("backgrounds", tuple(str(b) for b in self.backgrounds))
        set_("overlap_range", tuple(float(v) for v in self.overlap_range))
        set_("clutter", tuple(int(v) for v in self.clutter))
        set_("palette_size", tuple(int(v) for v in self.palette_size))
        if not 1 <= self.palette_size[0] <= self.palette_size[1]:
            raise ValueError("SceneConfig: palette_size must be (min, max) with 1 <= min <= max")
        if not self.resolutions or min(min(r) for r in self.resolutions) < 2 * max(SIZES.values()):
            raise ValueError("SceneConfig: need at least one resolution, each side >= 2x the largest tile")
        if not self.backgrounds or not set(self.backgrounds) <= set(backdrop.STYLES):
            raise ValueError(f"SceneConfig: backgrounds must be among {backdrop.STYLES}")
        if not 1 <= self.min_objects <= self.max_objects <= 254:
            raise ValueError("SceneConfig: need 1 <= min_objects <= max_objects <= 254")
        if not 1 <= self.min_categories <= self.max_categories <= len(CATEGORIES):
            raise ValueError(f"SceneConfig: need 1 <= min_categories <= max_categories <= {len(CATEGORIES)}")
        if self.max_instances < 1 or self.concentration <= 0:
            raise ValueError("SceneConfig: max_instances must be >= 1 and concentration > 0")
        nominal = [SIZES[s] for s in SIZE_ORDER]
        worst = min(b / a for a, b in zip(nominal, nominal[1:])) * (1 - self.size_jitter) / (1 + self.size_jitter)
        if not 0 <= self.size_jitter or worst < MIN_SIZE_RATIO + 0.01:
            raise ValueError(f"SceneConfig: size_jitter {self.size_jitter} lets neighbouring size classes come "
                             f"closer than {MIN_SIZE_RATIO}x")
        lo, hi = self.overlap_range
        if not (0 <= self.p_overlap <= 1 and 0 < lo < hi < 1):
            raise ValueError("SceneConfig: need 0 <= p_overlap <= 1 and 0 < overlap_range[0] < overlap_range[1] < 1")
        if self.gap < 0 or self.angle_scale < 0 or not 0 <= self.clutter[0] <= self.clutter[1]:
            raise ValueError("SceneConfig: gap, angle_scale and clutter must be non-negative")


@dataclasses.dataclass(frozen=True)
class Scene:
    """seed, canvas size, placements in depth order (later = in front) and the backdrop style."""

    seed: int
    width: int
    height: int
    placements: tuple[Placement, ...]
    background: str = "paper"
    clutter: tuple[int, int] = (3, 8)

    @property
    def scale(self) -> float:
        """Pixels per nominal pixel: object sizes, gaps and shadows scale with the short side."""
        return min(self.width, self.height) / NOMINAL_SHORT_SIDE


def _sample_spec(category: str, rng: np.random.Generator, min_edge: dict[str, float],
                 palette: tuple[str, ...]) -> ObjectSpec:
    """min_edge: the smallest tile edge each size class can get in this scene; palette: the scene's
    colours (a category that takes none of them keeps its own)."""
    cat = CATEGORIES[category]
    color = str(rng.choice([c for c in cat.colors if c in palette] or cat.colors))
    size = str(rng.choice(SIZE_ORDER))
    text = None
    if cat.text == "number":
        text = str(int(rng.integers(CARD_NUMBER_RANGE[0], CARD_NUMBER_RANGE[1] + 1)))
    elif cat.text == "word":
        text = str(rng.choice(SIGN_WORDS))
        # Long words need a bigger board to stay legible.
        size = SIZE_ORDER[max(SIZE_ORDER.index(size), SIZE_ORDER.index(sign_min_size(text)))]
    part_count = None
    if cat.part is not None:
        part_count = int(rng.integers(cat.part_range[0], cat.part_range[1] + 1))
        if part_count >= DENSE_PARTS.get(category, 1 << 30):
            while min_edge[size] < MIN_DENSE_EDGE and size != SIZE_ORDER[-1]:
                size = SIZE_ORDER[SIZE_ORDER.index(size) + 1]
    return ObjectSpec(category, color, size, text, part_count)


def _instance_counts(n_objects: int, n_cats: int, config: SceneConfig, rng: np.random.Generator) -> list[int]:
    """Objects per category: each at least 1 and at most max_instances, the rest spread by Dirichlet weights."""
    n_objects = min(n_objects, n_cats * config.max_instances)
    weights = rng.dirichlet([config.concentration] * n_cats)
    counts = 1 + rng.multinomial(n_objects - n_cats, weights)
    overflow = int(np.maximum(counts - config.max_instances, 0).sum())
    counts = np.minimum(counts, config.max_instances)
    for k in np.argsort(-weights, kind="stable"):  # hand the overflow to the next heaviest categories
        take = min(overflow, config.max_instances - int(counts[k]))
        counts[k] += take
        overflow -= take
    return [int(c) for c in counts]


class _Layout:
    """Boxes placed so far on a W x H canvas, and the searches for room for the next one."""

    CELL = 4  # occupancy-grid cell of the exhaustive search

    def __init__(self, width: int, height: int, gap: int, rng: np.random.Generator):
        self.w, self.h, self.gap, self.rng = width, height, gap, rng
        self.boxes = np.zeros((0, 4), np.int64)  # x0, y0, x1, y1 (ends exclusive)

    def add(self, x: int, y: int, w: int, h: int) -> None:
        self.boxes = np.concatenate([self.boxes, np.asarray([[x, y, x + w, y + h]])])

    def clear(self, xs: np.ndarray, ys: np.ndarray, w: int, h: int, skip: int | None = None) -> np.ndarray:
        """Which top-left candidates keep the gap to every placed box (but box `skip`)."""
        b, g = self.boxes, self.gap
        if skip is not None:
            b = np.delete(b, skip, axis=0)
        if len(b) == 0:
            return np.ones(len(xs), bool)
        sep = ((xs[:, None] + w + g <= b[None, :, 0]) | (b[None, :, 2] + g <= xs[:, None])
               | (ys[:, None] + h + g <= b[None, :, 1]) | (b[None, :, 3] + g <= ys[:, None]))
        return sep.all(axis=1)

    def free_spot(self, w: int, h: int) -> tuple[int, int] | None:
        """A random top-left where a w x h box fits inside the canvas and keeps the gap, or None."""
        if w > self.w or h > self.h:
            return None
        for _ in range(3):  # cheap: random candidates
            xs = self.rng.integers(0, self.w - w + 1, size=64)
            ys = self.rng.integers(0, self.h - h + 1, size=64)
            ok = np.flatnonzero(self.clear(xs, ys, w, h))
            if len(ok):
                return int(xs[ok[0]]), int(ys[ok[0]])
        # Exhaustive on a coarse grid: cells touched by a placed box (grown by the gap) are taken.
        c, g = self.CELL, self.gap
        gh, gw = self.h // c, self.w // c
        taken = np.zeros((gh + 1, gw + 1), np.int32)
        for x0, y0, x1, y1 in self.boxes:
            taken[max(0, (y0 - g) // c):max(0, -(-(y1 + g) // c)), max(0, (x0 - g) // c):max(0, -(-(x1 + g) // c))] = 1
        integral = np.zeros((gh + 2, gw + 2), np.int64)
        integral[1:, 1:] = taken.cumsum(0).cumsum(1)
        bh, bw = -(-h // c), -(-w // c)
        ny, nx = (self.h - h) // c + 1, (self.w - w) // c + 1
        if ny <= 0 or nx <= 0:
            return None
        sums = (integral[bh:bh + ny, bw:bw + nx] - integral[:ny, bw:bw + nx]
                - integral[bh:bh + ny, :nx] + integral[:ny, :nx])
        free = np.flatnonzero(sums.ravel() == 0)
        if len(free) == 0:
            return None
        i, j = divmod(int(free[int(self.rng.integers(0, len(free)))]), nx)
        return j * c, i * c


def _overlap(a: np.ndarray, ax: int, ay: int, b: np.ndarray, bx: int, by: int) -> int:
    """Pixels where mask `a` at (ax, ay) and mask `b` at (bx, by) are both set."""
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + a.shape[1], bx + b.shape[1]), min(ay + a.shape[0], by + b.shape[0])
    if x0 >= x1 or y0 >= y1:
        return 0
    return int(np.count_nonzero(a[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & b[y0 - by:y1 - by, x0 - bx:x1 - bx]))


def _overlapping_spot(layout: _Layout, anchor: int, anchor_xy: tuple[int, int], anchor_mask: np.ndarray,
                      mask: np.ndarray, anchor_behind: bool, overlap_range: tuple[float, float],
                      rng: np.random.Generator) -> tuple[int, int] | None:
    """A top-left for `mask` overlapping the placed `anchor` so the object behind loses a fraction of its
    full mask inside `overlap_range`, inside the canvas and clear of every other placed box; or None."""
    lo, hi = overlap_range
    back_area = int((anchor_mask if anchor_behind else mask).sum())
    front_area = int((mask if anchor_behind else anchor_mask).sum())
    ah, aw = anchor_mask.shape
    h, w = mask.shape
    acx, acy = anchor_xy[0] + aw / 2, anchor_xy[1] + ah / 2
    reach = (math.hypot(aw, ah) + math.hypot(w, h)) / 2
    for _ in range(10):
        phi = float(rng.uniform(0, 2 * math.pi))
        target = float(rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo)))
        t_lo, t_hi = 0.0, reach  # hidden fraction falls (roughly monotonically) as t grows
        for _ in range(9):
            t = (t_lo + t_hi) / 2
            x, y = round(acx + t * math.cos(phi) - w / 2), round(acy + t * math.sin(phi) - h / 2)
            inter = _overlap(anchor_mask, *anchor_xy, mask, x, y)
            f = inter / back_area
            if lo <= f <= hi and abs(f - target) < 0.04:
                break
            if f > target:
                t_lo = t
            else:
                t_hi = t
        if not lo <= f <= hi or inter > MAX_FRONT_INSIDE * front_area:
            continue
        if not (0 <= x <= layout.w - w and 0 <= y <= layout.h - h):
            continue
        if layout.clear(np.asarray([x]), np.asarray([y]), w, h, skip=anchor)[0]:
            return x, y
    return None


def sample_scene(seed: int, config: SceneConfig = SceneConfig()) -> Scene:
    """The scene for `seed`: a deterministic function of (seed, config)."""
    rng = np.random.default_rng(seed)
    width, height = config.resolutions[int(rng.integers(0, len(config.resolutions)))]
    background = str(config.backgrounds[int(rng.integers(0, len(config.backgrounds)))])
    scale = min(width, height) / NOMINAL_SHORT_SIDE

    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    n_cats = min(n_objects, int(rng.integers(config.min_categories, config.max_categories + 1)))
    categories = [str(c) for c in rng.choice(sorted(CATEGORIES), size=n_cats, replace=False)]
    counts = _instance_counts(n_objects, n_cats, config, rng)
    chosen = [c for c, k in zip(categories, counts) for _ in range(k)]
    rng.shuffle(chosen)

    min_edge = {k: v * scale * (1 - config.size_jitter) for k, v in SIZES.items()}
    n_colors = int(rng.integers(config.palette_size[0], config.palette_size[1] + 1))
    palette = tuple(str(c) for c in rng.choice(sorted(COLORS), size=min(n_colors, len(COLORS)), replace=False))
    specs = [_sample_spec(c, rng, min_edge, palette) for c in chosen]
    n = len(specs)
    jitter = rng.uniform(-config.size_jitter, config.size_jitter, size=n)
    edges = [int(round(SIZES[s.size] * scale * (1 + j))) for s, j in zip(specs, jitter)]
    turns = rng.uniform(-1, 1, size=n)
    angles = [round(float(t) * max_angle(s.category) * config.angle_scale, 1) for s, t in zip(specs, turns)]
    variants = [int(v) for v in rng.integers(0, 2**31, size=n)]
    shadow = shadow_geometry(scale)
    sprites = [object_sprite(s, e, a, v, shadow) for s, e, a, v in zip(specs, edges, angles, variants)]

    # Intended occlusions: some plain objects get one partner that will be drawn in front of them.
    partner: dict[int, int] = {}  # both directions
    behind: set[int] = set()
    for i in map(int, rng.permutation(n)):
        if i in partner or not CATEGORIES[specs[i].category].plain or rng.random() >= config.p_overlap:
            continue
        # (a partner of another colour: two same-coloured objects overlapping would read as one blob)
        free = [j for j in range(n) if j != i and j not in partner and specs[j].color != specs[i].color]
        if not free:
            continue
        j = free[int(rng.integers(0, len(free)))]
        partner[i], partner[j] = j, i
        behind.add(i)

    # Depth order: random, except that an object behind its partner is drawn first.
    depth = rng.permutation(n).astype(np.float64)
    for i in behind:
        j = partner[i]
        if depth[i] > depth[j]:
            depth[i], depth[j] = depth[j], depth[i]

    # Place big sprites first (they are hardest to fit); a pair's second member goes next to the first.
    layout = _Layout(width, height, max(int(round(config.gap * scale)), sum(shadow) + 1), rng)
    spot: dict[int, tuple[int, int]] = {}
    slot: dict[int, int] = {}  # object -> row of layout.boxes
    order = sorted(range(n), key=lambda i: -sprites[i].mask.size)
    queue = []
    for i in order:  # each pair's second member right after its first
        if i not in queue:
            queue.append(i)
            if i in partner and partner[i] not in queue:
                queue.append(partner[i])
    for i in queue:
        w, h = sprites[i].size
        xy = None
        j = partner.get(i)
        if j is not None and j in spot:
            xy = _overlapping_spot(layout, slot[j], spot[j], sprites[j].mask, sprites[i].mask,
                                   anchor_behind=j in behind, overlap_range=config.overlap_range, rng=rng)
        if xy is None:
            xy = layout.free_spot(w, h)
        if xy is None:
            continue  # does not fit: the scene holds fewer objects
        spot[i], slot[i] = xy, len(layout.boxes)
        layout.add(*xy, w, h)

    placements = tuple(
        Placement(specs[i], spot[i][0], spot[i][1], edges[i], angles[i], variants[i])
        for i in sorted(spot, key=lambda i: depth[i]))
    return Scene(seed, width, height, placements, background, config.clutter)

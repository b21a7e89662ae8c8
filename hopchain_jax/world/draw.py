"""Cartoon drawings of single objects: square RGBA tiles, and the rotated, outlined sprites scenes paste.

`draw_tile(spec, rng, edge=None)` returns a `PIL.Image` of mode RGBA and size (edge, edge), with
edge = SIZES[spec.size] unless given. `object_sprite(spec, edge, angle, variant)` turns such a tile
into what a scene pastes: rotated by `angle` degrees (nearest-neighbour, so alpha stays binary and
part colours stay exact), ringed by a thin dark outline, cropped to its mask. Conventions:

* Tile coordinates: (0, 0) is the top-left pixel, x grows right, y grows down. Every drawer
  lays its shapes out in fractions of the edge, so one drawing scales to every size; the
  object spans roughly 80-95% of the edge in its larger dimension.
* Alpha is binary: 0 (background, RGB also 0) or 255 (object). Shapes are drawn without
  anti-aliasing; the only anti-aliased ink is text, which sits on an opaque panel, so
  `alpha > 0` is an exact object mask and the tile can be pasted with itself as mask.
* Countable parts (ladybug dots, die pips, monster pupils, house window panes, flower petals)
  are drawn as separate 4-connected blobs in one exact RGB colour that appears nowhere else in
  the tile: `part_color(spec)` returns it. Parts never touch each other, and dots/pips/pupils/
  panes are enclosed by a single surrounding colour (body, die face, eyeball, window frame).
  All of this still holds for sprites at every angle up to `catalog.max_angle(category)`: the
  outline colour (OUTLINE) is none of the part colours and only rings the outside of the mask.
* Text (card numbers, sign words) uses Pillow's bundled scalable font (`ImageFont.load_default`),
  sized to fill its panel, never below 18 px, always inside the tile.
* `rng` only picks small cosmetic variations (a star's tilt, a flower's petal phase, a monster's
  mouth, the side of a mug's handle or a house's chimney, a kite's tail). The number of draws
  depends on the category, so give each object its own generator if other draws must not shift
  (sprites use `np.random.default_rng(variant)`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hopchain_jax.world.catalog import CATEGORIES, COLORS, SIZES, ObjectSpec

RGB = tuple[int, int, int]

# Fixed colours; every counted-part colour below is used for nothing else in its tile.
BLACK: RGB = (0, 0, 0)            # ladybug dots, monster pupils, pips on light dice, card digits
WHITE: RGB = (255, 255, 255)      # monster eyeballs, pips on dark dice, ball shine
INK: RGB = (30, 30, 30)           # ladybug head, centre line, legs, antennae
GLASS: RGB = (170, 215, 245)      # house window panes
FRAME: RGB = (55, 50, 60)         # house window frames
ROOF: RGB = (85, 55, 50)
CHIMNEY: RGB = (150, 75, 60)
DOOR: RGB = (115, 70, 40)
KNOB: RGB = (235, 195, 60)
MOUTH: RGB = (120, 25, 45)
TOOTH: RGB = (245, 245, 232)      # deliberately not WHITE so eyeballs stay countable
TONGUE: RGB = (235, 105, 120)
CENTER_YELLOW: RGB = (250, 200, 40)
CENTER_BROWN: RGB = (120, 75, 35)
STEM: RGB = (40, 125, 45)
LEAF: RGB = (60, 145, 55)
POST: RGB = (125, 85, 45)
POST_DARK: RGB = (80, 55, 30)
PANEL: RGB = (252, 252, 248)
COFFEE: RGB = (95, 60, 35)
SPAR: RGB = (70, 50, 40)          # kite spars and tail string
SHAFT: RGB = (60, 60, 66)         # umbrella shaft and handle
OUTLINE: RGB = (26, 24, 30)       # the ring around every sprite; no part colour equals it

# Dice of these colours get black pips; the others (red, blue, purple) get white ones.
LIGHT_COLORS = frozenset({"yellow", "orange", "pink", "green"})

MIN_FONT_SIZE = 18


def _darken(rgb: RGB, f: float) -> RGB:
    return tuple(int(round(c * f)) for c in rgb)  # type: ignore[return-value]


def _lighten(rgb: RGB, f: float) -> RGB:
    return tuple(int(round(c + (255 - c) * f)) for c in rgb)  # type: ignore[return-value]


def _rgba(rgb: RGB) -> tuple[int, int, int, int]:
    return (*rgb, 255)


def _line_w(e: int, frac: float = 1 / 36, lo: int = 2) -> int:
    return max(lo, int(round(e * frac)))


def _circle(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB,
            outline: RGB | None = None, width: int = 1) -> None:
    d.ellipse([round(cx - r), round(cy - r), round(cx + r), round(cy + r)], fill=_rgba(fill),
              outline=_rgba(outline) if outline else None, width=width)


def _ellipse(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: RGB,
             outline: RGB | None = None, width: int = 1) -> None:
    d.ellipse([round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry)], fill=_rgba(fill),
              outline=_rgba(outline) if outline else None, width=width)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return _font_cached(int(size))


@functools.lru_cache(maxsize=256)
def _font_cached(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def _draw_text_in_box(d: ImageDraw.ImageDraw, text: str, box: tuple[float, float, float, float],
                      fill: RGB, e: int, width_frac: float, height_frac: float) -> None:
    """Draw `text` centred in `box` with the largest font whose ink fits the box fractions.

    The font never drops below MIN_FONT_SIZE; if even that is too wide, the ink is condensed
    horizontally (down to MIN_CONDENSE of its width, letters keep their height). The ink is clamped
    inside the tile (0..e).
    """
    x0, y0, x1, y1 = box
    max_w, max_h = (x1 - x0) * width_frac, (y1 - y0) * height_frac
    best, stroke, (l, t, r, b) = _fit_text(text, int(max_w), int(max_h), e)
    font = _font(best)
    w, h = r - l, b - t
    if w > max_w:  # condense: draw the ink into a mask, squeeze it horizontally, stamp it
        cw = max(int(max_w), math.ceil(w * MIN_CONDENSE))
        ink = _condensed_ink(text, best, stroke, cw)
        x = min(max(round((x0 + x1 - cw) / 2), 0), e - cw)
        y = min(max(round((y0 + y1 - h) / 2), 0), e - h)
        d.bitmap((x, y), ink, fill=_rgba(fill))
        return
    x = (x0 + x1 - w) / 2 - l
    y = (y0 + y1 - h) / 2 - t
    x = min(max(x, -l), e - r)  # keep every inked pixel inside the tile
    y = min(max(y, -t), e - b)
    d.text((round(x), round(y)), text, font=font, fill=_rgba(fill), stroke_width=stroke,
           stroke_fill=_rgba(fill))


MIN_CONDENSE = 0.85


@functools.lru_cache(maxsize=512)
def _condensed_ink(text: str, size: int, stroke: int, width: int) -> Image.Image:
    """The ink of `text` (font `size`, `stroke`) as an L mask squeezed to `width` px wide."""
    font = _font(size)
    l, t, r, b = _MEASURE.textbbox((0, 0), text, font=font, stroke_width=stroke)
    mask = Image.new("L", (r - l, b - t), 0)
    ImageDraw.Draw(mask).text((-l, -t), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    return mask.resize((width, b - t), Image.Resampling.BILINEAR, reducing_gap=None)


@functools.lru_cache(maxsize=4096)
def _fit_text(text: str, max_w: int, max_h: int, e: int) -> tuple[int, int, tuple[int, int, int, int]]:
    """(font size, stroke width, ink bbox at origin) of the largest font >= MIN_FONT_SIZE whose ink
    fits max_w x max_h; the stroke drops to 0 only if even that ink would not fit the tile."""
    stroke = 1

    def bbox(size: int, stroke: int) -> tuple[int, int, int, int]:
        return _MEASURE.textbbox((0, 0), text, font=_font(size), stroke_width=stroke)

    def fits(size: int) -> bool:
        l, t, r, b = bbox(size, stroke)
        return r - l <= max_w and b - t <= max_h

    # Ink grows about linearly with the font size: start from the size-100 estimate and step.
    l, t, r, b = bbox(100, stroke)
    lo = int(min(199, max(MIN_FONT_SIZE, min(max_w * 100 / max(1, r - l), max_h * 100 / max(1, b - t)))))
    while lo > MIN_FONT_SIZE and not fits(lo):
        lo -= 1
    while lo < 199 and fits(lo + 1):
        lo += 1
    l, t, r, b = bbox(lo, stroke)
    if r - l > e or b - t > e:  # cannot happen for catalog text; fall back to a thinner stroke
        stroke = 0
        l, t, r, b = bbox(lo, stroke)
    return lo, stroke, (l, t, r, b)


_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))


def _contrast_text(rgb: RGB) -> RGB:
    """BLACK or WHITE, whichever has the higher WCAG contrast against `rgb`."""
    def lin(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2])
    return BLACK if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else WHITE


def part_color(spec: ObjectSpec) -> RGB | None:
    """Exact RGB of the separate blobs that are the countable parts of `spec`, or None.

    Ladybug dots, monster pupils (eyes), die pips, house window panes and flower petals are each
    drawn as one 4-connected blob of this colour, which appears nowhere else in the tile. Star
    points are not separate blobs (they are one polygon), so stars return None.
    """
    cat = spec.category
    if cat in ("ladybug", "monster"):
        return BLACK
    if cat == "die":
        return BLACK if spec.color in LIGHT_COLORS else WHITE
    if cat == "house":
        return GLASS
    if cat == "flower":
        return COLORS[spec.color]
    return None


# --------------------------------------------------------------------------------------------
# One drawer per category. Each draws onto a transparent (e, e) RGBA canvas.

Drawer = Callable[[Image.Image, ImageDraw.ImageDraw, int, ObjectSpec, np.random.Generator],
                  "Image.Image | None"]

# Ladybug dot layouts in body-normalised coordinates (u, v in [-1, 1]), for one wing (u > 0);
# mirrored onto the other wing. An odd count adds one dot on the tail, below the centre line.
_LADYBUG_WING = {
    0: [],
    1: [(0.50, 0.05)],
    2: [(0.50, -0.30), (0.50, 0.38)],
    3: [(0.44, -0.42), (0.62, 0.06), (0.40, 0.52)],
    4: [(0.36, -0.45), (0.70, -0.12), (0.36, 0.22), (0.62, 0.52)],
}


def _draw_ladybug(img, d, e, spec, rng):
    body = COLORS[spec.color]
    n = int(spec.part_count or 0)
    cx = e / 2
    rx, ry = 0.40 * e, 0.355 * e
    cy = 0.935 * e - ry
    lw = _line_w(e, 1 / 40, 1)
    # Legs and antennae first, so the body and head cover their roots.
    leg_w = _line_w(e, 1 / 34, 2)
    for v in (-0.25, 0.15, 0.55):
        y = cy + v * ry
        half = rx * math.sqrt(1 - v * v)
        for s in (-1, 1):
            d.line([(cx + s * (half - 0.05 * e), y), (cx + s * (half + 0.05 * e), y + 0.03 * e)],
                   fill=_rgba(INK), width=leg_w)
    hx, hy, hrx, hry = cx, 0.185 * e, 0.19 * e, 0.12 * e
    for s in (-1, 1):
        d.line([(cx + s * 0.06 * e, hy), (cx + s * 0.16 * e, 0.035 * e)], fill=_rgba(INK),
               width=leg_w)
    _ellipse(d, hx, hy, hrx, hry, INK)
    for s in (-1, 1):  # little eyes on the head
        _circle(d, cx + s * 0.085 * e, hy - 0.02 * e, max(1.0, 0.028 * e), _lighten(INK, 0.85))
    _ellipse(d, cx, cy, rx, ry, body, outline=_darken(body, 0.55), width=lw)
    # Centre line between the wings; shortened when a tail dot sits on the axis.
    line_w = _line_w(e, 1 / 32, 2)
    v_end = 0.22 if n % 2 else 0.97
    d.line([(cx, cy - ry), (cx, cy + v_end * ry)], fill=_rgba(INK), width=line_w)
    r = (0.062 if n <= 4 else 0.056) * e
    dots = [(cx + s * u * rx, cy + v * ry) for u, v in _LADYBUG_WING[n // 2] for s in (-1, 1)]
    if n % 2:
        dots.append((cx, cy + 0.62 * ry))
    for x, y in dots:
        _circle(d, x, y, r, BLACK)


# Monster eye centres (fractions of the edge) and eyeball radius, by eye count.
_MONSTER_EYES = {
    1: ([(0.50, 0.40)], 0.165),
    2: ([(0.34, 0.40), (0.66, 0.40)], 0.125),
    3: ([(0.27, 0.44), (0.50, 0.34), (0.73, 0.44)], 0.10),
    4: ([(0.22, 0.47), (0.40, 0.34), (0.60, 0.34), (0.78, 0.47)], 0.09),
    5: ([(0.22, 0.50), (0.35, 0.33), (0.50, 0.47), (0.65, 0.33), (0.78, 0.50)], 0.085),
}


def _draw_monster(img, d, e, spec, rng):
    col = COLORS[spec.color]
    dark = _darken(col, 0.55)
    n = int(spec.part_count or 1)
    lw = _line_w(e, 1 / 40, 1)
    open_mouth = bool(rng.integers(0, 2))
    horns = bool(rng.integers(0, 2))
    cx = e / 2
    # Horns or antennae behind the head, then feet, then the round body.
    if horns:
        for s in (-1, 1):
            d.polygon([(cx + s * 0.20 * e, 0.24 * e), (cx + s * 0.34 * e, 0.05 * e),
                       (cx + s * 0.36 * e, 0.30 * e)], fill=_rgba(_lighten(col, 0.55)),
                      outline=_rgba(dark), width=lw)
    else:
        for s in (-1, 1):
            d.line([(cx + s * 0.12 * e, 0.2 * e), (cx + s * 0.22 * e, 0.08 * e)],
                   fill=_rgba(dark), width=_line_w(e, 1 / 34, 2))
            _circle(d, cx + s * 0.22 * e, 0.08 * e, 0.045 * e, _lighten(col, 0.55), dark, lw)
    for s in (-1, 1):
        _ellipse(d, cx + s * 0.2 * e, 0.89 * e, 0.12 * e, 0.06 * e, col, dark, lw)
    _ellipse(d, cx, 0.53 * e, 0.42 * e, 0.37 * e, col, dark, lw)
    centres, re_ = _MONSTER_EYES[n]
    for fx, fy in centres:
        # Integer centre and radii keep eyeball and pupil concentric, so the white ring
        # around the pupil stays at least 2 px thick at every size.
        x, y, r = round(fx * e), round(fy * e), round(re_ * e)
        _circle(d, x, y, r, WHITE, dark, 1 if r < 7 else lw)  # thin rim on small eyes: the white ring stays >= 2 px
        _circle(d, x, y + int(0.1 * r), round(0.4 * r), BLACK)
    # Mouth below the lowest eye.
    top = max(fy + re_ for _, fy in centres) * e + 0.06 * e
    if open_mouth:
        mw, mh = 0.17 * e, 0.13 * e
        box = [round(cx - mw), round(top), round(cx + mw), round(top + mh)]
        d.ellipse(box, fill=_rgba(MOUTH))
        _ellipse(d, cx, top + 0.75 * mh, 0.5 * mw, 0.22 * mh, TONGUE)
    else:
        mw, mh = 0.22 * e, 0.14 * e
        box = [round(cx - mw), round(top - mh), round(cx + mw), round(top + mh)]
        d.pieslice(box, 0, 180, fill=_rgba(MOUTH))
        tw = 0.07 * e
        for s in (-1, 1):  # two fangs hanging from the upper lip
            x = cx + s * 0.09 * e
            d.polygon([(x - tw / 2, top + 1), (x + tw / 2, top + 1), (x, top + 0.08 * e)],
                      fill=_rgba(TOOTH))


def _draw_flower(img, d, e, spec, rng):
    col = COLORS[spec.color]
    n = int(spec.part_count or 5)
    cx, cy = e / 2, 0.41 * e
    big_r, rc = 0.38 * e, 0.135 * e
    # Stem and leaf behind the head.
    d.line([(cx, cy), (cx, 0.965 * e)], fill=_rgba(STEM), width=_line_w(e, 0.06, 3))
    leaf = _petal_poly(cx + 0.02 * e, 0.80 * e, -math.pi / 5, 0.0, 0.22 * e, 0.07 * e)
    d.polygon(leaf, fill=_rgba(LEAF), outline=_rgba(STEM), width=1)
    gap = max(3.0, 0.045 * e)
    phase = -math.pi / 2 + float(rng.uniform(-0.25, 0.25)) * (math.pi / n)
    half = math.pi / n
    outline = _darken(col, 0.6)
    # Each petal: a polygon out along its axis and back, widened by a shape profile but kept
    # `gap` px from the neighbouring petals' axes so the petals stay separate blobs.
    t = np.linspace(0.0, 1.0, 25)
    r0 = 0.45 * rc
    rho = r0 + (big_r - r0) * t
    w_shape = 0.16 * e * np.sin(np.pi * t) ** 0.75 * (0.55 + 0.45 * t)
    w_gap = (rho * math.sin(half) - gap / 2) / math.cos(half)
    w = np.maximum(0.0, np.minimum(w_shape, w_gap))
    rho2 = np.concatenate([rho, rho[::-1]])
    w2 = np.concatenate([w, -w[::-1]])  # side +1 out, side -1 back
    for k in range(n):
        ang = phase + 2 * math.pi * k / n
        ca, sa = math.cos(ang), math.sin(ang)
        px = cx + rho2 * ca - w2 * sa
        py = cy + rho2 * sa + w2 * ca
        d.polygon(list(zip(px.tolist(), py.tolist())), fill=_rgba(col), outline=_rgba(outline), width=1)
    centre = CENTER_BROWN if spec.color in ("yellow", "orange") else CENTER_YELLOW
    _circle(d, cx, cy, rc, centre, _darken(centre, 0.65), _line_w(e, 1 / 50, 1))


def _petal_poly(x0: float, y0: float, ang: float, r0: float, r1: float, w: float,
                steps: int = 16) -> list[tuple[float, float]]:
    """A leaf/petal shape from (x0, y0) along angle `ang`, between radii r0 and r1, half-width w."""
    pts = []
    for side in (1, -1):
        idx = range(steps + 1) if side == 1 else range(steps, -1, -1)
        for i in idx:
            t = i / steps
            rho = r0 + (r1 - r0) * t
            ww = w * math.sin(math.pi * t)
            pts.append((x0 + rho * math.cos(ang) - side * ww * math.sin(ang),
                        y0 + rho * math.sin(ang) + side * ww * math.cos(ang)))
    return pts


# Standard die pip positions on a 3x3 grid (column, row), each in {0, 1, 2}.
_PIPS = {
    1: [(1, 1)],
    2: [(2, 0), (0, 2)],
    3: [(2, 0), (1, 1), (0, 2)],
    4: [(0, 0), (2, 0), (0, 2), (2, 2)],
    5: [(0, 0), (2, 0), (1, 1), (0, 2), (2, 2)],
    6: [(0, 0), (2, 0), (0, 1), (2, 1), (0, 2), (2, 2)],
}


def _draw_die(img, d, e, spec, rng):
    col = COLORS[spec.color]
    n = int(spec.part_count or 1)
    lo, hi = 0.07 * e, 0.93 * e
    side = hi - lo
    d.rounded_rectangle([round(lo), round(lo), round(hi), round(hi)], radius=round(0.17 * e),
                        fill=_rgba(col), outline=_rgba(_darken(col, 0.55)), width=_line_w(e))
    pip = part_color(spec)
    r = (0.11 if n == 1 else 0.078) * e
    for c, rr in _PIPS[n]:
        _circle(d, lo + side * (0.25 + 0.25 * c), lo + side * (0.25 + 0.25 * rr), r, pip)


# House window slots (centre x, centre y) as fractions of the edge, and layouts by count.
_HOUSE_SLOTS = {
    "TL": (0.26, 0.54), "TC": (0.50, 0.54), "TR": (0.74, 0.54),
    "BL": (0.26, 0.79), "BR": (0.74, 0.79), "G": (0.50, 0.285),
}
_HOUSE_LAYOUT = {
    1: ["TC"],
    2: ["BL", "BR"],
    3: ["TC", "BL", "BR"],
    4: ["TL", "TR", "BL", "BR"],
    5: ["TL", "TC", "TR", "BL", "BR"],
    6: ["TL", "TC", "TR", "BL", "BR", "G"],
}


def _draw_house(img, d, e, spec, rng):
    col = COLORS[spec.color]
    n = int(spec.part_count or 1)
    lw = _line_w(e, 1 / 45, 1)
    # Chimney behind the roof, on a random side.
    s = 1 if rng.integers(0, 2) else -1
    x0, x1 = sorted((e / 2 + s * 0.22 * e, e / 2 + s * 0.33 * e))
    d.rectangle([round(x0), round(0.10 * e), round(x1), round(0.35 * e)], fill=_rgba(CHIMNEY),
                outline=_rgba(_darken(CHIMNEY, 0.6)), width=lw)
    wall_top, wall_bot = 0.41 * e, 0.94 * e
    d.rectangle([round(0.12 * e), round(wall_top), round(0.88 * e), round(wall_bot)],
                fill=_rgba(col), outline=_rgba(_darken(col, 0.55)), width=lw)
    d.polygon([(0.04 * e, wall_top + 0.02 * e), (0.96 * e, wall_top + 0.02 * e), (0.5 * e, 0.05 * e)],
              fill=_rgba(ROOF), outline=_rgba(_darken(ROOF, 0.6)), width=lw)
    # Door at the bottom centre.
    d.rectangle([round(0.42 * e), round(0.66 * e), round(0.58 * e), round(wall_bot)],
                fill=_rgba(DOOR), outline=_rgba(_darken(DOOR, 0.6)), width=lw)
    _circle(d, 0.545 * e, 0.81 * e, max(1.0, 0.018 * e), KNOB)
    half = 0.075 * e
    frame = _line_w(e, 1 / 34, 2)
    for slot in _HOUSE_LAYOUT[n]:
        fx, fy = _HOUSE_SLOTS[slot]
        x, y = fx * e, fy * e
        box = [round(x - half), round(y - half), round(x + half), round(y + half)]
        d.rectangle(box, fill=_rgba(GLASS), outline=_rgba(FRAME), width=frame)


def _draw_star(img, d, e, spec, rng):
    col = COLORS[spec.color]
    n = int(spec.part_count or 5)
    inner = 0.30 + 0.03 * n
    tilt = float(rng.uniform(-0.12, 0.12)) * (math.pi / n)
    pts = []
    for k in range(2 * n):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + tilt + math.pi * k / n
        pts.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    scale = 0.90 * e / span
    ox = e / 2 - scale * (max(xs) + min(xs)) / 2
    oy = e / 2 - scale * (max(ys) + min(ys)) / 2
    poly = [(ox + scale * x, oy + scale * y) for x, y in pts]
    d.polygon(poly, fill=_rgba(col), outline=_rgba(_darken(col, 0.5)), width=_line_w(e, 1 / 40))


def _draw_card(img, d, e, spec, rng):
    col = COLORS[spec.color]
    x0, x1 = 0.12 * e, 0.88 * e
    y0, y1 = 0.04 * e, 0.96 * e
    d.rounded_rectangle([round(x0), round(y0), round(x1), round(y1)], radius=round(0.09 * e),
                        fill=_rgba(col), outline=_rgba(_darken(col, 0.55)), width=_line_w(e, 1 / 50, 1))
    b = 0.075 * e
    panel = (x0 + b, y0 + b, x1 - b, y1 - b)
    d.rounded_rectangle([round(v) for v in panel], radius=round(0.05 * e), fill=_rgba(PANEL))
    _draw_text_in_box(d, str(spec.text or ""), panel, BLACK, e, 0.86, 0.62)


def _draw_sign(img, d, e, spec, rng):
    col = COLORS[spec.color]
    pw = 0.11 * e
    d.rectangle([round(e / 2 - pw / 2), round(0.5 * e), round(e / 2 + pw / 2), round(0.96 * e)],
                fill=_rgba(POST), outline=_rgba(POST_DARK), width=_line_w(e, 1 / 50, 1))
    x0, x1, y0, y1 = 0.02 * e, 0.98 * e, 0.08 * e, 0.64 * e
    border = _line_w(e, 1 / 30, 2)
    d.rounded_rectangle([round(x0), round(y0), round(x1), round(y1)], radius=round(0.05 * e),
                        fill=_rgba(col), outline=_rgba(_darken(col, 0.55)), width=border)
    inner = (x0 + border + 1, y0 + border + 1, x1 - border - 1, y1 - border - 1)
    _draw_text_in_box(d, str(spec.text or ""), inner, _contrast_text(col), e, 0.94, 0.70)


def _draw_ball(img, d, e, spec, rng):
    col = COLORS[spec.color]
    cx = cy = e / 2
    r = 0.44 * e
    _circle(d, cx, cy, r, _darken(col, 0.82))
    _circle(d, cx - 0.05 * r, cy - 0.05 * r, 0.91 * r, col)
    d.ellipse([round(cx - r), round(cy - r), round(cx + r), round(cy + r)],
              outline=_rgba(_darken(col, 0.55)), width=_line_w(e, 1 / 45, 1))
    _ellipse(d, cx - 0.38 * r, cy - 0.45 * r, 0.2 * r, 0.13 * r, WHITE)
    _circle(d, cx - 0.62 * r, cy - 0.18 * r, 0.06 * r, WHITE)


def _draw_mug(img, d, e, spec, rng):
    col = COLORS[spec.color]
    dark = _darken(col, 0.55)
    lw = _line_w(e, 1 / 45, 1)
    bx0, bx1 = 0.08 * e, 0.68 * e
    top, bot = 0.16 * e, 0.90 * e
    # Handle: a thick ring on the right whose hole stays transparent.
    hx0, hx1, hy0, hy1 = 0.52 * e, 0.92 * e, 0.32 * e, 0.74 * e
    t = 0.085 * e
    d.ellipse([round(hx0), round(hy0), round(hx1), round(hy1)], fill=_rgba(col),
              outline=_rgba(dark), width=lw)
    d.ellipse([round(hx0 + t), round(hy0 + t), round(hx1 - t), round(hy1 - t)], fill=(0, 0, 0, 0),
              outline=_rgba(dark), width=lw)
    # Body with a rounded bottom, then the rim with coffee inside.
    d.rounded_rectangle([round(bx0), round(top), round(bx1), round(bot)], radius=round(0.08 * e),
                        fill=_rgba(col), outline=_rgba(dark), width=lw)
    rim_h = 0.07 * e
    d.ellipse([round(bx0), round(top - rim_h), round(bx1), round(top + rim_h)],
              fill=_rgba(_lighten(col, 0.35)), outline=_rgba(dark), width=lw)
    inset = 0.045 * e
    d.ellipse([round(bx0 + inset), round(top - rim_h + inset * 0.6), round(bx1 - inset),
               round(top + rim_h - inset * 0.6)], fill=_rgba(COFFEE))
    if rng.integers(0, 2):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return None


def _draw_kite(img, d, e, spec, rng):
    col = COLORS[spec.color]
    dark = _darken(col, 0.55)
    light = _lighten(col, 0.45)
    lw = _line_w(e, 1 / 45, 1)
    cx, top, mid, bot, half = 0.44 * e, 0.04 * e, 0.31 * e, 0.80 * e, 0.33 * e
    # Tail first: a wavy string from the bottom corner with small bows, curling left or right.
    s = 1 if rng.integers(0, 2) else -1
    pts = []
    for i in range(13):
        t = i / 12
        pts.append((cx + s * (0.36 * e * t) + 0.035 * e * math.sin(t * 2 * math.pi * 1.5),
                    bot + (0.955 * e - bot) * t))
    d.line(pts, fill=_rgba(SPAR), width=_line_w(e, 1 / 45, 1))
    bow = 0.045 * e
    bow_col = _contrast_bow(spec.color)
    for i in (4, 8, 12):
        x, y = pts[i]
        d.polygon([(x, y), (x - bow, y - 0.7 * bow), (x - bow, y + 0.7 * bow)], fill=_rgba(bow_col))
        d.polygon([(x, y), (x + bow, y - 0.7 * bow), (x + bow, y + 0.7 * bow)], fill=_rgba(bow_col))
    left, right, apex, foot = (cx - half, mid), (cx + half, mid), (cx, top), (cx, bot)
    centre = (cx, mid)
    # Four panels in two tones, then the spars on top, then the outline.
    d.polygon([apex, left, centre], fill=_rgba(col))
    d.polygon([apex, right, centre], fill=_rgba(light))
    d.polygon([left, foot, centre], fill=_rgba(light))
    d.polygon([right, foot, centre], fill=_rgba(col))
    spar = _line_w(e, 1 / 40, 1)
    d.line([apex, foot], fill=_rgba(SPAR), width=spar)
    d.line([left, right], fill=_rgba(SPAR), width=spar)
    d.polygon([apex, right, foot, left], outline=_rgba(dark), width=lw)


def _contrast_bow(color: str) -> RGB:
    """Tail bows of a kite: a hue far from its body colour."""
    return COLORS["blue"] if color in ("red", "orange", "yellow", "pink") else COLORS["yellow"]


def _draw_umbrella(img, d, e, spec, rng):
    col = COLORS[spec.color]
    dark = _darken(col, 0.55)
    light = _lighten(col, 0.4)
    lw = _line_w(e, 1 / 45, 1)
    cx = e / 2
    rx, ry = 0.46 * e, 0.38 * e
    cy = 0.46 * e  # centre of the dome's ellipse: the canopy spans cy - ry .. cy
    box = [round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry)]
    # Shaft and hook handle below the canopy; the hook opens left or right.
    sw = _line_w(e, 1 / 26, 2)
    s = 1 if rng.integers(0, 2) else -1
    hook_r = 0.09 * e
    shaft_bot = 0.95 * e - hook_r
    d.line([(cx, cy - 0.02 * e), (cx, shaft_bot)], fill=_rgba(SHAFT), width=sw)
    hx = cx + s * hook_r
    d.arc([round(hx - hook_r), round(shaft_bot - hook_r), round(hx + hook_r), round(shaft_bot + hook_r)],
          0, 180, fill=_rgba(SHAFT), width=sw)
    d.line([(cx, cy - ry - 0.03 * e), (cx, cy - ry + 0.02 * e)], fill=_rgba(SHAFT), width=sw)  # tip
    # Canopy (side view): the dome, seams from the tip down to the lower edge splitting it into
    # panels of alternating tones, then scallops cut from the lower edge.
    n_panels = 4
    tip = (cx, cy - ry)
    feet = [(cx - rx + 2 * rx * k / n_panels, cy) for k in range(n_panels + 1)]
    d.pieslice(box, 180, 360, fill=_rgba(col))
    d.polygon([tip, feet[1], feet[2]], fill=_rgba(light))
    d.polygon([tip, feet[3], feet[4]] + [(cx + rx * math.cos(a), cy + ry * math.sin(a))
                                          for a in np.linspace(2 * math.pi, 1.5 * math.pi, 12)],
              fill=_rgba(light))
    d.pieslice(box, 180, 360, outline=_rgba(dark), width=lw)
    sr = rx / n_panels
    for k in range(n_panels):
        _ellipse_clear(d, cx - rx + sr * (2 * k + 1), cy + 0.35 * sr, sr * 0.98, 0.5 * sr)
    for foot in feet[1:-1]:
        d.line([tip, (foot[0], cy - 0.12 * sr)], fill=_rgba(dark), width=lw)


def _ellipse_clear(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float) -> None:
    d.ellipse([round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry)], fill=(0, 0, 0, 0))


_DRAWERS: dict[str, Drawer] = {
    "ladybug": _draw_ladybug,
    "monster": _draw_monster,
    "flower": _draw_flower,
    "die": _draw_die,
    "house": _draw_house,
    "star": _draw_star,
    "card": _draw_card,
    "sign": _draw_sign,
    "ball": _draw_ball,
    "mug": _draw_mug,
    "kite": _draw_kite,
    "umbrella": _draw_umbrella,
}
assert set(_DRAWERS) == set(CATEGORIES), "every catalog category needs a drawer"


def draw_tile(spec: ObjectSpec, rng: np.random.Generator, edge: int | None = None) -> Image.Image:
    """The object `spec` drawn on a transparent square RGBA tile of edge `edge` (SIZES[spec.size] if None).

    Deterministic given (spec, edge, rng state); alpha is exactly 0 or 255 (see the module docstring).
    """
    img = _draw_raw(spec, rng, edge)
    # Enforce the binary-alpha contract (shapes are aliased already; this is a cheap guarantee).
    arr = np.asarray(img).copy()
    opaque = arr[..., 3] >= 128
    arr[..., 3] = np.where(opaque, 255, 0)
    arr[~opaque, :3] = 0
    return Image.fromarray(arr, "RGBA")


def _draw_raw(spec: ObjectSpec, rng: np.random.Generator, edge: int | None) -> Image.Image:
    if spec.category not in _DRAWERS:
        raise ValueError(f"draw_tile: unknown category {spec.category!r}")
    if spec.color not in COLORS:
        raise ValueError(f"draw_tile: unknown color {spec.color!r}")
    if spec.size not in SIZES:
        raise ValueError(f"draw_tile: unknown size {spec.size!r}")
    cat = CATEGORIES[spec.category]
    if cat.part is not None:
        lo, hi = cat.part_range
        if spec.part_count is None or not lo <= spec.part_count <= hi:
            raise ValueError(f"draw_tile: {spec.category} needs part_count in [{lo}, {hi}], "
                             f"got {spec.part_count!r}")
    if cat.text is not None and not spec.text:
        raise ValueError(f"draw_tile: {spec.category} needs text")
    e = SIZES[spec.size] if edge is None else int(edge)
    if e < 16:
        raise ValueError(f"draw_tile: edge {e} is too small to draw on")
    img = Image.new("RGBA", (e, e), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    out = _DRAWERS[spec.category](img, d, e, spec, rng)
    return img if out is None else out


SHADOW_OFFSET = 3.0  # nominal px (short side 600): how far down-right a sprite's shadow falls
SHADOW_BLUR = 2.0    # nominal px: width of the shadow's fading edge
SHADOW_ALPHA = 0.38  # opacity of the shadow's core
SHADOW_RGB: RGB = (14, 12, 10)


def shadow_geometry(scale: float) -> tuple[int, int]:
    """(offset, blur radius) in pixels of a sprite's soft shadow at `scale` (pixels per nominal pixel).

    The shadow reaches offset + blur pixels beyond the mask; scenes keep at least one more pixel of
    gap between objects, so a shadow only ever falls on an object that the caster covers anyway.
    """
    return max(1, round(SHADOW_OFFSET * scale)), max(1, round(SHADOW_BLUR * scale))


def outline_width(edge: int) -> int:
    """Width in pixels of the dark ring around a sprite of tile edge `edge` (1 px up to ~100 px)."""
    return max(1, round(edge / 70))


@dataclasses.dataclass(frozen=True, eq=False)
class Sprite:
    """A drawn object as a scene pastes it.

    mask: bool [h, w], the object's full mask in its tight box (read-only).
    image: RGBA to paste with itself as mask: the object (opaque, binary alpha) and its soft shadow
    (semi-transparent SHADOW_RGB) around it; mask[0, 0] sits at pixel `origin` (x, y) of `image`.
    """

    image: Image.Image
    mask: np.ndarray
    origin: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the mask's box in pixels."""
        return self.mask.shape[1], self.mask.shape[0]


_OPAQUE32 = np.asarray([0, 0, 0, 255], np.uint8).view(np.uint32)[0]
_OUTLINE32 = np.asarray([*OUTLINE, 255], np.uint8).view(np.uint32)[0]
_SHADOW32 = np.asarray([*SHADOW_RGB, 0], np.uint8).view(np.uint32)[0]


def _despeckle(arr: np.ndarray, rgb: RGB, repaint: RGB) -> np.ndarray:
    """Repaint pixels of colour `rgb` with fewer than two 4-neighbours of that colour (repeatedly).

    Nearest-neighbour rotation can leave a lone pixel of a petal's fill beside its outline at a thin
    tip; it would count as one more petal. Real parts are compact blobs and lose nothing here.
    """
    px = arr.view(np.uint32)[..., 0]
    key = np.asarray([*rgb, 255], np.uint8).view(np.uint32)[0]
    m = px == key
    out = None
    for _ in range(4):
        n = np.zeros(m.shape, np.uint8)
        n[1:] += m[:-1]
        n[:-1] += m[1:]
        n[:, 1:] += m[:, :-1]
        n[:, :-1] += m[:, 1:]
        thin = m & (n < 2)
        if not thin.any():
            break
        if out is None:
            out = arr.copy()
        out.view(np.uint32)[..., 0][thin] = np.asarray([*repaint, 255], np.uint8).view(np.uint32)[0]
        m &= ~thin
    return arr if out is None else out


def _grow(mask: np.ndarray, n: int, square: bool) -> np.ndarray:
    """`mask` dilated by `n` px: in the square (8-) neighbourhood, or by one step in the 4-neighbourhood
    if not `square`. The caller keeps `n` empty columns on both sides (rows are processed as one
    flat array, so content must not wrap from one row into the next)."""
    h, w = mask.shape
    src = mask.ravel()
    rows = src.copy()
    for d in range(1, n + 1):  # vertical: shifts by whole rows
        rows[d * w:] |= src[:-d * w]
        rows[:-d * w] |= src[d * w:]
    out = rows.copy() if square else rows
    hsrc = rows if square else src
    for d in range(1, n + 1):  # horizontal
        out[d:] |= hsrc[:-d]
        out[:-d] |= hsrc[d:]
    return out.reshape(h, w)


@functools.lru_cache(maxsize=96)
def object_sprite(spec: ObjectSpec, edge: int, angle: float, variant: int,
                  shadow: tuple[int, int] = (0, 0)) -> Sprite:
    """`spec` drawn at tile edge `edge`, rotated `angle` degrees counter-clockwise, outlined and cropped,
    with a soft shadow of (offset, blur) pixels (see `shadow_geometry`; (0, 0) for none).

    The drawer's cosmetic choices come from `np.random.default_rng(variant)`, so the sprite is a pure
    (cached) function of its arguments. Rotation is nearest-neighbour: alpha stays binary and every
    colour of the object is a colour of the tile (plus OUTLINE around it), so countable parts stay
    separate one-colour blobs.
    """
    tile = _draw_raw(spec, np.random.default_rng(variant), edge)
    if angle:
        tile = tile.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    bbox = tile.getbbox()  # of the non-zero alpha
    if bbox is None:
        raise RuntimeError(f"object_sprite: nothing drawn for {spec}")
    arr = np.asarray(tile.crop(bbox))
    if angle and spec.category == "flower":
        arr = _despeckle(arr, COLORS[spec.color], _darken(COLORS[spec.color], 0.6))
    body = arr[..., 3] >= 128
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    if len(rows) == 0:
        raise RuntimeError(f"object_sprite: nothing drawn for {spec}")
    if rows[0] or cols[0] or rows[-1] < body.shape[0] - 1 or cols[-1] < body.shape[1] - 1:
        # faint (alpha < 128) pixels widened the box: keep the box tight around the mask
        arr = arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        body = body[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    off, blur = shadow
    ow = outline_width(edge)
    # Canvas of the image: the mask's box (body + outline ring) plus room for the shadow.
    h, w = body.shape[0] + 2 * ow, body.shape[1] + 2 * ow
    left = top = max(0, blur - off) if off or blur else 0
    ih, iw = top + h + (off + blur), left + w + (off + blur)
    inner = np.zeros((ih, iw), bool)
    inner[top + ow:top + h - ow, left + ow:left + w - ow] = body
    full = _grow(inner, ow, square=True)  # body + outline ring
    # Compose whole pixels (RGBA as one uint32): body opaque, ring OUTLINE, elsewhere the shadow.
    px = np.zeros((ih, iw), np.uint32)
    region = px[top + ow:top + h - ow, left + ow:left + w - ow]
    np.copyto(region, arr.view(np.uint32)[..., 0] | _OPAQUE32, where=body)
    np.copyto(px, _OUTLINE32, where=full & ~inner)
    if off or blur:
        # Soft shadow: the mask shifted by `off`, its edge fading out over `blur` px (nested
        # dilations approximate a blur and stay cheap).
        level = np.zeros((ih, iw), bool)
        level[off:, off:] = full[:ih - off, :iw - off]
        count = level.view(np.uint8).copy()
        for _ in range(blur):
            level = _grow(level, 1, square=False)
            count += level.view(np.uint8)
        shaded = (count.astype(np.uint32) * np.uint32(round(255 * SHADOW_ALPHA / (blur + 1)))) << np.uint32(24)
        shaded |= _SHADOW32
        np.copyto(shaded, px, where=full)
        px = shaded
    mask = full[top:top + h, left:left + w].copy()
    mask.setflags(write=False)
    return Sprite(Image.fromarray(px.view(np.uint8).reshape(ih, iw, 4), "RGBA"), mask, (left, top))

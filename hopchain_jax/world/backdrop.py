"""Photo-like backdrops for procedural scenes: textured surfaces, soft light and unlabelled clutter.

`backdrop(style, width, height, rng)` returns an RGB `PIL.Image` of the canvas size. Each style's
texture (wood planks, floor tiles, gravel, lawn, sky over a field, linen, paper) is generated once per
(style, texture size) with its slow light variations and grain baked in, and cached; a scene crops a
window at an rng-chosen offset, darkens the corners (vignette) and scatters a few
low-contrast clutter items (pebbles, dry leaves, grass tufts, stains) that resemble no catalog category.
Everything here is background: none of it enters a scene's label map.

Colours stay desaturated and mid-light so the saturated catalog colours (and the dark outline and
soft shadow every object gets) stand out on every style.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

STYLES = ("wood", "tiles", "gravel", "lawn", "sky", "fabric", "paper")

# Textures are at least this large (height, width): every default canvas fits with room to shift.
TEXTURE_SIZE = (1152, 1408)
MIN_MARGIN = 96
HORIZON = 0.6  # sky style: the horizon's height as a fraction of the texture height

# Which clutter a style scatters (kinds of `_clutter_bank`).
_CLUTTER = {
    "wood": ("stain", "crumb", "leaf"),
    "tiles": ("stain", "crumb", "leaf"),
    "gravel": ("pebble", "leaf", "tuft"),
    "lawn": ("leaf", "tuft", "pebble"),
    "sky": ("tuft", "pebble"),
    "fabric": ("stain", "leaf"),
    "paper": ("stain", "crumb"),
}


def texture_size(width: int, height: int) -> tuple[int, int]:
    """(height, width) of the texture a canvas of this size crops its window from."""
    return max(TEXTURE_SIZE[0], height + MIN_MARGIN), max(TEXTURE_SIZE[1], width + MIN_MARGIN)


def backdrop(style: str, width: int, height: int, rng: np.random.Generator,
             clutter: tuple[int, int] = (3, 8)) -> Image.Image:
    """The canvas background for one scene (uses a handful of draws from `rng`)."""
    if style not in STYLES:
        raise ValueError(f"backdrop: unknown style {style!r}; expected one of {STYLES}")
    th, tw = texture_size(width, height)
    tex = _texture(style, th, tw)
    dx = int(rng.integers(0, tw - width + 1))
    if style == "sky":  # keep the horizon between 35% and 75% of the canvas height
        hy = int(HORIZON * th)
        lo, hi = max(0, hy - int(0.75 * height)), min(th - height, hy - int(0.35 * height))
        dy = int(rng.integers(lo, hi + 1)) if lo <= hi else max(0, min(th - height, hy - height // 2))
    else:
        dy = int(rng.integers(0, th - height + 1))
    canvas = tex.crop((dx, dy, dx + width, dy + height))
    _vignette(canvas)
    n = int(rng.integers(clutter[0], clutter[1] + 1)) if clutter[1] > 0 else 0
    kinds = _CLUTTER[style]
    scale = min(width, height) / 600
    top = 0
    if style == "sky":
        top = max(0, int(HORIZON * th) - dy + int(0.03 * height))
    for _ in range(n):
        bank = _clutter_bank(str(kinds[int(rng.integers(0, len(kinds)))]), scale >= 1.15)
        item = bank[int(rng.integers(0, len(bank)))]
        if rng.integers(0, 2):
            item = item.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        w, h = item.size
        if top >= height - h:
            break
        x = int(rng.integers(-w // 3, width - 2 * w // 3))
        y = int(rng.integers(top, height - h // 2))
        canvas.paste(item, (x, y), item)
    return canvas


# ----------------------------------------------------------------------------------------------
# Lighting


@functools.lru_cache(maxsize=16)
def _vignette_corner(width: int, height: int) -> tuple[Image.Image, ...]:
    """Darkening masks (L) for the four corner fifths of a canvas: 0 inside, up to 60 at the corners."""
    cw, ch = width // 5, height // 5
    # Separable falloff: strongest at the corner, zero along the quarter's inner edges (no seams).
    fy = (1.0 - np.arange(ch, dtype=np.float32) / ch)[:, None] ** 1.4
    fx = (1.0 - np.arange(cw, dtype=np.float32) / cw)[None, :] ** 1.4
    tl = Image.fromarray((fy * fx * 60 + 0.5).astype(np.uint8), "L")
    return (tl, tl.transpose(Image.Transpose.FLIP_LEFT_RIGHT), tl.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
            tl.transpose(Image.Transpose.ROTATE_180))


def _vignette(canvas: Image.Image) -> None:
    """Darken the corners in place (only the corner fifths are touched: cheap on large canvases)."""
    w, h = canvas.size
    masks = _vignette_corner(w, h)
    cw, ch = masks[0].size
    for m, (x, y) in zip(masks, ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch))):
        canvas.paste((12, 10, 8), (x, y, x + cw, y + ch), m)


# ----------------------------------------------------------------------------------------------
# Textures (float32 RGB in 0..255 until the end)


def _noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Smooth value noise, roughly N(0, 0.7), with features about cell_y x cell_x pixels."""
    gh, gw = int(h / cell_y) + 4, int(w / cell_x) + 4
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    big_w, big_h = int(round(gw * cell_x)), int(round(gh * cell_y))
    out = np.asarray(Image.fromarray(g, "F").resize((big_w, big_h), Image.Resampling.BICUBIC))
    oy, ox = int(cell_y * 1.5), int(cell_x * 1.5)
    return out[oy:oy + h, ox:ox + w]


def _desaturate(rgb: tuple[int, int, int], f: float) -> np.ndarray:
    c = np.asarray(rgb, np.float32)
    return c + (c.mean() - c) * f


def _wood(rng, h, w):
    base = _desaturate((194, 164, 128), 0.35)
    out = np.empty((h, w, 3), np.float32)
    streak = _noise(rng, h + 600, w, 5, 170) * 0.65 + _noise(rng, h + 600, w, 2, 45) * 0.35
    y = 0
    while y < h:
        ph = int(rng.integers(78, 118))
        y1 = min(h, y + ph)
        off = int(rng.integers(0, 600))
        tone = 1.0 + 0.07 * float(rng.standard_normal())
        tint = 1.0 + np.asarray([0.02, 0.0, -0.03], np.float32) * float(rng.standard_normal())
        band = streak[off:off + (y1 - y)]
        out[y:y1] = (base * tone * tint)[None, None, :] * (1.0 + 0.07 * band)[:, :, None]
        out[y:min(y1, y + 2)] *= 0.62  # seam between planks
        x = int(rng.integers(0, 500))
        while x < w:  # butt joints along the plank
            out[y:y1, x:x + 2] *= 0.66
            x += int(rng.integers(380, 760))
        y = y1
    return out


def _tiles(rng, h, w):
    tile, grout = 152, 4
    out = np.empty((h, w, 3), np.float32)
    out[:] = _desaturate((198, 196, 190), 0.0)
    base = _desaturate((218, 211, 198), 0.2)
    mottle = _noise(rng, h, w, 26, 26) * 0.035 + _noise(rng, h, w, 6, 6) * 0.015
    oy, ox = int(rng.integers(0, tile)), int(rng.integers(0, tile))
    for y0 in range(-oy, h, tile):
        for x0 in range(-ox, w, tile):
            ya, yb = max(0, y0 + grout), min(h, y0 + tile)
            xa, xb = max(0, x0 + grout), min(w, x0 + tile)
            if ya >= yb or xa >= xb:
                continue
            tone = 1.0 + 0.035 * float(rng.standard_normal())
            out[ya:yb, xa:xb] = base * tone
            out[ya:min(yb, ya + 3), xa:xb] *= 1.03  # bevel: light top-left, dark bottom-right
            out[ya:yb, xa:min(xb, xa + 3)] *= 1.03
            out[max(ya, yb - 3):yb, xa:xb] *= 0.93
            out[ya:yb, max(xa, xb - 3):xb] *= 0.93
    return out * (1.0 + mottle)[:, :, None]


def _gravel(rng, h, w):
    base = _desaturate((172, 162, 148), 0.2)
    f = 1.0 + 0.07 * _noise(rng, h, w, 110, 110) + 0.06 * _noise(rng, h, w, 14, 14) \
        + 0.10 * _noise(rng, h, w, 3.5, 3.5)
    tint = _noise(rng, h, w, 80, 80)[:, :, None] * np.asarray([0.02, 0.0, -0.02], np.float32)
    return base[None, None, :] * (f[:, :, None] + tint)


def _lawn(rng, h, w):
    base = _desaturate((170, 178, 140), 0.25)
    dry = _desaturate((184, 176, 146), 0.25)
    patch = np.clip(0.5 + 0.8 * _noise(rng, h, w, 140, 140), 0.0, 1.0)[:, :, None]
    f = 1.0 + 0.09 * _noise(rng, h, w, 7, 1.6) + 0.05 * _noise(rng, h, w, 22, 4) \
        + 0.04 * _noise(rng, h, w, 90, 90)
    return (base * (1 - patch) + dry * patch) * f[:, :, None]


def _sky(rng, h, w):
    hy = int(HORIZON * h)
    out = np.empty((h, w, 3), np.float32)
    t = np.linspace(0.0, 1.0, hy, dtype=np.float32)[:, None, None] ** 0.8
    top, low = np.asarray((172, 194, 218), np.float32), np.asarray((226, 230, 232), np.float32)
    out[:hy] = top * (1 - t) + low * t
    cloud = np.clip(0.75 * _noise(rng, hy, w, 120, 260) + 0.35 * _noise(rng, hy, w, 30, 60) - 0.25, 0.0, 1.0)
    out[:hy] += (244.0 - out[:hy]) * (0.75 * cloud)[:, :, None]
    # Hazy hills standing on the horizon, then a field that darkens towards the viewer.
    ridge = hy - 18 - (22 * (1 + _noise(rng, 1, w, 1, 190)[0])).astype(int)
    rows = np.arange(h)[:, None]
    hills = (rows >= ridge[None, :]) & (rows < hy)
    out[hills] = _desaturate((150, 166, 166), 0.2) * (1.0 + 0.03 * _noise(rng, h, w, 10, 30)[hills])[:, None]
    gh = h - hy
    g = np.linspace(0.0, 1.0, gh, dtype=np.float32)[:, None, None]
    field = _desaturate((180, 176, 144), 0.3)[None, None, :] * (1.03 - 0.12 * g)
    out[hy:] = field * (1.0 + 0.06 * _noise(rng, gh, w, 5, 14) + 0.04 * _noise(rng, gh, w, 40, 90))[:, :, None]
    return out


def _fabric(rng, h, w):
    base = _desaturate((204, 197, 184), 0.2)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    warp = np.sin(2 * np.pi * xs / 4.6) * (1.0 + 0.5 * _noise(rng, 1, w, 1, 9))
    weft = np.sin(2 * np.pi * ys / 4.6) * (1.0 + 0.5 * _noise(rng, h, 1, 9, 1))
    f = 1.0 + 0.028 * (warp + weft) + 0.035 * _noise(rng, h, w, 1.2, 40) \
        + 0.06 * _noise(rng, h, w, 230, 170)  # threads, slubs, soft folds
    return base[None, None, :] * f[:, :, None]


def _paper(rng, h, w):
    base = _desaturate((226, 222, 211), 0.0)
    f = 1.0 + 0.02 * _noise(rng, h, w, 60, 60) + 0.012 * _noise(rng, h, w, 1.2, 22) \
        + 0.012 * _noise(rng, h, w, 22, 1.2)
    return base[None, None, :] * f[:, :, None]


_STYLE_FNS = {"wood": _wood, "tiles": _tiles, "gravel": _gravel, "lawn": _lawn, "sky": _sky,
              "fabric": _fabric, "paper": _paper}
assert set(_STYLE_FNS) == set(STYLES)


@functools.lru_cache(maxsize=None)
def _texture(style: str, height: int, width: int) -> Image.Image:
    """The style's texture (RGB) with slow light changes and grain baked in; fixed seed, cached."""
    rng = np.random.default_rng([8731, STYLES.index(style)])
    rgb = _STYLE_FNS[style](rng, height, width)
    light = 1.0 + 0.07 * _noise(rng, height, width, 420, 420)
    gy, gx = rng.uniform(-0.05, 0.05, size=2)
    light += gy * np.linspace(-1, 1, height, dtype=np.float32)[:, None] \
        + gx * np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    rgb *= light[:, :, None]
    rgb += rng.normal(0.0, 2.2, size=(height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# Clutter: small, low-contrast, semi-transparent RGBA items pasted onto the backdrop


@functools.lru_cache(maxsize=None)
def _clutter_bank(kind: str, large: bool) -> tuple[Image.Image, ...]:
    rng = np.random.default_rng([4409, ("stain", "crumb", "pebble", "leaf", "tuft").index(kind), int(large)])
    k = 1.35 if large else 1.0
    return tuple(_CLUTTER_FNS[kind](rng, k) for _ in range(8))


def _blob(rng, n: int, rx: float, ry: float, wobble: float, cx: float, cy: float) -> list[tuple[float, float]]:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    r = 1.0 + wobble * rng.uniform(-1, 1, size=n)
    return list(zip((cx + rx * r * np.cos(a)).tolist(), (cy + ry * r * np.sin(a)).tolist()))


def _stain(rng, k):
    s = int(rng.integers(30, 64) * k)
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    col = (92, 78, 62)
    d.polygon(_blob(rng, 14, s * 0.45, s * 0.36, 0.22, s / 2, s / 2), fill=(*col, 26))
    d.polygon(_blob(rng, 10, s * 0.24, s * 0.2, 0.3, s / 2 + rng.uniform(-4, 4), s / 2), fill=(*col, 20))
    return img


def _crumb(rng, k):
    s = int(rng.integers(5, 10) * k)
    img = Image.new("RGBA", (s + 2, s + 2), (0, 0, 0, 0))
    v = int(rng.integers(110, 150))
    ImageDraw.Draw(img).polygon(_blob(rng, 7, s / 2, s / 2.6, 0.3, (s + 2) / 2, (s + 2) / 2),
                                fill=(v, int(v * 0.9), int(v * 0.78), 120))
    return img


def _pebble(rng, k):
    s = int(rng.integers(9, 19) * k)
    img = Image.new("RGBA", (s + 2, s + 2), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    v = int(rng.integers(118, 170))
    c = (s + 2) / 2
    d.polygon(_blob(rng, 10, s / 2, s / 2.4, 0.12, c, c), fill=(v, v - 4, v - 12, 130))
    d.ellipse([c - s * 0.25, c - s * 0.25, c, c - s * 0.05], fill=(min(255, v + 40),) * 3 + (70,))
    return img


def _leaf(rng, k):
    L = int(rng.integers(18, 30) * k)
    img = Image.new("RGBA", (L + 4, L + 4), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    ang = rng.uniform(0, 2 * np.pi)
    x0 = (L + 4) / 2 - L / 2 * math.cos(ang)
    y0 = (L + 4) / 2 - L / 2 * math.sin(ang)
    w = L * rng.uniform(0.18, 0.26)
    pts = []
    for side in (1, -1):
        ts = np.linspace(0, 1, 10) if side == 1 else np.linspace(1, 0, 10)
        for t in ts:
            ww = w * math.sin(math.pi * t) ** 0.8
            pts.append((x0 + L * t * math.cos(ang) - side * ww * math.sin(ang),
                        y0 + L * t * math.sin(ang) + side * ww * math.cos(ang)))
    base = np.asarray((150, 118, 80)) * rng.uniform(0.85, 1.1)
    col = tuple(int(v) for v in base)
    d.polygon(pts, fill=(*col, 125))
    d.line([(x0, y0), (x0 + L * math.cos(ang), y0 + L * math.sin(ang))],
           fill=(int(col[0] * 0.7), int(col[1] * 0.7), int(col[2] * 0.7), 120), width=1)
    return img


def _tuft(rng, k):
    hgt = int(rng.integers(12, 24) * k)
    wid = hgt + 6
    img = Image.new("RGBA", (wid, hgt + 2), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 10))):
        bx = wid / 2 + rng.uniform(-3, 3)
        tip = (bx + rng.uniform(-0.45, 0.45) * hgt, rng.uniform(0, 0.4) * hgt)
        mid = ((bx + tip[0]) / 2 + rng.uniform(-2, 2), (hgt + tip[1]) / 2)
        v = rng.uniform(0.8, 1.1)
        d.line([(bx, hgt + 1), mid, tip], fill=(int(110 * v), int(124 * v), int(84 * v), 140), width=1)
    return img


_CLUTTER_FNS = {"stain": _stain, "crumb": _crumb, "pebble": _pebble, "leaf": _leaf, "tuft": _tuft}

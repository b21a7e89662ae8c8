"""Render a Scene to pixels plus exact annotations (the oracle the procedural stages read).

Output of `render_scene`:
  image   uint8 [H, W, 3]  the picture
  labels  uint8 [H, W]     0 = background, k + 1 = pixels of scene.placements[k] (objects never overlap)
  objects list of RenderedObject: the spec, its pixel box [x0, y0, x1) exclusive ends and mask area in pixels
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageChops

from hopchain_jax.world.draw import draw_tile
from hopchain_jax.world.scene import ObjectSpec, Scene


@dataclasses.dataclass(frozen=True)
class RenderedObject:
    """One drawn object. box_px: (x0, y0, x1, y1) in pixels, ends exclusive; area_px: mask pixel count."""

    spec: ObjectSpec
    box_px: tuple[int, int, int, int]
    area_px: int


@dataclasses.dataclass(frozen=True)
class RenderedScene:
    scene: Scene
    image: np.ndarray  # uint8 [H, W, 3]
    labels: np.ndarray  # uint8 [H, W]
    objects: tuple[RenderedObject, ...]


GRAIN_MARGIN = 64  # the grain texture is this much larger than the canvas; scenes crop a shifted window


@functools.lru_cache(maxsize=4)
def _grain_texture(height: int, width: int) -> Image.Image:
    """A fixed paper-grain texture around 4 (uint8 RGB); added with offset -4 it shifts pixels by about ±2."""
    noise = np.random.default_rng(12345).normal(4.0, 2.0, size=(height + GRAIN_MARGIN, width + GRAIN_MARGIN, 1))
    return Image.fromarray(np.repeat(np.clip(np.round(noise), 0, 8).astype(np.uint8), 3, axis=2), "RGB")


def _background(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """A light, softly shaded, grained backdrop so images are not flat colour fields."""
    h, w = scene.height, scene.width
    base = rng.integers(225, 246, size=3).astype(np.float32)
    tilt = rng.uniform(-6, 6, size=(2, 3)).astype(np.float32)
    # The shading is smooth: compute it on a coarse grid and let PIL interpolate.
    ys = np.linspace(-1.0, 1.0, 16, dtype=np.float32)[:, None, None]
    xs = np.linspace(-1.0, 1.0, 16, dtype=np.float32)[None, :, None]
    coarse = np.clip(base + ys * tilt[0] + xs * tilt[1], 0, 255).astype(np.uint8)
    shade = Image.fromarray(coarse, "RGB").resize((w, h), Image.BILINEAR)
    dx, dy = (int(v) for v in rng.integers(0, GRAIN_MARGIN, size=2))
    grain = _grain_texture(h, w).crop((dx, dy, dx + w, dy + h))
    return ImageChops.add(shade, grain, offset=-4)


def render_scene(scene: Scene) -> RenderedScene:
    if len(scene.placements) > 254:
        raise ValueError("render_scene: at most 254 objects fit the uint8 label map")
    rng = np.random.default_rng([scene.seed, 1])
    canvas = _background(scene, rng)
    labels = np.zeros((scene.height, scene.width), np.uint8)
    objects = []
    for k, placement in enumerate(scene.placements):
        tile = draw_tile(placement.spec, rng)
        canvas.paste(tile, (placement.x, placement.y), tile)
        alpha = np.asarray(tile)[:, :, 3] > 0
        ys, xs = np.nonzero(alpha)
        if len(xs) == 0:
            raise RuntimeError(f"draw_tile drew nothing for {placement.spec}")
        th, tw = alpha.shape
        region = labels[placement.y:placement.y + th, placement.x:placement.x + tw]
        region[alpha[:region.shape[0], :region.shape[1]]] = k + 1
        box = (placement.x + int(xs.min()), placement.y + int(ys.min()),
               placement.x + int(xs.max()) + 1, placement.y + int(ys.max()) + 1)
        objects.append(RenderedObject(placement.spec, box, int(alpha.sum())))
    return RenderedScene(scene, np.asarray(canvas, dtype=np.uint8), labels, tuple(objects))

"""Render a Scene to pixels plus exact annotations (the oracle the procedural stages read).

The backdrop (textured surface, soft light, unlabelled clutter; see backdrop.py) is drawn first, then
every placement in depth order: its soft shadow, then its sprite (rotated, outlined tile; see
draw.object_sprite). Later placements are in front.

Output of `render_scene`:
  image   uint8 [H, W, 3]  the picture
  labels  uint8 [H, W]     0 = background (backdrop, clutter, shadows), k + 1 = VISIBLE pixels of
                           scene.placements[k] (what no later object covers)
  objects RenderedObject per placement, in the same order:
          box_px       (x0, y0, x1, y1) box of the visible mask, ends exclusive
          area_px      visible pixels (= its count in `labels`)
          full_area_px pixels of its full, unoccluded mask
          covers       indices of earlier placements whose full mask its mask overlaps (it hides part of them)
          angle        its rotation in degrees (counter-clockwise)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hopchain_jax.world.backdrop import backdrop
from hopchain_jax.world.draw import object_sprite, shadow_geometry
from hopchain_jax.world.scene import ObjectSpec, Scene

@dataclasses.dataclass(frozen=True)
class RenderedObject:
    """One drawn object; see the module docstring for the fields."""

    spec: ObjectSpec
    box_px: tuple[int, int, int, int]
    area_px: int
    full_area_px: int = 0
    covers: tuple[int, ...] = ()
    angle: float = 0.0


@dataclasses.dataclass(frozen=True)
class RenderedScene:
    scene: Scene
    image: np.ndarray  # uint8 [H, W, 3]
    labels: np.ndarray  # uint8 [H, W]
    objects: tuple[RenderedObject, ...]


def render_scene(scene: Scene) -> RenderedScene:
    if len(scene.placements) > 254:
        raise ValueError("render_scene: at most 254 objects fit the uint8 label map")
    rng = np.random.default_rng([scene.seed, 1])
    canvas = backdrop(scene.background, scene.width, scene.height, rng, scene.clutter)
    labels = np.zeros((scene.height, scene.width), np.uint8)
    shadow = shadow_geometry(scene.scale)
    sprites = [object_sprite(p.spec, p.tile_edge, p.angle, p.variant, shadow) for p in scene.placements]
    boxes = []
    for k, (p, sprite) in enumerate(zip(scene.placements, sprites)):
        w, h = sprite.size
        if p.x < 0 or p.y < 0 or p.x + w > scene.width or p.y + h > scene.height:
            raise ValueError(f"render_scene: placement {k} ({p.spec.category}) leaves the canvas")
        canvas.paste(sprite.image, (p.x - sprite.origin[0], p.y - sprite.origin[1]), sprite.image)
        labels[p.y:p.y + h, p.x:p.x + w][sprite.mask] = k + 1
        boxes.append((p.x, p.y, p.x + w, p.y + h))
    objects = []
    for k, (p, sprite) in enumerate(zip(scene.placements, sprites)):
        x0, y0, x1, y1 = boxes[k]
        visible = labels[y0:y1, x0:x1] == k + 1
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        if len(rows) == 0:
            raise RuntimeError(f"render_scene: placement {k} ({p.spec.category}) is hidden entirely")
        covers = tuple(j for j in range(k) if _masks_meet(sprites[j].mask, boxes[j], sprite.mask, boxes[k]))
        objects.append(RenderedObject(
            p.spec, (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1),
            int(np.count_nonzero(visible)), int(np.count_nonzero(sprite.mask)), covers, float(p.angle)))
    return RenderedScene(scene, np.asarray(canvas, dtype=np.uint8), labels, tuple(objects))


def _masks_meet(a: np.ndarray, box_a: tuple[int, int, int, int], b: np.ndarray, box_b: tuple[int, int, int, int]) -> bool:
    x0, y0 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    x1, y1 = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
    if x0 >= x1 or y0 >= y1:
        return False
    return bool((a[y0 - box_a[1]:y1 - box_a[1], x0 - box_a[0]:x1 - box_a[0]]
                 & b[y0 - box_b[1]:y1 - box_b[1], x0 - box_b[0]:x1 - box_b[0]]).any())

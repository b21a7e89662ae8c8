"""Scenes v2: resolutions, free placement with rotation, occlusion, backdrops, density, exact annotations."""
from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest

from hopchain_jax.world import backdrop
from hopchain_jax.world.catalog import (CATEGORIES, DENSE_PARTS, MIN_DENSE_EDGE, MIN_SIZE_RATIO, SIZE_ORDER,
                                        max_angle)
from hopchain_jax.world.draw import object_sprite, shadow_geometry
from hopchain_jax.world.render import render_scene
from hopchain_jax.world.scene import (DEFAULT_RESOLUTIONS, MAX_FRONT_INSIDE, Placement, SceneConfig, _Layout,
                                      sample_scene)

CONFIG = SceneConfig()


@pytest.fixture(scope="module")
def scenes():
    return [sample_scene(seed) for seed in range(80)]


@pytest.fixture(scope="module")
def rendered(scenes):
    return [render_scene(scene) for scene in scenes[:30]]


def _sprite(scene, p: Placement):
    return object_sprite(p.spec, p.tile_edge, p.angle, p.variant, shadow_geometry(scene.scale))


def _full_masks(r):
    """Each placement's full (unoccluded) mask on the canvas."""
    out = []
    for p in r.scene.placements:
        sprite = _sprite(r.scene, p)
        m = np.zeros(r.labels.shape, bool)
        w, h = sprite.size
        m[p.y:p.y + h, p.x:p.x + w] = sprite.mask
        out.append(m)
    return out


def _gap_px(scene) -> int:
    return max(int(round(CONFIG.gap * scene.scale)), sum(shadow_geometry(scene.scale)) + 1)


def test_same_seed_same_scene_and_pixels():
    a, b = sample_scene(5), sample_scene(5)
    assert a == b
    ra, rb = render_scene(a), render_scene(b)
    assert np.array_equal(ra.image, rb.image) and np.array_equal(ra.labels, rb.labels)
    assert ra.objects == rb.objects
    assert sample_scene(6) != a


def test_resolutions_backgrounds_and_angles_vary(scenes):
    assert {(s.width, s.height) for s in scenes} == set(DEFAULT_RESOLUTIONS)
    assert {s.background for s in scenes} == set(backdrop.STYLES)
    for s in scenes:
        for p in s.placements:
            assert abs(p.angle) <= max_angle(p.spec.category) + 1e-9
    angles = [abs(p.angle) for s in scenes for p in s.placements]
    assert max(angles) > 15 and np.mean([a > 3 for a in angles]) > 0.7


def test_density_and_repeats(scenes):
    n = [len(s.placements) for s in scenes]
    assert min(n) >= CONFIG.min_objects - 2 and max(n) <= CONFIG.max_objects and np.mean(n) >= 15
    big = 0
    for s in scenes:
        counts = collections.Counter(p.spec.category for p in s.placements)
        assert CONFIG.min_categories - 1 <= len(counts) <= CONFIG.max_categories
        assert max(counts.values()) <= CONFIG.max_instances
        big += max(counts.values()) >= 4
    assert big >= 0.8 * len(scenes)  # most scenes hold a set worth counting


def test_size_classes_stay_distinct_after_scaling(scenes):
    for s in scenes:
        edges = collections.defaultdict(list)
        for p in s.placements:
            edges[p.spec.size].append(p.tile_edge)
        for a, b in zip(SIZE_ORDER, SIZE_ORDER[1:]):
            if edges[a] and edges[b]:
                assert min(edges[b]) >= MIN_SIZE_RATIO * max(edges[a]), (s.seed, a, b, edges)
    # Tiles scale with the short side: a large object on a 640x480 canvas is smaller than on 960x960.
    by_res = collections.defaultdict(list)
    for s in scenes:
        by_res[min(s.width, s.height)] += [p.tile_edge for p in s.placements if p.spec.size == "large"]
    assert max(by_res[480]) < min(by_res[960])


def test_many_small_parts_get_room(scenes):
    dense = [p for s in scenes for p in s.placements
             if p.spec.part_count is not None and p.spec.part_count >= DENSE_PARTS.get(p.spec.category, 99)]
    assert len(dense) > 20
    assert all(p.tile_edge >= MIN_DENSE_EDGE for p in dense)
    # (while few-part objects still come small on the smallest canvases)
    assert any(p.tile_edge < MIN_DENSE_EDGE for s in scenes for p in s.placements if p.spec.part_count)


def test_annotations_are_exact_and_inside_the_canvas(rendered):
    for r in rendered:
        h, w = r.labels.shape
        assert r.image.shape == (h, w, 3) and (w, h) == (r.scene.width, r.scene.height)
        assert len(r.objects) == len(r.scene.placements)
        counts = np.bincount(r.labels.ravel(), minlength=len(r.objects) + 1)
        for k, (p, obj) in enumerate(zip(r.scene.placements, r.objects)):
            sw, sh = _sprite(r.scene, p).size
            assert 0 <= p.x and 0 <= p.y and p.x + sw <= w and p.y + sh <= h
            ys, xs = np.nonzero(r.labels[p.y:p.y + sh, p.x:p.x + sw] == k + 1)
            assert obj.area_px == counts[k + 1] == len(xs) > 0  # (so no pixel of it lies outside its sprite)
            assert obj.box_px == (p.x + xs.min(), p.y + ys.min(), p.x + xs.max() + 1, p.y + ys.max() + 1)
            assert obj.full_area_px == int(_sprite(r.scene, p).mask.sum()) >= obj.area_px
            assert obj.angle == p.angle


def test_covers_match_masks_and_depth_order(rendered):
    for r in rendered[:12]:
        full = _full_masks(r)
        for k, obj in enumerate(r.objects):
            assert obj.covers == tuple(j for j in range(k) if (full[j] & full[k]).any())
            # Visible = full mask minus everything drawn later.
            later = np.zeros_like(full[k])
            for j in range(k + 1, len(full)):
                later |= full[j]
            assert np.array_equal(r.labels == k + 1, full[k] & ~later)


def test_detail_objects_are_never_covered_and_exact_in_pixels(rendered):
    covered = set()
    for r in rendered:
        for obj in r.objects:
            covered |= {(id(r), j) for j in obj.covers}
        for k, (p, obj) in enumerate(zip(r.scene.placements, r.objects)):
            if CATEGORIES[p.spec.category].plain:
                continue
            assert (id(r), k) not in covered
            assert obj.area_px == obj.full_area_px
            # Nothing (another object, a shadow) is drawn over it: its pixels are its sprite's.
            sprite = _sprite(r.scene, p)
            w, h = sprite.size
            ox, oy = sprite.origin
            rgb = np.asarray(sprite.image)[oy:oy + h, ox:ox + w, :3]
            assert np.array_equal(r.image[p.y:p.y + h, p.x:p.x + w][sprite.mask], rgb[sprite.mask])


def test_occlusions_hide_a_bounded_part_of_one_plain_object(rendered):
    seen = 0
    for r in rendered:
        coverers = collections.defaultdict(list)
        for k, obj in enumerate(r.objects):
            for j in obj.covers:
                coverers[j].append(k)
        for j, ks in coverers.items():
            seen += 1
            back, (k,) = r.objects[j], ks  # exactly one object covers it
            assert CATEGORIES[back.spec.category].plain
            hidden = 1 - back.area_px / back.full_area_px
            lo, hi = CONFIG.overlap_range
            assert lo <= hidden <= hi, (r.scene.seed, j, hidden)
            front = r.objects[k]
            assert front.covers == (j,)  # it covers nothing else
            assert front.spec.color != back.spec.color
            assert back.full_area_px - back.area_px <= MAX_FRONT_INSIDE * front.full_area_px
    assert seen >= 15  # occlusion is common: p_overlap per plain object


def test_unrelated_objects_keep_a_gap(rendered):
    for r in rendered:
        g = _gap_px(r.scene)
        boxes = []
        for p in r.scene.placements:
            w, h = _sprite(r.scene, p).size
            boxes.append((p.x, p.y, p.x + w, p.y + h))
        pairs = {(j, k) for k, obj in enumerate(r.objects) for j in obj.covers}
        for k in range(len(boxes)):
            for j in range(k):
                if (j, k) in pairs:
                    continue
                a, b = boxes[j], boxes[k]
                apart = (a[2] + g <= b[0] or b[2] + g <= a[0] or a[3] + g <= b[1] or b[3] + g <= a[1])
                assert apart, (r.scene.seed, j, k, a, b, g)


def test_backdrop_is_textured_and_unlabelled(rendered):
    for r in rendered[:8]:
        assert (r.labels == 0).mean() > 0.4
        far = np.ones(r.labels.shape, bool)  # away from every object and its shadow
        for p in r.scene.placements:
            sprite = _sprite(r.scene, p)
            x, y = p.x - sprite.origin[0], p.y - sprite.origin[1]
            far[max(0, y):y + sprite.image.height, max(0, x):x + sprite.image.width] = False
        assert far.mean() > 0.2
        assert r.image[far].std() > 3  # texture, light and clutter: not a flat colour field


def test_crowded_config_places_what_fits():
    config = SceneConfig(resolutions=((640, 480),), min_objects=150, max_objects=150, min_categories=12,
                         max_categories=12, max_instances=20)
    scene = sample_scene(1, config)
    assert 20 <= len(scene.placements) < 150
    r = render_scene(scene)
    assert sum(o.area_px for o in r.objects) == int((r.labels > 0).sum())


def test_exhaustive_search_finds_the_last_hole():
    # Random candidates almost never hit a small hole; the grid search must still find it.
    layout = _Layout(800, 600, 4, np.random.default_rng(0))
    for x0, y0, x1, y1 in ((0, 0, 800, 100), (0, 100, 150, 600), (200, 100, 800, 600), (150, 160, 200, 600)):
        layout.add(x0, y0, x1 - x0, y1 - y0)  # leaves a 50 x 60 hole at (150, 100)
    assert layout.free_spot(45, 40) is None  # 45 + 2 * 4 > 50: nothing fits
    for _ in range(5):
        x, y = layout.free_spot(20, 40)
        assert 154 <= x and x + 20 <= 196 and 104 <= y and y + 40 <= 156


def test_fewer_objects_than_categories():
    config = SceneConfig(min_objects=2, max_objects=3, min_categories=5, max_categories=7)
    for seed in range(5):
        assert 1 <= len(sample_scene(seed, config).placements) <= 3


def test_config_round_trips_through_json():
    data = json.loads(json.dumps(dataclasses.asdict(CONFIG)))
    assert SceneConfig(**data) == CONFIG
    with pytest.raises(ValueError):
        SceneConfig(size_jitter=0.1)  # would let size classes come within 1.25x
    with pytest.raises(ValueError):
        SceneConfig(backgrounds=("moon",))


def test_scenes_draw_from_a_small_palette_so_colours_repeat():
    """Same-colour sets are worth counting only if colours repeat within a scene."""
    import statistics
    from hopchain_jax.world.scene import SceneConfig, sample_scene
    distinct = [len({p.spec.color for p in sample_scene(seed).placements}) for seed in range(12)]
    wide = [len({p.spec.color for p in sample_scene(seed, SceneConfig(palette_size=(7, 7))).placements})
            for seed in range(12)]
    assert statistics.mean(distinct) <= 5.2 < statistics.mean(wide), (distinct, wide)

"""Procedural scenes: deterministic, varied, and annotated exactly."""
import numpy as np

from hopchain_jax.synth.stages import ImageInput, OracleCategoryIdentifier, OracleSegmenter
from hopchain_jax.world.catalog import CATEGORIES, COLORS
from hopchain_jax.world.render import render_scene
from hopchain_jax.world.scene import sample_scene


def test_same_seed_same_pixels_and_annotations():
    a, b = render_scene(sample_scene(11)), render_scene(sample_scene(11))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.objects == b.objects
    assert not np.array_equal(a.image, render_scene(sample_scene(12)).image)


def test_scenes_cover_the_catalog():
    cats, colors, sizes = set(), set(), set()
    for seed in range(40):
        for p in sample_scene(seed).placements:
            cats.add(p.spec.category)
            colors.add(p.spec.color)
            sizes.add(p.spec.size)
    assert cats == set(CATEGORIES) and len(cats) >= 8
    assert colors == set(COLORS) and sizes == {"small", "medium", "large"}


def test_annotations_match_the_pixels():
    rendered = render_scene(sample_scene(3))
    image = ImageInput(rendered.image, "t", rendered)
    seg = OracleSegmenter().segment(image, OracleCategoryIdentifier().identify(image))
    assert len(seg.instances) == len(rendered.objects)
    h, w = rendered.labels.shape
    for k, (inst, obj) in enumerate(zip(seg.instances, rendered.objects)):
        mask = seg.labels == k + 1
        ys, xs = np.nonzero(mask)
        assert mask.sum() == inst["area"] == obj.area_px > 0
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box_px
        x0, y0, x1, y1 = inst["bbox"]
        assert all(isinstance(v, int) and 0 <= v <= 1000 for v in inst["bbox"])
        # the normalised box still encloses every mask pixel
        assert x0 * w / 1000 <= xs.min() and xs.max() + 1 <= x1 * w / 1000 + 1e-9
        assert y0 * h / 1000 <= ys.min() and ys.max() + 1 <= y1 * h / 1000 + 1e-9
        assert inst["category"] == obj.spec.category and inst["attributes"]["color"] == obj.spec.color
        assert inst["attributes"]["part_count"] == obj.spec.part_count
        assert inst["attributes"]["text"] == obj.spec.text
        # the object is drawn where its mask says: its pixels differ from the backdrop around it
        assert rendered.image[mask].std() > 0 or rendered.image[mask].mean() < 200

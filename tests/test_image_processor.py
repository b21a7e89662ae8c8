"""hopchain_jax.models.image_processor against transformers' Qwen2VLImageProcessorPil (the reference)."""
import json
import math
import zlib

import numpy as np
import pytest
from PIL import Image

from hopchain_jax.models import image_processor as ip
from hopchain_jax.models.image_processor import (QWEN2_5_VL, QWEN2_VL, QWEN3_VL, ImageProcessorConfig,
                                                 from_pretrained_dir, num_image_tokens, preprocess, smart_resize)

hf_qwen2vl = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
Qwen2VLImageProcessorPil = hf_qwen2vl.Qwen2VLImageProcessorPil

# (height, width): tiny (upscaled to min_pixels), square, landscape, portrait, ~150:1 strip, large.
SIZES = [(7, 9), (37, 53), (224, 224), (480, 640), (1000, 333), (20, 3000), (300, 61), (1536, 1152)]

CONFIGS = {
    "qwen2_vl_defaults": QWEN2_VL,
    "qwen2_5_vl": QWEN2_5_VL,
    "qwen3_vl": QWEN3_VL,
    "qwen2_5_vl_custom_pixels": QWEN2_5_VL.replace(min_pixels=128 * 28 * 28, max_pixels=512 * 28 * 28),
    "qwen3_vl_custom_pixels": QWEN3_VL.replace(min_pixels=64 * 32 * 32, max_pixels=256 * 32 * 32),
}


def hf_processor(config: ImageProcessorConfig) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        patch_size=config.patch_size, temporal_patch_size=config.temporal_patch_size, merge_size=config.merge_size,
        min_pixels=config.min_pixels, max_pixels=config.max_pixels, image_mean=list(config.image_mean),
        image_std=list(config.image_std), resample=config.resample)


def assert_matches_hf(images, config, hf=None):
    ref = (hf or hf_processor(config))(images=images)
    out = preprocess(images, config)
    ref_pv, ref_grid = np.asarray(ref["pixel_values"]), np.asarray(ref["image_grid_thw"])
    assert out.image_grid_thw.dtype == np.int64 and out.pixel_values.dtype == np.float32
    np.testing.assert_array_equal(out.image_grid_thw, ref_grid)
    assert out.pixel_values.shape == ref_pv.shape == (int(ref_grid.prod(axis=1).sum()), config.patch_dim)
    assert float(np.abs(out.pixel_values - ref_pv).max()) <= 1e-5
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_rgb_images_match_transformers(name):
    config = CONFIGS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    out = assert_matches_hf(images, config)
    # Each image is processed independently: per-image calls give the same rows.
    one = preprocess([images[3]], config)
    offset = int(out.image_grid_thw[:3].prod(axis=1).sum())
    np.testing.assert_array_equal(one.pixel_values, out.pixel_values[offset:offset + len(one.pixel_values)])


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_smooth_photo_like_image_matches(name):
    # Smooth gradients exercise the bicubic filter's overshoot clipping differently from noise.
    config = CONFIGS[name]
    yy, xx = np.mgrid[0:411, 0:587]
    img = np.stack([(xx * 255 / 586), (yy * 255 / 410), ((xx + yy) % 256)], axis=-1).round().astype(np.uint8)
    assert_matches_hf([Image.fromarray(img), img], config)


def test_modes_and_layouts_match_transformers():
    rng = np.random.default_rng(1)
    config = CONFIGS["qwen2_5_vl_custom_pixels"]
    rgba = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 0
    images = [
        Image.fromarray(rng.integers(0, 256, (77, 91), dtype=np.uint8), "L"),            # grayscale PIL
        Image.fromarray(rgba, "RGBA"),                                                    # alpha onto white
        Image.fromarray(rng.integers(0, 256, (64, 64, 2), dtype=np.uint8), "LA"),
        palette,                                                                          # palette + transparency
        Image.fromarray(rng.integers(0, 256, (33, 120, 3), dtype=np.uint8)).convert("CMYK"),
        rng.integers(0, 256, (60, 80, 1), dtype=np.uint8),                                # HxWx1
        rng.integers(0, 256, (3, 60, 80), dtype=np.uint8),                                # CHW
        rgba,                                                                             # RGBA array
        rng.integers(0, 256, (45, 50, 3)).astype(np.float64),                             # integer-valued floats
    ]
    out = assert_matches_hf(images, config)
    # A 2-D grayscale array (transformers rejects it) equals the same image given as HxWx1.
    gray = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess([gray], config).pixel_values,
                                  preprocess([gray[:, :, None]], config).pixel_values)
    assert out.resized_sizes[0] == smart_resize(77, 91, 28, config.min_pixels, config.max_pixels)


def test_smart_resize_matches_transformers():
    rng = np.random.default_rng(2)
    for factor, lo, hi in [(28, 56 * 56, 28 * 28 * 1280), (32, 65536, 16777216), (28, 4 * 28 * 28, 64 * 28 * 28)]:
        for _ in range(400):
            h = int(rng.integers(1, 5000))
            w = int(np.clip(h * math.exp(rng.uniform(-5, 5)), 1, 20000))
            try:
                expected = hf_qwen2vl.smart_resize(h, w, factor, lo, hi)
            except ValueError as e:
                with pytest.raises(ValueError, match="aspect ratio"):
                    smart_resize(h, w, factor, lo, hi)
                assert "aspect ratio" in str(e)
                continue
            got = smart_resize(h, w, factor, lo, hi)
            assert got == expected
            assert got[0] % factor == 0 and got[1] % factor == 0


def test_grid_and_token_counts():
    out = preprocess([np.zeros((784, 1176, 3), np.uint8), np.zeros((100, 100, 3), np.uint8)], QWEN2_5_VL)
    np.testing.assert_array_equal(out.image_grid_thw, [[1, 56, 84], [1, 8, 8]])
    assert out.num_image_tokens == [1176, 16]
    assert num_image_tokens([1, 56, 84], 2) == 1176
    np.testing.assert_array_equal(num_image_tokens(out.image_grid_thw, 2), [1176, 16])
    assert ip.grid_thw_for_size(784, 1176, QWEN2_5_VL) == (1, 56, 84)
    assert ip.grid_thw_for_size(784, 1176, QWEN3_VL) == (1, 48, 74)
    q3 = preprocess(np.zeros((784, 1176, 3), np.uint8), QWEN3_VL)  # a single image is accepted too
    assert q3.pixel_values.shape == (48 * 74, 3 * 2 * 16 * 16)


def test_errors_name_the_image():
    ok = np.zeros((64, 64, 3), np.uint8)
    strip = np.zeros((10, 2500, 3), np.uint8)  # aspect ratio 250
    with pytest.raises(ValueError, match=r"image 1 \(2500x10 px.*aspect ratio must be smaller than 200, got 250"):
        preprocess([ok, strip], QWEN2_5_VL)
    with pytest.raises(ValueError, match="image 0: float array with non-integer values"):
        preprocess([np.full((32, 32, 3), 0.5)], QWEN2_5_VL)
    with pytest.raises(ValueError, match=r"image 0 is empty"):
        preprocess([np.zeros((0, 5, 3), np.uint8)], QWEN2_5_VL)
    with pytest.raises(ValueError, match="channel axis"):
        preprocess([np.zeros((20, 20, 5), np.uint8)], QWEN2_5_VL)
    with pytest.raises(ValueError, match=r"image 0 .* too small.*raise min_pixels"):
        preprocess([np.zeros((5, 5, 3), np.uint8)], QWEN2_5_VL.replace(min_pixels=0))
    with pytest.raises(ValueError, match="min_pixels .* larger than max_pixels"):
        QWEN2_5_VL.replace(min_pixels=10**7, max_pixels=10**6)
    with pytest.raises(ValueError, match="smaller than one merged patch"):
        QWEN3_VL.replace(min_pixels=0, max_pixels=1000)
    with pytest.raises(ValueError, match="at least one image"):
        preprocess([], QWEN2_5_VL)


def test_from_pretrained_dir_matches_transformers(tmp_path):
    # Qwen3-VL style file: "size" dict only.
    q3 = tmp_path / "q3"
    q3.mkdir()
    (q3 / "preprocessor_config.json").write_text(json.dumps({
        "size": {"longest_edge": 256 * 32 * 32, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"}))
    # Qwen2.5-VL style file: top-level min/max pixels.
    q25 = tmp_path / "q25"
    q25.mkdir()
    (q25 / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 300 * 28 * 28, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": list(ip.OPENAI_CLIP_MEAN), "image_std": list(ip.OPENAI_CLIP_STD),
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}))
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(300, 500), (900, 700)]]
    for d, patch in [(q3, 16), (q25, 14)]:
        config = from_pretrained_dir(d)
        assert config.patch_size == patch
        assert_matches_hf(images, config, hf=Qwen2VLImageProcessorPil.from_pretrained(str(d)))
    assert from_pretrained_dir(q3) == QWEN3_VL.replace(max_pixels=256 * 32 * 32)

    # No preprocessor_config.json: preset from config.json, or the explicit default.
    bare = tmp_path / "bare"
    bare.mkdir()
    assert from_pretrained_dir(bare) == QWEN2_5_VL
    (bare / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "vision_config": {"patch_size": 16}}))
    assert from_pretrained_dir(bare) == QWEN3_VL
    assert from_pretrained_dir(bare, default=QWEN2_VL) == QWEN2_VL

    # to_dict() writes a preprocessor_config.json that both loaders read back to the same settings.
    custom = tmp_path / "custom"
    custom.mkdir()
    config = CONFIGS["qwen3_vl_custom_pixels"].replace(resample=2)
    (custom / "preprocessor_config.json").write_text(json.dumps(config.to_dict()))
    assert from_pretrained_dir(custom) == config
    assert_matches_hf(images, config, hf=Qwen2VLImageProcessorPil.from_pretrained(str(custom)))

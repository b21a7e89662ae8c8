"""save_pretrained's preprocessor_config.json / generation_config.json: read back by hopchain and transformers.

An exported checkpoint must carry the image size it was trained at (a model trained at a small max_pixels
scores far worse when a consumer falls back to the default size) and its eos ids.
"""
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hopchain_jax.configs.models import tiny
from hopchain_jax.models.checkpoint import save_generation_config, save_pretrained
from hopchain_jax.models.image_processor import (QWEN2_5_VL, QWEN3_VL, from_pretrained_dir, preprocess,
                                                 save_preprocessor_config)
from hopchain_jax.models.qwen_vl import QwenVL

transformers = pytest.importorskip("transformers")
Qwen2VLImageProcessorPil = pytest.importorskip(
    "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl").Qwen2VLImageProcessorPil

# Training-size processors: far below the presets' defaults, so a fallback to the default would show.
CASES = {
    "qwen2_5_vl": QWEN2_5_VL.replace(max_pixels=12544, min_pixels=3136),
    "qwen3_vl": QWEN3_VL.replace(max_pixels=64 * 32 * 32, min_pixels=4 * 32 * 32),
}
GENERATION = {"temperature": 0.7, "top_p": 0.8, "top_k": 20}


def tiny_model(arch):
    """A tiny model with random host-made weights (no per-parameter init programs to compile: fast on CPU)."""
    config = dataclasses.replace(tiny(arch, vocab_size=512), bos_token_id=1, eos_token_id=(2, 3), pad_token_id=0)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: QwenVL(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(state):
        var.set_value(jnp.asarray(rng.normal(0, 0.02, var.shape).astype(var.dtype)))
    return nnx.merge(graphdef, state)


@pytest.mark.parametrize("arch", list(CASES))
def test_export_carries_processor_and_generation_config(arch, tmp_path):
    processor = CASES[arch]
    model = tiny_model(arch)
    path = save_pretrained(model, tmp_path / "hf", processor=processor, generation=GENERATION)

    # hopchain's eval / serve / generate read the training size back, not the preset default.
    assert from_pretrained_dir(path) == processor
    assert from_pretrained_dir(path) != (QWEN3_VL if arch == "qwen3_vl" else QWEN2_5_VL)
    pp = json.loads((path / "preprocessor_config.json").read_text())
    assert pp["size"] == {"shortest_edge": processor.min_pixels, "longest_edge": processor.max_pixels}
    assert (pp["min_pixels"], pp["max_pixels"]) == (processor.min_pixels, processor.max_pixels)
    assert pp["processor_class"] == {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[arch]

    # transformers reads the same settings and cuts an image into the same grid and pixels.
    for hf in (Qwen2VLImageProcessorPil.from_pretrained(path), transformers.AutoImageProcessor.from_pretrained(path)):
        assert hf.size == {"shortest_edge": processor.min_pixels, "longest_edge": processor.max_pixels}
        assert (hf.patch_size, hf.merge_size) == (processor.patch_size, processor.merge_size)
    image = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)  # resized down to the max
    ref = Qwen2VLImageProcessorPil.from_pretrained(path)(images=[image])
    ours = preprocess([image], processor)
    np.testing.assert_array_equal(ours.image_grid_thw, np.asarray(ref["image_grid_thw"]))
    assert int(ours.image_grid_thw.prod()) * processor.patch_size ** 2 <= processor.max_pixels
    assert float(np.abs(ours.pixel_values - np.asarray(ref["pixel_values"])).max()) <= 1e-5

    gen = transformers.GenerationConfig.from_pretrained(path)
    assert gen.eos_token_id == [2, 3] and gen.bos_token_id == 1 and gen.pad_token_id == 0
    assert (gen.do_sample, gen.temperature, gen.top_p, gen.top_k) == (True, 0.7, 0.8, 20)

    # config.json is written as before, beside the new files.
    assert json.loads((path / "config.json").read_text()) == json.loads(json.dumps(model.config.to_hf()))


def test_defaults_and_errors(tmp_path):
    model = tiny_model("qwen3_vl")
    plain = save_pretrained(model, tmp_path / "plain")     # neither argument: neither file (old behaviour)
    assert not (plain / "preprocessor_config.json").exists() and not (plain / "generation_config.json").exists()
    with pytest.raises(ValueError, match="patch_size=14 vs model 16"):   # a 2.5-VL processor for a Qwen3-VL model
        save_pretrained(model, tmp_path / "bad", processor=CASES["qwen2_5_vl"])
    with pytest.raises(TypeError, match="temprature"):
        save_pretrained(model, tmp_path / "bad", generation={"temprature": 0.5})
    assert not (tmp_path / "bad").exists()                  # checked before anything is written

    # temperature 0 is hopchain's greedy: do_sample false, no sampling knobs.
    save_generation_config(tmp_path / "greedy", model.config, temperature=0.0, top_p=0.9, top_k=5)
    greedy = json.loads((tmp_path / "greedy" / "generation_config.json").read_text())
    assert greedy == {"bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0, "do_sample": False}
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "greedy").do_sample is False

    file = save_preprocessor_config(tmp_path / "pp", QWEN2_5_VL)   # no arch: no processor_class
    assert "processor_class" not in json.loads(file.read_text()) and from_pretrained_dir(file.parent) == QWEN2_5_VL
    with pytest.raises(ValueError, match="unknown arch"):
        save_preprocessor_config(tmp_path / "pp", QWEN2_5_VL, arch="llava")

"""`hopchain generate --greedy --json` on a tiny random checkpoint with the real Qwen tokenizer equals
transformers' greedy generate on the same inputs."""
import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from hopchain_jax.configs.models import PRESETS
from hf_tiny import hf_model_from_config
from hopchain_jax.cli import main
from hopchain_jax.models.tokenizer import load_tokenizer


@pytest.mark.parametrize("preset", ["tiny", "tiny_qwen3"])
def test_generate_json_matches_transformers(preset, tmp_path, capsys):
    config = PRESETS[preset]()
    hf = hf_model_from_config(config, seed=3)
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(ckpt)
    load_tokenizer().save_pretrained(ckpt)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(image)
    assert main(["generate", "--model", str(ckpt), "--image", str(image), "--prompt", "How many dots?",
                 "--greedy", "--json", "--max-new-tokens", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"input_ids", "image_grid_thw", "output_ids", "text"}
    ids = torch.tensor([out["input_ids"]])
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    proc = Qwen2VLImageProcessorPil(patch_size=config.vision.patch_size, merge_size=2, temporal_patch_size=2)
    if preset == "tiny_qwen3":
        proc = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3, min_pixels=65536, max_pixels=16777216)
    else:
        proc = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=3136,
                                        max_pixels=12845056)
    pix = proc(images=[Image.open(image).convert("RGB")], return_tensors="pt")
    assert pix["image_grid_thw"].tolist() == out["image_grid_thw"]
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix["pixel_values"],
                          image_grid_thw=pix["image_grid_thw"], mm_token_type_ids=(ids == config.image_token_id).long(),
                          max_new_tokens=32, do_sample=False,   # the vision ids our engine never samples
                          suppress_tokens=list(config.vision_token_ids))[0, ids.shape[1]:].tolist()
    assert out["output_ids"] == ref
    assert isinstance(out["text"], str)
    if preset == "tiny":   # decoding on a whole copy per device (the weights resharded once) changes nothing
        from hopchain_jax.infer.generate import Generator
        gen = Generator(ckpt, decode_mesh_shape=(-1, 1, 1), progress=False)
        assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(gen.engine.state))
        assert not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(nnx.state(gen.model)))
        again = gen("How many dots?", [image], greedy=True, max_new_tokens=32)
        assert again["output_ids"] == ref


def test_generate_reports_a_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--json"]) == 2
    assert "config.json" in capsys.readouterr().err
    for flag, value in (("--mesh", "8,1"), ("--decode-mesh", "a,1,1")):
        assert main(["generate", "--model", str(tmp_path), "--prompt", "hi", flag, value]) == 2
        assert f"{flag} '{value}': give three device counts" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--decode-mesh", "3,1,1"]) == 2
    assert "needs 3 devices, have 8" in capsys.readouterr().err   # refused before any weights load

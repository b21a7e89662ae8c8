"""Qwen2.5-VL and Qwen3-VL in JAX against transformers on tiny random checkpoints (float32)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_tiny import IMAGE, image_prompt, random_patches, tiny_hf_model
from hopchain_jax.models.checkpoint import load_pretrained, open_checkpoint, save_pretrained
from hopchain_jax.models.qwen_vl import trainable_filter
from hopchain_jax.models.rope import rope_index
from hopchain_jax.models.sharding import make_mesh
from hopchain_jax.models.vision import prepare_vision_inputs
from hopchain_jax.models.families import FAMILIES

ARCHES = sorted(FAMILIES)   # every registered family passes the same parity tests (models/families.py)


@pytest.fixture(scope="module", params=ARCHES)
def tiny(request, tmp_path_factory):
    hf = tiny_hf_model(request.param, seed=ARCHES.index(request.param))
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, hf, path


def _batch(prompts):
    t = max(len(p) for p in prompts) + 1
    ids = np.zeros((len(prompts), t), np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, t - len(p):], mask[r, t - len(p):] = p, 1
    return ids, mask


def _compare(hf, model, ids, mask, grids=None, pixels=None):
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if grids is not None:
        kwargs.update(pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                      mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)))
        pos_hf, _ = hf.model.get_rope_index(torch.tensor(ids), kwargs["mm_token_type_ids"],
                                            image_grid_thw=torch.tensor(grids), attention_mask=torch.tensor(mask))
    else:
        pos_hf = torch.tensor(np.broadcast_to(np.cumsum(mask, -1) - 1, (3,) + ids.shape).copy())
        kwargs["position_ids"] = pos_hf
    with torch.no_grad():
        ref = hf(**kwargs).logits.numpy()
    pos, _ = rope_index(ids, mask, grids, model.config)
    assert np.array_equal(pos[:, mask.astype(bool)], pos_hf.numpy()[:, mask.astype(bool)])
    vision = None
    if grids is not None:
        vision = {k: jnp.asarray(v) for k, v in prepare_vision_inputs(pixels, grids, model.config).arrays().items()}
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask), vision=vision).logits)
    m = mask.astype(bool)
    assert np.abs(got[m] - ref[m]).max() < 1e-4


def _patch_dim(model):
    return model.config.vision.patch_dim


def test_text_only_logits(tiny):
    _, hf, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    ids, mask = _batch([[1, 5, 9, 33, 7, 2, 100], [1, 44, 45]])
    _compare(hf, model, ids, mask)


def test_single_image_logits(tiny):
    _, hf, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    grids = np.array([[1, 8, 12]])
    ids, mask = _batch([image_prompt(grids[0])])
    _compare(hf, model, ids, mask, grids, random_patches(grids, _patch_dim(model), seed=1))


def test_batched_mixed_prompts_logits(tiny):
    """Two images in one prompt, a text-only prompt and a one-image prompt, left-padded together."""
    _, hf, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    grids = np.array([[1, 4, 8], [1, 6, 4], [1, 8, 8]])
    two = image_prompt(grids[0])[:-2] + image_prompt(grids[1], text_before=(12,))[1:]
    ids, mask = _batch([two, [1, 70, 71, 72, 73, 74, 75, 76, 77], image_prompt(grids[2], text_before=(3,))])
    _compare(hf, model, ids, mask, grids, random_patches(grids, _patch_dim(model), seed=2))


def test_save_round_trip_loads_in_transformers(tiny, tmp_path):
    arch, hf, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    out = save_pretrained(model, tmp_path / "saved", max_shard_bytes=200_000)  # forces a sharded checkpoint
    assert (out / "model.safetensors.index.json").exists()
    keys = set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    if arch == "qwen2_5_vl":  # the hub layout of Qwen2.5-VL checkpoints
        assert any(k.startswith("visual.") for k in keys) and any(k.startswith("model.layers.") for k in keys)
    else:
        assert any(k.startswith("model.language_model.") for k in keys)
    cls = type(hf)
    back = cls.from_pretrained(out).eval()
    for (k1, v1), (k2, v2) in zip(sorted(hf.state_dict().items()), sorted(back.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2), k1
    reloaded = load_pretrained(out, dtype=jnp.float32, progress=False)  # and our own loader reads it back
    ids, mask = _batch([[1, 5, 6, 7]])
    pos, _ = rope_index(ids, mask, None, model.config)
    a = model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask)).logits
    b = reloaded(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask)).logits
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_loads_straight_into_sharded_arrays(tiny):
    _, _, path = tiny
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = load_pretrained(path, dtype=jnp.float32, mesh=mesh, progress=False)
    q = model.language_model.layers.self_attn.q_proj.kernel[...]      # stacked: [L, in, out]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (q.shape[0], 32, 32)
    # each device's block holds exactly the checkpoint's rows/columns of every layer
    hf = open_checkpoint(path)
    for layer in range(q.shape[0]):
        key = [k for k in hf if k.endswith(f"layers.{layer}.self_attn.q_proj.weight")][0]
        full = hf[key].get(key).T
        for shard in q.addressable_shards:
            assert np.array_equal(np.asarray(shard.data)[layer], full[shard.index[1:]])


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path, progress=False)
    _, _, path = tiny
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(FileNotFoundError, match="pickles are never loaded"):
        load_pretrained(tmp_path, progress=False)
    assert open_checkpoint(path)


def test_vision_and_language_freeze_independently(tiny):
    _, _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)

    def names(f):
        return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, f))}

    vis, lang = names(trainable_filter(freeze_language=True)), names(trainable_filter(freeze_vision=True))
    assert vis and lang and not vis & lang
    assert all(n.startswith("visual") for n in vis) and not any(n.startswith("visual") for n in lang)
    assert names(trainable_filter()) == vis | lang


def test_tied_embeddings(tmp_path):
    hf = tiny_hf_model("qwen2_5_vl", seed=5, tie=True)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path, dtype=jnp.float32, progress=False)
    assert model.lm_head is None
    ids, mask = _batch([[1, 5, 6, 7, 8]])
    _compare(hf, model, ids, mask)

"""The batched generation engine: greedy parity with transformers, sharding, sampling, bucketing."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_tiny import IMAGE, image_prompt, random_patches, tiny_hf_model
from hopchain_jax.infer.engine import InferenceEngine, Request, SamplingParams
from hopchain_jax.models.checkpoint import load_pretrained
from hopchain_jax.models.sharding import make_mesh

ARCHES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module", params=ARCHES)
def tiny(request, tmp_path_factory):
    hf = tiny_hf_model(request.param, seed=10 + ARCHES.index(request.param))
    path = tmp_path_factory.mktemp("gen-" + request.param)
    hf.save_pretrained(path)
    return hf, path


def _requests(model):
    grid = np.array([[1, 8, 12]])
    pixels = random_patches(grid, model.config.vision.patch_dim, seed=3)
    return [Request(image_prompt(grid[0]), pixels, grid), Request([1, 7, 8, 9, 10])], grid, pixels


def _hf_greedy(hf, requests, grid, pixels, n_new=32):
    t = max(len(r.prompt_ids) for r in requests)
    ids = np.zeros((len(requests), t), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(requests):
        ids[i, t - len(r.prompt_ids):], mask[i, t - len(r.prompt_ids):] = r.prompt_ids, 1
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grid),
                          mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)),
                          max_new_tokens=n_new, do_sample=False, pad_token_id=0)
    result = []
    for row in out[:, t:].numpy().tolist():
        if 2 in row:  # eos: transformers pads after it
            row = row[:row.index(2) + 1]
        result.append(row)
    return result


def test_greedy_matches_transformers_sharded_and_not(tiny):
    hf, path = tiny
    outputs = {}
    for name, mesh in (("single", None), ("mesh", make_mesh(data=2, fsdp=2, tensor=2))):
        model = load_pretrained(path, dtype=jnp.float32, mesh=mesh, progress=False)
        requests, grid, pixels = _requests(model)
        engine = InferenceEngine(model, mesh=mesh, length_bucket=16, decode_chunk=8)
        outs = engine.generate(requests, SamplingParams(temperature=0, max_new_tokens=32))
        outputs[name] = [o.token_ids for o in outs]
        assert all(max(o.logprobs) <= 0 for o in outs)
    reference = _hf_greedy(hf, requests, grid, pixels)
    assert outputs["single"] == reference
    assert outputs["mesh"] == outputs["single"]
    assert any(len(r) == 32 for r in reference)


def test_sampling_groups_seeds_and_limits(tiny):
    _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    engine = InferenceEngine(model, length_bucket=16, decode_chunk=4)
    requests, _, _ = _requests(model)
    requests[1].max_new_tokens = 5
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=12, n=4, seed=7)
    outs = engine.generate(requests, params)
    assert [(o.prompt_index, o.sample_index) for o in outs] == [(i, j) for i in range(2) for j in range(4)]
    assert all(len(o.token_ids) <= (5 if o.prompt_index == 1 else 12) for o in outs)
    assert all(o.finish_reason in ("eos", "length") and len(o.logprobs) == len(o.token_ids) for o in outs)
    assert all(lp <= 0 for o in outs for lp in o.logprobs)
    again = engine.generate(requests, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in again]
    other = engine.generate(requests, SamplingParams(**{**params.__dict__, "seed": 8}))
    assert [o.token_ids for o in outs] != [o.token_ids for o in other]
    assert len({tuple(o.token_ids) for o in outs if o.prompt_index == 0}) > 1  # the group is diverse
    greedy = engine.generate(requests, SamplingParams(temperature=0, max_new_tokens=12))
    top1 = engine.generate(requests, SamplingParams(temperature=0.7, top_k=1, max_new_tokens=12))
    assert [o.token_ids for o in greedy] == [o.token_ids for o in top1]


def test_bucketed_shapes_do_not_recompile(tiny):
    _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    engine = InferenceEngine(model, length_bucket=16, decode_chunk=4)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    engine.generate([Request([1, 5, 6])], params)
    before = InferenceEngine._prefill._cache_size()
    engine.generate([Request([1, 5, 6, 7, 8, 9, 10, 11, 12])], params)  # same length bucket
    engine.generate([Request([1, 5]), Request([1, 6, 7])], params)  # batch 2 -> new bucket
    assert InferenceEngine._prefill._cache_size() == before + 1


def test_image_token_mismatch_is_reported(tiny):
    _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    requests, grid, pixels = _requests(model)
    bad = Request(list(requests[0].prompt_ids)[:-8], pixels, grid)
    with pytest.raises(ValueError, match="expand the image tokens"):
        InferenceEngine(model).generate([bad])


def test_stop_strings_cut_text_and_tokens():
    from configs.models import PRESETS
    from flax import nnx

    from hopchain_jax.models.qwen_vl import QwenVL
    from hopchain_jax.models.tokenizer import load_tokenizer
    tok = load_tokenizer()
    model = QwenVL(PRESETS["tiny"](), rngs=nnx.Rngs(4))
    engine = InferenceEngine(model, tok, length_bucket=16, decode_chunk=4)
    prompt = tok("Count the dots.", add_special_tokens=False)["input_ids"]
    free = engine.generate([Request(prompt)], SamplingParams(temperature=0, max_new_tokens=24))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 24
    piece = tok.decode(free.token_ids[5:7])
    assert piece.strip(), "need a visible stop string"
    stopped = engine.generate([Request(prompt)], SamplingParams(temperature=0, max_new_tokens=24, stop=(piece,)))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.find(piece)]
    assert stopped.token_ids == free.token_ids[:len(stopped.token_ids)] and len(stopped.token_ids) <= 7

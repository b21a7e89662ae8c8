"""The generation engine: greedy parity with transformers (sharded, refilled, in the rollout layout),
sampling independent of the schedule, prefix sharing, bounded cache reads, slot refill and compaction,
no collectives in the replicated decode, bucketing."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hopchain_jax.configs.models import PRESETS
from hf_tiny import IMAGE, VEND, VIDEO, VSTART, image_prompt, random_patches, tiny_hf_model
from hopchain_jax.infer.engine import ROW_FIELDS, InferenceEngine, Request, SamplingParams
from hopchain_jax.infer import sampling
from hopchain_jax.infer.sampling import SamplerWork
from hopchain_jax.models.checkpoint import load_pretrained
from hopchain_jax.models.qwen_vl import QwenVL
from hopchain_jax.models.sharding import make_mesh
from hopchain_jax.models.families import FAMILIES

ARCHES = sorted(FAMILIES)   # every registered family passes the same parity tests (models/families.py)


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
                          max_new_tokens=n_new, do_sample=False, pad_token_id=0,
                          suppress_tokens=[IMAGE, VIDEO, VSTART, VEND, VEND + 1])   # what our engine never samples
    result = []
    for row in out[:, t:].numpy().tolist():
        if 2 in row:  # eos: transformers pads after it
            row = row[:row.index(2) + 1]
        result.append(row)
    return result


# Layouts beside one device and the (2, 2, 2) mesh, one per architecture (each layout costs a compile;
# neither depends on the architecture): one decode slot (the second prompt waits for the first to finish
# and is prefilled into the freed slot), and weights resharded from FSDP to the replicated rollout layout.
EXTRA_LAYOUT = {"qwen2_5_vl": lambda: ("one_slot", None, {"max_slots": 1}),
                "qwen3_vl": lambda: ("rollout", make_mesh(), {"rollout_mesh": make_mesh(data=-1, fsdp=1)})}


def test_greedy_matches_transformers_sharded_and_not(tiny):
    """Greedy tokens equal transformers' on one device, a (2, 2, 2) mesh and the arch's EXTRA_LAYOUT."""
    hf, path = tiny
    outputs = {}
    extra = EXTRA_LAYOUT[hf.config.model_type]()
    for name, mesh, kw in (("single", None, {}), ("mesh", make_mesh(data=2, fsdp=2, tensor=2), {}), extra):
        model = load_pretrained(path, dtype=jnp.float32, mesh=mesh, progress=False)
        requests, grid, pixels = _requests(model)
        engine = InferenceEngine(model, mesh=mesh, length_bucket=16, kv_bucket=16, decode_chunk=8, **kw)
        outs = engine.generate(requests, SamplingParams(temperature=0, max_new_tokens=32))
        outputs[name] = [o.token_ids for o in outs]
        assert all(max(o.logprobs) <= 0 for o in outs)
    reference = _hf_greedy(hf, requests, grid, pixels)
    assert outputs["single"] == reference
    for name in ("mesh", extra[0]):
        assert outputs[name] == outputs["single"], name
    assert any(len(r) == 32 for r in reference)


def test_sampling_groups_seeds_and_limits(tiny, monkeypatch):
    _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    engine = InferenceEngine(model, length_bucket=16, kv_bucket=16, decode_chunk=4)
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
    # Qwen's default filter (top_k 20 + top_p 0.8) takes the candidate table; bisection samples the same
    qwen = SamplingParams(temperature=1.0, top_k=20, top_p=0.8, max_new_tokens=12, n=2, seed=3)
    assert SamplerWork.of(1.0, 20, 0.8).candidates
    table = engine.generate(requests, qwen)
    monkeypatch.setattr(sampling, "CANDIDATE_MAX", 0)
    assert not SamplerWork.of(1.0, 20, 0.8).candidates
    assert [o.token_ids for o in table] == [o.token_ids for o in engine.generate(requests, qwen)]


def test_bucketed_shapes_do_not_recompile(tiny):
    _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    engine = InferenceEngine(model, length_bucket=16, kv_bucket=16, decode_chunk=4)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    programs = (InferenceEngine._prefill, InferenceEngine._decode, InferenceEngine._insert)
    engine.generate([Request([1, 5, 6])], params)
    before = [f._cache_size() for f in programs]
    engine.generate([Request([1, 5, 6, 7, 8, 9, 10, 11, 12])], params)  # same length buckets
    assert [f._cache_size() for f in programs] == before
    engine.generate([Request([1, 5]), Request([1, 6, 7])], params)  # batch 2 -> new buckets
    assert InferenceEngine._prefill._cache_size() == before[0] + 1


def test_image_token_mismatch_is_reported(tiny):
    _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    requests, grid, pixels = _requests(model)
    bad = Request(list(requests[0].prompt_ids)[:-8], pixels, grid)
    with pytest.raises(ValueError, match="expand the image tokens"):
        InferenceEngine(model).generate([bad])


def test_stop_strings_cut_text_and_tokens():
    from hopchain_jax.configs.models import PRESETS
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


# -- scheduling: tiny text model (real vocabulary), no transformers ---------------------------------------
@pytest.fixture(scope="module")
def text_model():
    return QwenVL(PRESETS["tiny"](), rngs=nnx.Rngs(4))


def _long_tail(n: int, seed: int = 0, median: float = 6) -> list[Request]:
    rng = np.random.default_rng(seed)
    limits = np.clip(rng.lognormal(np.log(median), 0.9, n).astype(int), 2, 60)
    return [Request(list(rng.integers(10, 5000, size=rng.integers(3, 20))), max_new_tokens=int(m)) for m in limits]


def _engine(model, **kw):
    return InferenceEngine(model, **{"length_bucket": 16, "kv_bucket": 16, "decode_chunk": 4, **kw})


def test_samples_do_not_depend_on_pool_size_order_or_layout(text_model):
    """Each sequence draws from its own keys: a pool holding everything, one slot refilled 18 times in
    FIFO order, 8 devices in the replicated rollout layout (8 slots, refilled), and a tensor-parallel
    layout (logits split 4 ways over the vocabulary, drawn by vocab_sharded_draw) give the same samples."""
    requests = _long_tail(6)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=40, n=3, seed=5)
    runs = {}
    for name, kw in (("all", {}), ("one", {"max_slots": 1, "admission": "fifo"}),
                     ("rollout", {"mesh": make_mesh(), "rollout_mesh": make_mesh(data=-1, fsdp=1), "max_slots": 8}),
                     ("tensor", {"mesh": make_mesh(), "rollout_mesh": make_mesh(data=2, fsdp=1, tensor=4)})):
        engine = _engine(text_model, **kw)
        assert callable(engine._draw) == (name == "tensor"), name
        outs = engine.generate(requests, params)
        runs[name] = (outs, engine.last_stats)
    ref = runs["all"][0]
    assert [(o.prompt_index, o.sample_index) for o in ref] == [(i, j) for i in range(6) for j in range(3)]
    assert len({tuple(o.token_ids) for o in ref if o.prompt_index == 0}) > 1
    for name, (outs, stats) in runs.items():
        assert [o.token_ids for o in outs] == [o.token_ids for o in ref], name
        np.testing.assert_allclose(np.concatenate([o.logprobs for o in outs]),
                                   np.concatenate([o.logprobs for o in ref]), atol=1e-5, err_msg=name)
        assert stats.useful_tokens + stats.first_tokens == sum(len(o.token_ids) for o in outs)
    assert runs["one"][1].prefill_rows == 18 and runs["one"][1].pool_rows == 1
    assert runs["all"][1].prefill_rows == 6          # one prefill row per prompt, shared by its 3 samples


def test_per_request_settings_mix_in_one_call_without_recompiling(text_model):
    """Requests with their own settings (greedy, nucleus, top-k, n) share one call and sample exactly as
    they do in another call, at another index, beside others (their keys depend on their own seed and
    prompt only); the call's settings still serve the rest; new temperature / top-k / top-p values
    compile no new decode program."""
    requests = _long_tail(5, seed=3)
    own = [SamplingParams(temperature=0, max_new_tokens=12),
           SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12, n=2, seed=11),
           SamplingParams(temperature=0.7, top_k=5, max_new_tokens=12, seed=12),
           None,
           SamplingParams(temperature=1.3, top_k=40, top_p=0.8, max_new_tokens=12, n=3, seed=13)]
    call = SamplingParams(temperature=1.0, top_k=30, top_p=0.9, max_new_tokens=12, n=2, seed=4)
    mixed = [dataclasses.replace(r, params=p) for r, p in zip(requests, own)]
    engine = _engine(text_model)
    outs = engine.generate(mixed, call)
    assert [(o.prompt_index, o.sample_index) for o in outs] == [
        (i, j) for i, p in enumerate(own) for j in range((p or call).n)]
    assert len({tuple(o.token_ids) for o in outs if o.prompt_index == 4}) > 1   # n=3 distinct draws
    # the same requests in reverse, without prompt 3, after a top_k=1 copy of the greedy one
    top1 = dataclasses.replace(requests[0], params=SamplingParams(temperature=0.6, top_k=1, max_new_tokens=12, n=2))
    order = [4, 2, 1, 0]
    other = engine.generate([top1] + [mixed[i] for i in order], SamplingParams(temperature=0.5, seed=1))
    for k, i in enumerate(order, start=1):   # prompt k of `other` is prompt i of `mixed`
        mine, there = ([o for o in xs if o.prompt_index == j] for xs, j in ((outs, i), (other, k)))
        assert [o.token_ids for o in there] == [o.token_ids for o in mine], i
        np.testing.assert_allclose(np.concatenate([o.logprobs for o in there]),
                                   np.concatenate([o.logprobs for o in mine]), atol=1e-5)
    assert other[0].token_ids == other[1].token_ids == outs[0].token_ids   # top_k = 1: the greedy sequence
    # the call's settings: prompt 3 samples as in a call with the call's settings for everyone
    plain = engine.generate(requests, call)
    assert [o.token_ids for o in outs if o.prompt_index == 3] == [o.token_ids for o in plain if o.prompt_index == 3]
    # settings are values of the program: other temperatures / top-k / top-p run the same compiled chunk
    rng = np.random.default_rng(0)
    sizes = []
    for trial in range(3):
        rows = {k: engine._put(np.zeros(8, dtype), "rows") for k, dtype in ROW_FIELDS.items()}
        rows.update({"temperature": engine._put(rng.uniform(0.1, 2, 8).astype(np.float32), "rows"),
                     "top_k": engine._put(rng.integers(0, 100, 8).astype(np.int32), "rows"),
                     "top_p": engine._put(rng.uniform(0.1, 1, 8).astype(np.float32), "rows")})
        engine._decode(engine.state, engine._empty_cache(8, 32), rows, 4, 32, SamplerWork())
        sizes.append(InferenceEngine._decode._cache_size())
    assert sizes[1:] == sizes[:1] * 2


def test_prefix_sharing_copies_the_prompt_cache_into_every_sample(tiny):
    """n samples of an image prompt prefilled once equal the same samples prefilled one by one."""
    _, path = tiny
    model = load_pretrained(path, dtype=jnp.float32, progress=False)
    requests, _, _ = _requests(model)
    params = SamplingParams(temperature=1.0, max_new_tokens=10, n=4, seed=2)
    shared, alone = _engine(model), _engine(model, max_slots=1)
    a, b = shared.generate(requests, params), alone.generate(requests, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    # log-probs see every cache entry (sampled tokens alone barely move when one is wrong)
    np.testing.assert_allclose(np.concatenate([o.logprobs for o in a]), np.concatenate([o.logprobs for o in b]),
                               atol=1e-4)
    assert shared.last_stats.prefill_rows == 2 and alone.last_stats.prefill_rows == 8
    one = shared.generate(requests, SamplingParams(temperature=1.0, max_new_tokens=10, n=1, seed=2))
    assert [o.token_ids for o in one] == [o.token_ids for o in a if o.sample_index == 0]


def _dot_shapes(jaxpr) -> list[tuple]:
    """Operand shapes of every dot_general in a closed jaxpr, nested jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.extend(tuple(v.aval.shape) for v in eqn.invars)
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (list, tuple)) else [param]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(_dot_shapes(inner))
    return out


def test_prefill_at_prompt_length_and_decode_reads_the_filled_part(text_model):
    engine = _engine(text_model, decode_chunk=8)
    outs = engine.generate([Request([1, 5, 6, 7, 8])], SamplingParams(temperature=0, max_new_tokens=120))
    stats = engine.last_stats
    assert len(outs[0].token_ids) == 120 and stats.cache_len == 128
    assert stats.prefill_padded_tokens == 16                       # one row x the prompt's 16-token bucket
    assert min(stats.read_lengths) == 16 and max(stats.read_lengths) == 128
    assert sum(c for r, c in stats.read_lengths.items() if r < 64) >= 5   # early chunks read a fraction
    # the compiled decode step attends over `read` slots, never over the whole cache
    cache = engine._empty_cache(1, 256)
    rows = {k: jnp.zeros(1, dtype) for k, dtype in ROW_FIELDS.items()}
    jaxpr = jax.make_jaxpr(InferenceEngine._decode, static_argnums=(0, 4, 5, 6))(
        engine, engine.state, cache, rows, 2, 48, SamplerWork(draw=False, top_k=False, top_p=False))
    key_dims = [shape for shape in _dot_shapes(jaxpr.jaxpr) if len(shape) == 4 and shape[0] == 1]
    assert key_dims and all(256 not in shape for shape in key_dims) and any(48 in shape for shape in key_dims)


def test_refill_and_compaction_keep_the_pool_busy(text_model):
    """A long-tailed workload (limits 2..60 tokens, median 16): refilling slots as sequences end and
    compacting the pool in the drain wastes few row-steps; one static batch of every request wastes most."""
    requests = _long_tail(40, seed=1, median=16)
    params = SamplingParams(temperature=0, max_new_tokens=60)
    engine = _engine(text_model, max_slots=8)
    outs = engine.generate(requests, params)
    stats = engine.last_stats
    lengths = [len(o.token_ids) for o in outs]
    assert lengths == [r.max_new_tokens for r in requests]       # no EOS at these lengths: limits rule
    static_waste = 1 - (sum(lengths) - len(lengths)) / (64 * (max(lengths) - 1))
    assert static_waste > 0.75
    assert stats.wasted_fraction < 0.1, stats.as_dict()
    assert stats.compactions >= 1 and stats.prefill_calls >= 2
    fifo = _engine(text_model, max_slots=8, admission="fifo")
    fifo.generate(requests, params)
    assert fifo.last_stats.wasted_fraction > stats.wasted_fraction   # longest-first drains faster


def test_replicated_rollout_decode_has_no_collectives(text_model):
    """Weights resharded to the rollout layout are whole on every device, the batch is split over all 8,
    and the compiled decode chunk communicates nothing; decoding from the FSDP layout all-gathers."""
    from hopchain_jax.models.sharding import shard_model
    mesh = make_mesh()
    model = shard_model(QwenVL(PRESETS["tiny"](), rngs=nnx.Rngs(4)), mesh)
    collectives = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
    texts = {}
    for name, rollout in (("rollout", make_mesh(data=-1, fsdp=1)), ("fsdp", None)):
        engine = _engine(model, mesh=mesh, rollout_mesh=rollout)
        if rollout is not None:
            assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(engine.state))
        cache = engine._empty_cache(16, 64)
        assert engine.batch_shards(16) == 8
        rows = {k: engine._put(np.zeros(16, dtype), "rows") for k, dtype in ROW_FIELDS.items()}
        # the whole sampler (draw, top-k and top-p searches on per-row settings) adds no collective either
        texts[name] = InferenceEngine._decode.lower(engine, engine.state, cache, rows, 4, 32,
                                                    SamplerWork()).compile().as_text()
        keep = engine._per_shard(np.zeros((8, 1), np.int32), 16)
        compact = InferenceEngine._compact.lower(engine, cache, keep).compile().as_text()
        assert not [c for c in collectives if c in compact], name
    assert not [c for c in collectives if c in texts["rollout"]]
    assert "all-gather" in texts["fsdp"]

"""Training at scale, checked on 8 simulated devices: FSDP shards parameters and optimizer state,
float32 master weights take small updates, frozen parameters stay out of the backward, gradient
accumulation and remat leave the step's result unchanged, the LM head runs under shard_map, and the
stacked layers compile one layer body."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hopchain_jax.configs.models import PRESETS, tiny
from hopchain_jax.configs.train import PRESETS as TRAIN_PRESETS
from hopchain_jax.models.qwen_vl import QwenVL, init_sharded
from hopchain_jax.models.sharding import make_mesh, per_device_bytes, sharded_fraction, state_shardings
from hopchain_jax.rl.config import TrainConfig
from hopchain_jax.rl.sequences import LENGTH_BUCKETS, Prompt, length_bucket_for, pack, pack_micro
from hopchain_jax.rl.update import Updater


def _bytes_per_device(abstract, shardings) -> tuple[int, int]:
    """(max bytes on one device, total bytes) of an abstract tree placed by `shardings`."""
    total = per = 0
    for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += x.size * x.dtype.itemsize
        per += int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
    return per, total


@pytest.mark.parametrize("preset", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_real_shapes_shard_eight_ways_under_fsdp(preset):
    """At the 3B/7B shapes (abstract, nothing allocated): each device holds ~1/8 of the weights."""
    mesh = make_mesh(data=1, fsdp=8, tensor=1)
    abstract = nnx.state(nnx.eval_shape(lambda: QwenVL(PRESETS[preset](), dtype=jnp.bfloat16,
                                                       param_dtype=jnp.float32, rngs=nnx.Rngs(0))))
    per, total = _bytes_per_device(abstract, state_shardings(abstract, mesh))
    assert per <= total / 8 * 1.02, f"{preset}: {per / 2**30:.2f} GiB per device of {total / 2**30:.2f} GiB"


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(data=1, fsdp=8, tensor=1)


def _batch(mc, rows=8, seed=0, image=True):
    rng = np.random.default_rng(seed)
    grid = np.array([[1, 4, 6]])
    img = [1, 5, mc.vision_start_token_id] + [mc.image_token_id] * 6 + [mc.vision_end_token_id, 9]
    prompts = [Prompt(np.array(img), rng.normal(size=(24, mc.vision.patch_dim)).astype(np.float32), grid)
               if image else Prompt(np.array([1, 2, 3, 4]), None, None),
               Prompt(np.array([1, 7, 8, 9, 10]), None, None)]
    prompt_of_row = [0] * (rows // 2) + [1] * (rows // 2)
    responses = [list(rng.integers(10, 500, size=rng.integers(3, 12))) for _ in prompt_of_row]
    return prompts, prompt_of_row, responses


def _updater(mesh, **kw):
    mc = tiny(vocab_size=512)
    cfg = TrainConfig(**{"prompts_per_step": 2, "group_size": 4, "minibatches": 1, **kw})
    model = init_sharded(mc, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), mesh=mesh)
    return Updater(model, cfg, mesh), mc


def test_parameters_and_optimizer_state_are_fsdp_sharded(mesh):
    up, _ = _updater(mesh)
    for name, tree in (("parameters", up.params), ("optimizer state", up.opt_state)):
        split, total = sharded_fraction(tree)
        assert split >= 0.9 * total, f"{name}: only {split}/{total} bytes sharded"
        per = per_device_bytes(tree)
        assert len(per) == 8 and max(per.values()) <= 1.15 * total / 8, (name, per, total)
    # Adam's moments follow their parameters' layout
    q = up.params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"][...]
    mu = [x for p, x in jax.tree_util.tree_leaves_with_path(up.opt_state)
          if "mu" in jax.tree_util.keystr(p) and "q_proj" in jax.tree_util.keystr(p) and "kernel" in
          jax.tree_util.keystr(p)]
    assert mu and mu[0].sharding.spec == q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def test_engine_reads_trainer_weights_in_place(mesh):
    from hopchain_jax.infer.engine import InferenceEngine
    up, _ = _updater(mesh, dtype="float32", param_dtype="float32")
    engine = InferenceEngine(up.model(), None, mesh=mesh)
    for a, b in zip(jax.tree.leaves(engine.state), jax.tree.leaves(nnx.state(up.model()))):
        assert a is b     # the same arrays, not a resharded copy


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_small_lr_step_changes_master_weights(mesh, param_dtype):
    """The presets' precision (bf16 compute) at their lr (1e-6): float32 masters take the update;
    bfloat16 masters would round almost all of it away (why the presets keep float32)."""
    preset = TRAIN_PRESETS["qwen2_5_vl_7b"]
    up, mc = _updater(mesh, dtype=preset.dtype, param_dtype=param_dtype, lr=preset.lr, warmup_steps=0,
                      weight_decay=0.0)
    prompts, rows, responses = _batch(mc)
    batch = up.put_batch(pack(prompts, rows, responses, mc).arrays())
    before = [np.asarray(x, np.float32) for x in jax.tree.leaves(up.params)]
    old, _ = up.score(batch)
    m = up.rl_step(batch, old, np.array([1, -1, .5, -.5, 1, -1, .5, -.5], np.float32))
    assert float(m["skipped"]) == 0
    after = [np.asarray(x, np.float32) for x in jax.tree.leaves(up.params)]
    changed = sum(int((a != b).sum()) for a, b in zip(before, after)) / sum(a.size for a in before)
    norms = [(a != b).mean() for (p, _), a, b in zip(jax.tree_util.tree_leaves_with_path(up.params), before, after)
             if "norm" in jax.tree_util.keystr(p) and "visual" not in jax.tree_util.keystr(p)]
    if param_dtype == "float32":
        # Adam's first step moves every weight with a nonzero gradient by ~lr; the embedding rows of
        # tokens not in the batch have none, so count the layers (and norms) that all take part.
        layer_changed = [(a != b).mean() for (p, _), a, b in
                         zip(jax.tree_util.tree_leaves_with_path(up.params), before, after)
                         if "layers" in jax.tree_util.keystr(p)]
        assert min(layer_changed) > 0.9 and min(norms) > 0.9, (layer_changed, norms)
    else:
        assert changed < 0.1 and max(norms) == 0.0, (changed, norms)


def _step_dots(up, batch, old, adv) -> int:
    """Matmuls in the traced RL step (forward + backward)."""
    jaxpr = jax.make_jaxpr(up._rl_step_impl)(up.params, up.opt_state, up.frozen, batch, old, adv, None)
    return len(re.findall(r"dot_general", str(jaxpr)))


def test_frozen_tower_has_no_optimizer_state_and_no_backward(mesh):
    adv = jnp.asarray(np.array([1, -1, .5, -.5, 1, -1, .5, -.5], np.float32))
    dots = {}
    for freeze in (True, False):
        up, mc = _updater(mesh, freeze_vision=freeze)
        prompts, rows, responses = _batch(mc)
        batch = up.put_batch(pack(prompts, rows, responses, mc).arrays())
        old, _ = up.score(batch)
        dots[freeze] = _step_dots(up, batch, old, adv)
        if freeze:
            assert "visual" not in up.params and "visual" in up.frozen
            assert not any("visual" in jax.tree_util.keystr(p)
                           for p, _ in jax.tree_util.tree_leaves_with_path(up.opt_state))
            vis_before = [np.asarray(v) for v in jax.tree.leaves(up.frozen)]
            m = up.rl_step(batch, old, adv)
            assert float(m["skipped"]) == 0 and np.isfinite(float(m["grad_norm"]))
            assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(vis_before, jax.tree.leaves(up.frozen)))
    # the tower's matmuls (patch embed, qkv, proj, 3 MLP, 2 merger, 2 attention per block) run forward only:
    # a trained tower adds two backward matmuls for most of them
    assert dots[True] < dots[False] - 10, dots


def test_gradient_accumulation_remat_and_head_impl_leave_the_step_unchanged(mesh):
    """The same SAPO step with micro-batches, remat policies, and the no-recompute fused head
    (kernels/fused_head.py, head_impl="fused_forward", with the config's chunking: 16-row chunks, one
    vocabulary tile)."""
    results = []
    fused = dict(head_impl="fused_forward", head_chunk_tokens=16, head_chunk_vocab=-1)
    for accum, remat, head in ((1, "none", {}), (2, "full", {}), (4, "dots", fused)):
        up, mc = _updater(mesh, grad_accum=accum, remat=remat, **head)
        prompts, rows, responses = _batch(mc, image=True)
        batch = up.put_batch(pack_micro(prompts, rows, responses, mc, accum).arrays())
        assert batch["input_ids"].shape[0] == accum
        old, _ = up.score(batch)
        m = up.rl_step(batch, old, np.array([1, -1, .5, -.5, 1, -1, .5, -.5], np.float32))
        results.append((float(m["loss"]), float(m["grad_norm"]), [np.asarray(x) for x in jax.tree.leaves(up.params)]))
    (l0, g0, p0), *rest = results
    for loss, gnorm, params in rest:
        assert loss == pytest.approx(l0, rel=1e-5) and gnorm == pytest.approx(g0, rel=1e-4)
        assert max(np.abs(a - b).max() for a, b in zip(p0, params)) < 1e-6


def test_head_config_is_validated_and_round_trips():
    cfg = TrainConfig(head_impl="fused_forward", head_chunk_tokens=256, head_chunk_vocab=-1,
                      head_dw_accum="float32")
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    old = {k: v for k, v in cfg.to_json().items() if not k.startswith("head_") or k == "head_impl"}
    assert TrainConfig.from_json(old).head_chunk_vocab == 0      # configs written before these fields
    for bad in (dict(head_chunk_tokens=-1), dict(head_chunk_vocab=-2), dict(head_dw_accum="bf16"),
                dict(head_impl="fused_forward", kl_coef=0.1)):
        with pytest.raises(ValueError, match="head_"):
            TrainConfig(**bad)


def test_sharded_lm_head_in_the_compiled_step(mesh):
    up, mc = _updater(mesh)
    prompts, rows, responses = _batch(mc)
    batch = up.put_batch(pack(prompts, rows, responses, mc).arrays())
    jaxpr = str(jax.make_jaxpr(up._score_impl)(up.params, up.frozen, batch))
    assert "shard_map" in jaxpr


def test_layers_compile_as_one_scanned_body():
    """A 2-layer and a 6-layer decoder compile to programs of about the same size (scan, not unrolled)."""
    import dataclasses
    sizes = []
    for layers in (2, 6):
        mc = tiny(vocab_size=512)
        mc = dataclasses.replace(mc, text=dataclasses.replace(mc.text, num_hidden_layers=layers))
        model = QwenVL(mc, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        ids = jnp.zeros((2, 16), jnp.int32)

        def fwd(state):
            m = nnx.merge(graphdef, state)
            return m(ids, jnp.zeros((3, 2, 16), jnp.int32), jnp.ones((2, 16), bool)).logits
        sizes.append(len(re.findall(r"dot_general", str(jax.make_jaxpr(fwd)(state)))))
    assert sizes[0] == sizes[1], sizes


def test_length_buckets_are_a_fixed_small_set():
    lengths = {length_bucket_for(n) for n in range(1, 4097)}
    assert lengths <= set(LENGTH_BUCKETS) and len(lengths) <= 8


def test_padding_to_a_fixed_shape_keeps_the_log_probs(mesh):
    """pack_micro's min_length / min_patches (TrainConfig.pad_to_tokens / pad_to_patches): batches of
    different natural sizes get one shape, and the extra padding (tokens and tower patches) changes no
    log-prob of a real token."""
    up, mc = _updater(mesh, grad_accum=2)
    prompts, rows, responses = _batch(mc, image=True)
    natural = pack_micro(prompts, rows, responses, mc, 2)
    padded = pack_micro(prompts, rows, responses, mc, 2, min_length=200, min_patches=100)
    text_only = pack_micro(prompts[1:], [0] * 8, responses, mc, 2, min_length=200, min_patches=100)
    assert natural.input_ids.shape[-1] == 128 and natural.vision["pixel_values"].shape[1] == 64
    for batch in (padded, text_only):   # 200 tokens -> the 256 bucket; 100 patches -> 128 (a power of two)
        assert batch.input_ids.shape == (2, 4, 256) and batch.vision["pixel_values"].shape[:2] == (2, 128)
    a, _ = up.score(up.put_batch(natural.arrays()))
    b, _ = up.score(up.put_batch(padded.arrays()))
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b[:, :a.shape[1]], a, rtol=1e-5, atol=1e-5)
    assert not b[:, a.shape[1]:].any()       # nothing to score past the real tokens
    with pytest.raises(ValueError, match="pad_to_tokens"):
        TrainConfig(pad_to_tokens=-1)

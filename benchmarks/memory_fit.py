"""Do the GPU presets fit? Ahead-of-time compiled memory of the RL update, the scoring forward and the
rollout decode, from abstract inputs only (nothing is allocated, so 3B/7B run on a laptop's CPU).

  python benchmarks/memory_fit.py                                    # both Qwen2.5-VL presets, mesh (1, 8, 1)
  python benchmarks/memory_fit.py --presets qwen2_5_vl_7b --programs decode --cache-len 6144
  python benchmarks/memory_fit.py --mesh 1,4,2 --json runs/memory_fit.json
  python benchmarks/memory_fit.py --presets qwen2_5_vl_3b --mesh 1,1,1 --budget-gb 139   # one device
  python benchmarks/memory_fit.py --small                            # the tiny model, tiny shapes (tests)

Every program is `jax.jit(...).lower(*abstract_args).compile().memory_analysis()`, where the abstract
arguments are jax.ShapeDtypeStructs carrying the NamedShardings the run would give the real arrays:

  update  Updater._rl_step_impl: one optimizer step over one minibatch, grad_accum micro-batches of
          --micro-rows rows of --seq tokens (SAPO loss, float32 gradient accumulation, AdamW), params and
          optimizer state donated, out_shardings as Updater builds them.
  score   Updater._score_impl on the same batch (the old log-probs before the updates).
  decode  InferenceEngine._decode (the engine's own jitted method): one chunk of --decode-steps steps over
          the decode pool (rollout_slots, or prompts_per_step x group_size rows) with a KV cache of
          --cache-len slots, all of them read (the worst case), on the rollout copy of the weights
          (floats cast to the compute dtype, in the preset's rollout_mesh layout); cache donated.
  prefill InferenceEngine._prefill: one prefill call at prompt length cache_len - max_new_tokens, as many
          prompt rows as the engine's prefill_tokens budget allows, one image per prompt.
  insert  InferenceEngine._insert: those prompt rows copied into group_size decode slots each.

The model is built with nnx.eval_shape, its leaves given the sharding rules' shardings; the library's
own Updater and InferenceEngine take such an abstract model as they take a real one (the optimizer
state and the bf16 rollout copy are then abstract too), so what is compiled is exactly their jitted
methods.

Images: every prompt has one image resized by the processor's smart_resize to max_pixels (--image-hw,
default 1024x1024 -> grid (1, 70, 70), 1225 LM tokens, 8192 padded patches); a micro-batch of 8 rows of a
group of 8 is one prompt, so it carries --images-per-micro (default 1) images.

Memory figures are per device (the compiled program is the SPMD-partitioned per-device one; the
"args check" column compares argument bytes with the sum of sharding.shard_shape sizes of the kept
inputs). total = argument + output + temp - alias (alias: outputs written into donated inputs).
Rollout programs at bf16 also get a "GPU est" column: the CPU compiler turns bf16 dots into float32 ones
and hoists the float32 casts of all weights out of the layer loop, so their temp holds a float32 copy of
every bf16 weight (2x the weights; a GPU computes bf16 dots natively). The estimate replaces the temp by
half the temp of the same program compiled in float32, which makes no such copy.
"fits" compares total (plus, for the co-residency lines, the arrays alive beside the program) with
--budget-gb (1 GB = 1e9 bytes). The CPU compiler's buffer assignment is not the GPU's (fusion, bf16
dot handling and collective scheduling differ), so treat these as estimates within tens of percent.
"""
from __future__ import annotations

import math
import os
import sys



def _simulated_devices(argv) -> int:
    """Devices to simulate: the product of an explicit --mesh of positive sizes (e.g. 1,1,1 -> 1), else 8."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--mesh=") else (
            argv[i + 1] if arg == "--mesh" and i + 1 < len(argv) else None)
        if value is not None:
            try:
                sizes = [int(v) for v in value.split(",")]
            except ValueError:
                return 8   # argparse / make_mesh report the bad value
            if sizes and all(v > 0 for v in sizes):
                return math.prod(sizes)
    return 8


if "jax" not in sys.modules:   # the device count must be set before JAX initialises its backends
    _flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in _flags:
        os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count="
                                   f"{_simulated_devices(sys.argv[1:])}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hopchain_jax.configs import models as model_presets  # noqa: E402
from hopchain_jax.configs import train as train_presets  # noqa: E402
from hopchain_jax.infer.engine import BATCH_BUCKETS, ROW_FIELDS, InferenceEngine  # noqa: E402
from hopchain_jax.infer.sampling import SamplerWork  # noqa: E402
from hopchain_jax.models import image_processor as improc  # noqa: E402
from hopchain_jax.models.config import QwenVLConfig  # noqa: E402
from hopchain_jax.models.qwen_vl import KVCache, QwenVL, cache_bits_dtype  # noqa: E402
from hopchain_jax.infer.scheduler import bucket  # noqa: E402
from hopchain_jax.models.sharding import activation_sharding, make_mesh, state_shardings  # noqa: E402
from hopchain_jax.models.vision import image_tokens, padded_patches, prepare_vision_inputs  # noqa: E402
from hopchain_jax.rl.config import TrainConfig  # noqa: E402
from hopchain_jax.rl.update import Updater  # noqa: E402

GB = 1e9
PROGRAMS = ("update", "score", "decode", "prefill", "insert")


@dataclasses.dataclass
class Shapes:
    """The shapes one preset is measured at."""

    micro_batches: int     # K (grad_accum)
    micro_rows: int        # N rows per micro-batch
    seq: int               # T tokens per row (prompt + response)
    images_per_micro: int
    image_hw: tuple[int, int]
    decode_rows: int       # decode slots: rollout_slots, or prompts_per_step x group_size
    group_size: int
    cache_len: int
    decode_steps: int
    max_new_tokens: int


# -- abstract arrays ---------------------------------------------------------------------------------
def sds(shape, dtype, sharding=None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), jnp.dtype(dtype), sharding=sharding)


def place(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` with the matching sharding of `shardings` attached."""
    return jax.tree.map(lambda x, s: sds(x.shape, x.dtype, s), tree, shardings)


def shard_bytes(x: jax.ShapeDtypeStruct, sharding=None) -> int:
    """Bytes one device holds of x (its shard_shape); an array without a sharding counts whole."""
    sharding = sharding if sharding is not None else getattr(x, "sharding", None)
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    return int(np.prod(shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize


def tree_shard_bytes(tree: Any) -> int:
    return sum(shard_bytes(x) for x in jax.tree.leaves(tree))


def tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# -- the library's objects, without allocation --------------------------------------------------------
def abstract_model(config: QwenVLConfig, cfg: TrainConfig, mesh: Mesh) -> QwenVL:
    """QwenVL as init_sharded makes it (dtype / param_dtype of the run, the rules' shardings), abstract."""
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    model = nnx.eval_shape(lambda: QwenVL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(cfg.seed)))
    state = nnx.state(model)
    nnx.update(model, place(state, state_shardings(state, mesh)))
    return model


def abstract_updater(model: QwenVL, cfg: TrainConfig, mesh: Mesh) -> Updater:
    """The library's Updater on an abstract model: params / frozen / opt_state are ShapeDtypeStructs."""
    if cfg.kl_coef > 0:
        raise NotImplementedError("kl_coef > 0 (a reference copy of the params) is not modelled")
    return Updater(model, cfg, mesh)


def abstract_engine(upd: Updater, mesh: Mesh, cfg: TrainConfig, decode_chunk: int = 16) -> InferenceEngine:
    """The library's InferenceEngine on the trainer's (abstract) weights, as trainer.py builds it; its
    state is the abstract bf16 rollout copy in the rollout layout (update_weights)."""
    rollout = make_mesh(*cfg.rollout_mesh) if cfg.rollout_mesh else None
    return InferenceEngine(upd.model(), None, mesh=mesh, rollout_mesh=rollout, decode_chunk=decode_chunk)


# -- abstract inputs ----------------------------------------------------------------------------------
def image_grid(config: QwenVLConfig, image_hw: tuple[int, int], max_pixels: int) -> np.ndarray:
    """The grid_thw of one image of image_hw pixels under the processor's smart_resize."""
    processor = config.family.image_processor
    processor = processor.replace(max_pixels=max_pixels, min_pixels=min(processor.min_pixels, max_pixels))
    return np.asarray([improc.grid_thw_for_size(*image_hw, processor)], np.int64)


def vision_struct(config: QwenVLConfig, grid: np.ndarray, images: int) -> dict[str, tuple[tuple, np.dtype]]:
    """Shapes/dtypes of prepare_vision_inputs(...).arrays() for `images` images of `grid` (run on zeros)."""
    grids = np.repeat(grid, images, axis=0)
    total = int(np.prod(grids, axis=1).sum())
    vis = prepare_vision_inputs(np.zeros((total, config.vision.patch_dim), np.float32), grids, config)
    return {k: (v.shape, v.dtype) for k, v in vis.arrays().items()}


def abstract_batch(config: QwenVLConfig, mesh: Mesh, shapes: Shapes, max_pixels: int) -> tuple[dict, dict]:
    """A pack_micro batch ([K, N, T] arrays, per-micro-batch images) placed as Updater.put_batch does."""
    k, n, t = shapes.micro_batches, shapes.micro_rows, shapes.seq
    grid = image_grid(config, shapes.image_hw, max_pixels)
    put = lambda shape, dtype, kind: sds(shape, dtype, activation_sharding(kind, shape, mesh))
    batch = {"input_ids": put((k, n, t), np.int32, "micro_tokens"),
             "attention_mask": put((k, n, t), np.bool_, "micro_tokens"),
             "position_ids": put((k, 3, n, t), np.int32, "micro_positions"),
             "targets": put((k, n, t), np.int32, "micro_tokens"),
             "loss_mask": put((k, n, t), np.bool_, "micro_tokens"),
             "image_index": put((k, n, t), np.int32, "micro_tokens"),
             "vision": None}
    info = {"grid_thw": grid[0].tolist(), "image_tokens": image_tokens(grid, config), "patches": 0}
    if shapes.images_per_micro:
        vis = vision_struct(config, grid, shapes.images_per_micro)
        batch["vision"] = {name: put((k,) + shape, dtype, "micro_vision") for name, (shape, dtype) in vis.items()}
        info["patches"] = int(vis["pixel_values"][0][0])
    return batch, info


def rl_step_args(upd: Updater, batch: dict, mesh: Mesh) -> tuple:
    """(params, opt_state, frozen, batch, old_logp, advantages, ref_logp) as Trainer.rl_iteration passes them:
    old log-probs [K * N, T] (Updater.score's output; placed here with the token rule), advantages [K * N]
    placed as Updater.rl_step does ("rows"), no reference log-probs (kl_coef = 0)."""
    k, n, t = batch["input_ids"].shape
    old = sds((k * n, t), np.float32, activation_sharding("tokens", (k * n, t), mesh))
    adv = sds((k * n,), np.float32, activation_sharding("rows", (k * n,), mesh))
    return upd.params, upd.opt_state, upd.frozen, batch, old, adv, None


def kv_cache(eng: InferenceEngine, batch: int, length: int) -> KVCache:
    """InferenceEngine._empty_cache, abstract."""
    t = eng.config.text
    shape = (t.num_hidden_layers, batch, length, t.num_key_value_heads, t.head_dim)
    kv, bits = activation_sharding("kv_cache", shape, eng.mesh), cache_bits_dtype(eng.dtype)
    return KVCache(sds(shape, bits, kv), sds(shape, bits, kv),
                   sds((batch, length), np.bool_, activation_sharding("cache_valid", (batch, length), eng.mesh)))


def decode_args(eng: InferenceEngine, shapes: Shapes, cfg: TrainConfig) -> tuple:
    """InferenceEngine._decode's arguments as generate() passes them for one chunk: the per-slot state
    (engine.ROW_FIELDS, each [rows], placed by the "rows" rule), the whole cache read."""
    b = shapes.decode_rows
    cache = kv_cache(eng, b, shapes.cache_len)
    rows = {name: sds((b,), dtype, activation_sharding("rows", (b,), eng.mesh)) for name, dtype in ROW_FIELDS.items()}
    return (eng, eng.state, cache, rows, shapes.decode_steps, shapes.cache_len,
            SamplerWork.of(cfg.temperature, cfg.top_k, cfg.top_p))


def prefill_shape(eng: InferenceEngine, shapes: Shapes) -> tuple[int, int]:
    """(prompt rows, padded prompt length) of one prefill call at prompt length cache_len - max_new_tokens:
    as many prompts as the prefill budget takes, at most those of one pool."""
    t = shapes.cache_len - shapes.max_new_tokens
    prompts = -(-shapes.decode_rows // shapes.group_size)
    return bucket(min(eng.prefill_rows(t), prompts), eng.batch_buckets), -(-t // eng.length_bucket) * eng.length_bucket


def prefill_args(eng: InferenceEngine, shapes: Shapes, max_pixels: int) -> tuple:
    """InferenceEngine._prefill's arguments: prompt rows right-padded to prefill_shape, image features of
    one image per prompt (the _encode output; placed here over the batch axes)."""
    b, t = prefill_shape(eng, shapes)
    mesh, d = eng.mesh, eng.config.text.hidden_size
    tok = lambda dtype: sds((b, t), dtype, activation_sharding("tokens", (b, t), mesh))
    grid = np.repeat(image_grid(eng.config, shapes.image_hw, max_pixels), b, axis=0)
    m = padded_patches(grid, eng.config) // eng.config.vision.spatial_merge_size ** 2
    deep = len(eng.config.vision.deepstack_visual_indexes) if eng.config.family.deepstack else 0
    feat = lambda: sds((m, d), eng.dtype, activation_sharding("vision", (m, d), mesh))
    features = (feat(), [feat() for _ in range(deep)])
    pos = sds((3, b, t), np.int32, activation_sharding("positions", (3, b, t), mesh))
    return (eng, eng.state, tok(np.int32), pos, tok(np.bool_), features, tok(np.int32),
            sds((b,), np.int32, activation_sharding("rows", (b,), mesh)))


def insert_args(eng: InferenceEngine, shapes: Shapes) -> tuple:
    """InferenceEngine._insert's arguments: the decode pool, one prefill call's KV (prefill_shape) and the
    per-shard slot tables of its prompts x group_size samples, spread evenly over the batch shards."""
    b, t = prefill_shape(eng, shapes)
    pool = kv_cache(eng, shapes.decode_rows, shapes.cache_len)
    shards = eng.batch_shards(shapes.decode_rows)
    width = bucket(-(-b * shapes.group_size // shards), eng.batch_buckets)
    table = sds((shards, width), np.int32, jax.sharding.NamedSharding(eng.mesh, jax.sharding.PartitionSpec(
        pool.k.sharding.spec[1])))
    return eng, pool, kv_cache(eng, b, t), table, table


ROLLOUT_PROGRAMS = ("decode", "prefill", "insert")


def rollout_program(eng: InferenceEngine, prog: str, shapes: Shapes, cfg: TrainConfig):
    """(jitted method, its abstract arguments, static positions, co-resident note) of an engine program."""
    if prog == "decode":
        return (InferenceEngine._decode, decode_args(eng, shapes, cfg), (0, 4, 5, 6),
                "decode total (bf16 copy + pool KV in it)")
    if prog == "prefill":
        return (InferenceEngine._prefill, prefill_args(eng, shapes, cfg.max_pixels), (0,),
                "prefill total (bf16 copy in it) + the decode pool's KV")
    return (InferenceEngine._insert, insert_args(eng, shapes), (0,),
            "insert total (pool + prefill KV in it) + bf16 copy")


# -- measuring ----------------------------------------------------------------------------------------
def _kept_leaves(lowered, leaves: list) -> tuple[list, list]:
    """(kept, pruned) flat inputs: jit drops unused arguments (keep_unused=False) from the executable."""
    try:
        kept = lowered._lowering.compile_args["kept_var_idx"]
    except (AttributeError, KeyError, TypeError):
        return leaves, []
    return [x for i, x in enumerate(leaves) if i in kept], [x for i, x in enumerate(leaves) if i not in kept]


def measure(name: str, jitted: Callable, args: tuple, static: tuple[int, ...] = ()) -> dict:
    """Lower + compile `jitted` on abstract `args` (static positions excluded from the byte sums)."""
    dynamic = [a for i, a in enumerate(args) if i not in static]
    leaves = jax.tree.leaves(dynamic)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    kept, pruned = _kept_leaves(lowered, leaves)
    expected = sum(shard_bytes(x) for x in kept)
    row = {"program": name,
           "argument_bytes": int(ma.argument_size_in_bytes), "output_bytes": int(ma.output_size_in_bytes),
           "temp_bytes": int(ma.temp_size_in_bytes), "alias_bytes": int(ma.alias_size_in_bytes),
           "generated_code_bytes": int(ma.generated_code_size_in_bytes),
           "peak_bytes": int(getattr(ma, "peak_memory_in_bytes", 0) or 0),
           "host_temp_bytes": int(ma.host_temp_size_in_bytes),
           "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
           # cross-check: per-device shard sizes (sharding.shard_shape) of the inputs the executable kept
           "expected_argument_bytes": int(expected), "global_argument_bytes": int(tree_bytes(kept)),
           "pruned_argument_bytes": int(sum(shard_bytes(x) for x in pruned)), "n_args": len(leaves),
           "n_pruned": len(pruned)}
    row["total_bytes"] = row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"] - row["alias_bytes"]
    row["args_check_ratio"] = row["argument_bytes"] / expected if expected else float("nan")
    return row


def run_preset(preset: str, config: QwenVLConfig, cfg: TrainConfig, mesh: Mesh, shapes: Shapes,
               programs: tuple[str, ...], budget: float, emit: Callable[[dict], None]) -> list[dict]:
    """Measure `programs` of one preset; emit(row) after each (incremental JSON)."""
    model = abstract_model(config, cfg, mesh)
    upd = abstract_updater(model, cfg, mesh)
    eng = abstract_engine(upd, mesh, cfg, shapes.decode_steps)
    resident = {"params_fp32": tree_shard_bytes(upd.params), "frozen": tree_shard_bytes(upd.frozen),
                "opt_state": tree_shard_bytes(upd.opt_state), "rollout_copy": tree_shard_bytes(eng.state)}
    resident_global = {"params_fp32": tree_bytes(upd.params), "frozen": tree_bytes(upd.frozen),
                       "opt_state": tree_bytes(upd.opt_state), "rollout_copy": tree_bytes(eng.state)}
    batch, info = abstract_batch(config, mesh, shapes, cfg.max_pixels)
    cfg32, eng32 = cfg.replace(dtype="float32"), None
    base = {"preset": preset, "mesh": dict(mesh.shape), "shapes": dataclasses.asdict(shapes), "images": info,
            "resident_per_device": resident, "resident_global": resident_global, "budget_bytes": budget}
    rows = []
    for prog in programs:
        row = dict(base, program=prog)
        try:
            if prog == "update":
                args = rl_step_args(upd, batch, mesh)
                row.update(measure(prog, upd._rl_step, args))
                # parameter + optimizer-state part of the arguments (the FSDP check)
                row["state_argument_bytes"] = tree_shard_bytes(args[:2])
                row["state_global_bytes"] = tree_bytes(args[:2])
                # the trainer releases the engine's rollout copy before scoring and updating
                row["coresident_bytes"] = row["total_bytes"]
                row["coresident_note"] = "update total + pruned args"
            elif prog == "score":
                row.update(measure(prog, upd._score, (upd.params, upd.frozen, batch)))
                # during scoring the optimizer state and the rollout copy are alive beside the program
                row["coresident_bytes"] = row["total_bytes"] + resident["opt_state"]
                row["coresident_note"] = "score total + opt state + pruned args"
            elif prog in ROLLOUT_PROGRAMS:
                pool = kv_cache(eng, shapes.decode_rows, shapes.cache_len)
                jitted, args, static, note = rollout_program(eng, prog, shapes, cfg)
                row.update(measure(prog, jitted, args, static=static))
                if jnp.dtype(cfg.dtype).itemsize == 2:
                    # The CPU compiler upcasts bf16 dot operands to float32 and hoists the casts of the
                    # weights out of the layer loop: a float32 copy of every bf16 weight lands in temp,
                    # which a GPU does not make. The same program compiled in float32 has no such copy;
                    # half its temp estimates the bf16 program's own temporaries.
                    if eng32 is None:
                        eng32 = abstract_engine(abstract_updater(abstract_model(config, cfg32, mesh), cfg32, mesh),
                                                mesh, cfg32, shapes.decode_steps)
                    twin = measure(prog, *rollout_program(eng32, prog, shapes, cfg32)[:2],
                                   static=static)
                    row["temp_bytes_f32_twin"] = twin["temp_bytes"]
                    row["gpu_estimate_bytes"] = row["total_bytes"] - row["temp_bytes"] + twin["temp_bytes"] // 2
                row["coresident_extra"] = tree_shard_bytes(pool) if prog == "prefill" else (
                    resident["rollout_copy"] if prog == "insert" else 0)
                row["kv_cache_bytes"] = tree_shard_bytes(pool)
                row["kv_cache_global_bytes"] = tree_bytes(pool)
                # fp32 masters + opt state stay on device during rollouts
                row["coresident_bytes"] = row["total_bytes"] + row["coresident_extra"] + \
                    resident["params_fp32"] + resident["frozen"] + resident["opt_state"]
                row["coresident_note"] = note + " + fp32 master + frozen + opt state + pruned args"
                if "gpu_estimate_bytes" in row:
                    row["coresident_gpu_estimate_bytes"] = row["coresident_bytes"] - row["total_bytes"] + \
                        row["gpu_estimate_bytes"]
            else:
                raise ValueError(f"unknown program {prog!r}")
            # inputs the executable does not read (jit prunes them: e.g. the vision tower's weights in decode)
            # are still alive on the device
            row["coresident_bytes"] += row["pruned_argument_bytes"]
            row["fits"] = row["total_bytes"] <= budget
            row["coresident_fits"] = row["coresident_bytes"] <= budget
        except Exception as e:   # a failed compile is a result too (reported, the others still run)
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
        rows.append(row)
        emit(row)
    return rows


# -- output ---------------------------------------------------------------------------------------------
def _gb(x) -> str:
    return f"{x / GB:8.2f}"


def format_table(rows: list[dict]) -> str:
    head = (f"| {'preset':14} | {'mesh':7} | {'program':7} | {'args GB':>8} | {'out GB':>8} | {'temp GB':>8} | "
            f"{'alias GB':>8} | {'total GB':>8} | {'code MB':>7} | {'fits':4} | {'co-res GB':>9} | {'co-fits':7} | "
            f"{'compile s':>9} | {'args check':>10} | {'GPU est GB':>10} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        mesh = ",".join(str(v) for v in r["mesh"].values())
        if "error" in r:
            lines.append(f"| {r['preset']:14} | {mesh:7} | {r['program']:7} | FAILED: {r['error'][:150]}")
            continue
        lines.append(
            f"| {r['preset']:14} | {mesh:7} | {r['program']:7} | {_gb(r['argument_bytes'])} | {_gb(r['output_bytes'])} | "
            f"{_gb(r['temp_bytes'])} | {_gb(r['alias_bytes'])} | {_gb(r['total_bytes'])} | "
            f"{r['generated_code_bytes'] / 1e6:7.2f} | {'yes' if r['fits'] else 'no':4} | {_gb(r['coresident_bytes']):>9} | "
            f"{'yes' if r['coresident_fits'] else 'no':7} | {r['compile_s']:9.1f} | {r['args_check_ratio']:10.4f} | "
            + (f"{_gb(r['gpu_estimate_bytes']):>10} |" if "gpu_estimate_bytes" in r else f"{'-':>10} |"))
    return "\n".join(lines)


def format_details(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if "error" in r:
            continue
        s = (f"{r['preset']} {r['program']}: per-device args {r['argument_bytes']:,} B vs sum of shard_shape sizes "
             f"{r['expected_argument_bytes']:,} B (ratio {r['args_check_ratio']:.4f}; global {r['global_argument_bytes']:,} B"
             f" = {r['global_argument_bytes'] / max(r['argument_bytes'], 1):.2f}x; {r['n_pruned']} unused args pruned, "
             f"{r['pruned_argument_bytes']:,} B); lower {r['lower_s']} s, compile {r['compile_s']} s")
        if r.get("peak_bytes"):
            s += f"; peak_memory_in_bytes {r['peak_bytes'] / GB:.2f} GB"
        if "state_argument_bytes" in r:
            s += (f"\n    params+opt args per device {r['state_argument_bytes'] / GB:.3f} GB of "
                  f"{r['state_global_bytes'] / GB:.3f} GB global (1/{r['state_global_bytes'] / r['state_argument_bytes']:.2f})")
        if "kv_cache_bytes" in r:
            s += (f"\n    KV cache per device {r['kv_cache_bytes'] / GB:.2f} GB ({r['kv_cache_global_bytes'] / GB:.2f} GB "
                  f"global; {r['shapes']['decode_rows']} rows x {r['shapes']['cache_len']} slots)")
        s += f"\n    co-resident {r['coresident_bytes'] / GB:.2f} GB = {r['coresident_note']}"
        if "gpu_estimate_bytes" in r:
            s += (f"\n    GPU estimate {r['gpu_estimate_bytes'] / GB:.2f} GB ({r['coresident_gpu_estimate_bytes'] / GB:.2f} GB "
                  f"co-resident): temp replaced by half the temp of the float32 program "
                  f"({r['temp_bytes_f32_twin'] / GB:.2f} GB; the CPU upcasts bf16 weights)")
        out.append(s)
    return "\n".join(out)


def shapes_for(cfg: TrainConfig, args, small: bool) -> Shapes:
    if small:
        return Shapes(micro_batches=2, micro_rows=args.micro_rows, seq=128, images_per_micro=1, image_hw=(112, 112),
                      decode_rows=16, group_size=8, cache_len=128, decode_steps=2, max_new_tokens=64)
    rows = cfg.prompts_per_step * cfg.group_size // cfg.minibatches
    k = args.grad_accum or cfg.grad_accum
    if rows != k * args.micro_rows:
        print(f"note: the preset's minibatch is {rows} rows; measuring {k} x {args.micro_rows} = "
              f"{k * args.micro_rows}", flush=True)
    return Shapes(micro_batches=k, micro_rows=args.micro_rows, seq=args.seq, images_per_micro=args.images_per_micro,
                  image_hw=tuple(args.image_hw),
                  decode_rows=bucket(cfg.rollout_slots or cfg.prompts_per_step * cfg.group_size, BATCH_BUCKETS),
                  group_size=cfg.group_size, cache_len=args.cache_len or args.seq,
                  decode_steps=args.decode_steps, max_new_tokens=cfg.max_new_tokens)


def train_config(preset: str, small: bool) -> TrainConfig:
    if small:   # the GPU presets' precision / remat / freezing on the tiny model
        return train_presets.QWEN2_5_VL_3B.replace(name="tiny", model="tiny", prompts_per_step=2, group_size=8,
                                                   minibatches=1, grad_accum=2, max_new_tokens=64,
                                                   max_pixels=112 * 112)
    return train_presets.PRESETS[preset]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="qwen2_5_vl_3b,qwen2_5_vl_7b")
    p.add_argument("--programs", default="update,score,decode", help=f"comma list of {','.join(PROGRAMS)}")
    p.add_argument("--mesh", default=None, help="data,fsdp,tensor (default: the preset's, -1 = the rest)")
    p.add_argument("--seq", type=int, default=4096, help="tokens per training row (prompt + response)")
    p.add_argument("--micro-rows", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=0, help="micro-batches per step (default: the preset's)")
    p.add_argument("--images-per-micro", type=int, default=1)
    p.add_argument("--image-hw", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1024, 1024))
    p.add_argument("--cache-len", type=int, default=0, help="decode KV-cache slots (default --seq)")
    p.add_argument("--decode-steps", type=int, default=16, help="steps per decode chunk (engine decode_chunk)")
    p.add_argument("--budget-gb", type=float, default=80.0, help="per-device memory, GB (1e9 bytes)")
    p.add_argument("--json", default=None, help="write results here (rewritten after every program)")
    p.add_argument("--small", action="store_true", help="the tiny model at tiny shapes (tests)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    presets = ["tiny"] if args.small else [s for s in args.presets.split(",") if s]
    programs = tuple(s for s in args.programs.split(",") if s)
    for prog in programs:
        if prog not in PROGRAMS:
            raise SystemExit(f"unknown program {prog!r} (choose from {PROGRAMS})")
    results: list[dict] = []
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
            "formula": "total = argument + output + temp - alias (per device)", "budget_gb": args.budget_gb}

    def emit(row):
        results.append(row)
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps({"meta": meta, "rows": results}, indent=1, default=str))
            tmp.replace(path)
        status = "FAILED " + row["error"] if "error" in row else \
            f"total {row['total_bytes'] / GB:.2f} GB/device, compile {row['compile_s']} s"
        print(f"[{row['preset']} {row['program']}] {status}", flush=True)

    for preset in presets:
        cfg = train_config(preset, args.small)
        config = model_presets.PRESETS[cfg.model]()
        mesh_spec = tuple(int(v) for v in args.mesh.split(",")) if args.mesh else cfg.mesh
        mesh = make_mesh(*mesh_spec)
        shapes = shapes_for(cfg, args, args.small)
        print(f"== {preset}: mesh {dict(mesh.shape)}, {shapes}", flush=True)
        run_preset(preset, config, cfg, mesh, shapes, programs, args.budget_gb * GB, emit)
    print()
    print(f"per-device bytes; {meta['formula']}; fits = total <= {args.budget_gb} GB; co-res = total + arrays "
          "alive beside the program (see below)")
    print(format_table(results))
    print(format_details(results))
    return results


if __name__ == "__main__":
    main()

"""SAPO update-step throughput and MFU.

  python benchmarks/train_step.py --preset qwen2_5_vl_3b --batch 16 --seq-len 2048   # GPU (bfloat16)
  python benchmarks/train_step.py --preset tiny --batch 4 --seq-len 128               # CPU smoke run
  python benchmarks/train_step.py --preset qwen2_5_vl_3b --batch 8 --seq-len 2048 \
      --head-impl fused_forward --head-chunk-tokens 256 --head-chunk-vocab -1         # the fused LM head

One optimizer step of the SAPO loss (forward, fused log-prob kernel, backward, AdamW) on random
weights and random token sequences (response = second half of each row, random advantages), timed
after compilation (best of --repeats), at the presets' precision on an accelerator (float32 master
weights, bfloat16 compute), with --grad-accum micro-batches and --remat. MFU = model FLOPs of the
step per component (rl/flops.py: decoder matmuls + causal attention + LM head, x3 for forward +
backward) / step time / (peak FLOP/s x devices).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hopchain_jax.configs.models import PRESETS  # noqa: E402
from hopchain_jax.models.qwen_vl import init_sharded  # noqa: E402
from hopchain_jax.models.sharding import make_mesh  # noqa: E402
from hopchain_jax.rl.config import TrainConfig  # noqa: E402
from hopchain_jax.rl.flops import train_step_flops  # noqa: E402
from hopchain_jax.rl.sequences import Prompt, pack_micro  # noqa: E402
from hopchain_jax.rl.update import Updater  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="per device, dense bf16 (H100/H200 SXM datasheet: 989; measured H200 matmul peak: ~790)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--freeze-vision", action="store_true")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--remat", default="full", help="none | full | dots | dots_no_batch")
    p.add_argument("--head-impl", default="recompute", choices=("recompute", "fused_forward"),
                   help="TrainConfig.head_impl: the LM head + loss (kernels/fused_head.py for fused_forward)")
    p.add_argument("--head-chunk-tokens", type=int, default=0, help="TrainConfig.head_chunk_tokens (0: auto)")
    p.add_argument("--head-chunk-vocab", type=int, default=0,
                   help="TrainConfig.head_chunk_vocab (0: auto, -1: the whole vocabulary)")
    p.add_argument("--head-dw-accum", default="auto", choices=("auto", "float32"), help="TrainConfig.head_dw_accum")
    args = p.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    config = PRESETS[args.preset]()
    mesh = make_mesh()
    model = init_sharded(config, dtype=dtype, param_dtype=jnp.float32, mesh=mesh)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    cfg = TrainConfig(dtype=jnp.dtype(dtype).name, param_dtype="float32", prompts_per_step=args.batch, group_size=1,
                      minibatches=1, grad_accum=args.grad_accum, remat=args.remat,
                      freeze_vision=args.freeze_vision, kernel_impl="auto", head_impl=args.head_impl,
                      head_chunk_tokens=args.head_chunk_tokens, head_chunk_vocab=args.head_chunk_vocab,
                      head_dw_accum=args.head_dw_accum)
    updater = Updater(model, cfg, mesh)
    rng = np.random.default_rng(0)
    half = args.seq_len // 2
    prompts = [Prompt(rng.integers(10, 50000, size=half), None, None) for _ in range(args.batch)]
    responses = [rng.integers(10, 50000, size=half - 1).tolist() for _ in range(args.batch)]
    batch_np = pack_micro(prompts, list(range(args.batch)), responses, config, args.grad_accum,
                          length_bucket=args.seq_len)
    batch = updater.put_batch(batch_np.arrays())
    old, _ = updater.score(batch)
    adv = rng.normal(size=args.batch).astype(np.float32)
    jax.block_until_ready(updater.rl_step(batch, old, adv))  # compile
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(updater.rl_step(batch, old, adv))
        times.append(time.perf_counter() - t0)
    step = min(times)
    tokens = args.batch * args.seq_len
    step_flops = train_step_flops(config, [args.seq_len - 1] * args.batch, (), args.freeze_vision)
    mfu = step_flops / step / (args.peak_tflops * 1e12 * jax.device_count())
    result = {"preset": args.preset, "device": jax.devices()[0].device_kind, "n_devices": jax.device_count(),
              "jax": jax.__version__, "python": platform.python_version(), "dtype": jnp.dtype(dtype).name,
              "params": n_params, "batch": args.batch, "seq_len": args.seq_len, "grad_accum": args.grad_accum,
              "remat": args.remat, "head_impl": args.head_impl, "head_chunk_tokens": args.head_chunk_tokens,
              "head_chunk_vocab": args.head_chunk_vocab, "head_dw_accum": args.head_dw_accum, "step_s": step, "model_tflop_per_step": step_flops / 1e12,
              "tokens_per_s": tokens / step, "mfu": mfu, "peak_tflops": args.peak_tflops}
    print(json.dumps(result, indent=1))
    print(f"| {result['device']} | {args.preset} | {args.batch}x{args.seq_len} | {step * 1e3:.1f} ms | "
          f"{tokens / step:,.0f} | {100 * mfu:.1f}% |")


if __name__ == "__main__":
    main()

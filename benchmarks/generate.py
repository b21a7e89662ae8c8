"""Generation throughput: our engine vs transformers' generate on the same device and workload.

  python benchmarks/generate.py --preset qwen2_5_vl_3b --batch 64 --prompt-len 256 --new-tokens 512   # GPU
  python benchmarks/generate.py --preset tiny --batch 4 --prompt-len 32 --new-tokens 16 --hf-batch 4  # CPU

Random weights (bfloat16 on GPU, float32 on CPU), text prompts of random token ids, EOS disabled so
every row decodes exactly --new-tokens. Reports:
  prefill tokens/s          batch * prompt_len / prefill time
  decode tokens/s           batch * (new_tokens - 1) / decode time
  decode step (ms)          decode time / (new_tokens - 1)
  step floor (ms)           bytes read per step / --hbm-gbps: all weights once + the KV cache, the minimum
                            time any implementation needs on a memory-bound decode step
  transformers tokens/s     model.generate(do_sample=False, min_new_tokens=max_new_tokens), same batch
Prints one JSON object and a markdown row for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
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

from configs.models import PRESETS  # noqa: E402
from hopchain_jax.infer.engine import InferenceEngine, Request, SamplingParams  # noqa: E402
from hopchain_jax.models.qwen_vl import init_sharded  # noqa: E402
from hopchain_jax.models.sharding import make_mesh  # noqa: E402


def param_bytes(model) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def run_ours(model, config, args, prompts):
    mesh = make_mesh()
    engine = InferenceEngine(model, mesh=mesh, length_bucket=64, decode_chunk=args.decode_chunk)
    requests = [Request(p) for p in prompts]
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens)
    one = dataclasses.replace(params, max_new_tokens=1)
    engine.generate(requests, params)  # compile both shapes first
    engine.generate(requests, one)

    def best_of(n, fn):
        times, result = [], None
        for _ in range(n):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return min(times), result

    prefill, _ = best_of(args.repeats, lambda: engine.generate(requests, one))
    total, outs = best_of(args.repeats, lambda: engine.generate(requests, params))
    assert all(len(o.token_ids) == args.new_tokens for o in outs)
    decode = max(total - prefill, 1e-9)
    return {"prefill_s": prefill, "total_s": total, "decode_s": decode,
            "prefill_tok_s": len(prompts) * args.prompt_len / prefill,
            "decode_tok_s": len(prompts) * (args.new_tokens - 1) / decode,
            "decode_step_ms": 1e3 * decode / (args.new_tokens - 1),
            "end_to_end_tok_s": len(prompts) * args.new_tokens / total}


def run_transformers(config, args, prompts):
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf_tiny import hf_model_from_config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = hf_model_from_config(config).to(device)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    ids = torch.tensor(np.asarray(prompts[:args.hf_batch]), device=device)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {"device": device, "batch": len(ids), "seconds": seconds,
            "end_to_end_tok_s": len(ids) * args.new_tokens / seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--decode-chunk", type=int, default=32)
    p.add_argument("--hbm-gbps", type=float, default=3350.0, help="memory bandwidth, GB/s (H100 SXM: 3350)")
    p.add_argument("--hf-batch", type=int, default=None, help="batch for transformers (default: --batch)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    args = p.parse_args()
    args.hf_batch = args.hf_batch or args.batch
    config = dataclasses.replace(PRESETS[args.preset](), eos_token_id=None)
    on_cpu = jax.default_backend() == "cpu"
    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    mesh = make_mesh()
    model = init_sharded(config, dtype=dtype, mesh=mesh)
    rng = np.random.default_rng(0)
    prompts = rng.integers(10, 50000 if config.text.vocab_size > 50000 else config.text.vocab_size - 10,
                           size=(args.batch, args.prompt_len)).tolist()
    ours = run_ours(model, config, args, prompts)
    weights = param_bytes(model)
    t = config.text
    kv_bytes = 2 * t.num_hidden_layers * args.batch * (args.prompt_len + args.new_tokens / 2) * t.num_key_value_heads \
        * t.head_dim * jnp.dtype(dtype).itemsize
    floor_ms = 1e3 * (weights + kv_bytes) / (args.hbm_gbps * 1e9)
    result = {"preset": args.preset, "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "n_devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
              "dtype": jnp.dtype(dtype).name, "batch": args.batch, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "weight_GB": weights / 1e9, "kv_GB_mean": kv_bytes / 1e9,
              "ours": ours, "step_floor_ms": floor_ms, "step_over_floor": ours["decode_step_ms"] / floor_ms}
    if not args.skip_hf:
        hf = run_transformers(config, args, prompts)
        result["transformers"] = hf
        result["speedup_end_to_end"] = ours["end_to_end_tok_s"] / hf["end_to_end_tok_s"]
    print(json.dumps(result, indent=1, default=float))
    print(f"| {result['device']} | {args.preset} | {args.batch} | {args.prompt_len} | {args.new_tokens} | "
          f"{ours['prefill_tok_s']:.0f} | {ours['decode_tok_s']:.0f} | {ours['decode_step_ms']:.2f} | {floor_ms:.2f} | "
          + (f"{result['transformers']['end_to_end_tok_s']:.0f} | {result['speedup_end_to_end']:.2f}x |"
             if "transformers" in result else "- | - |"))


if __name__ == "__main__":
    main()

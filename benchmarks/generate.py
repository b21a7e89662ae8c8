"""Generation throughput of the engine: a uniform workload (vs transformers) and a long-tailed one (vs the
static-batch engine of an earlier commit, measured in the same run).

  python benchmarks/generate.py --preset qwen2_5_vl_3b --batch 64 --prompt-len 256 --new-tokens 512   # GPU
  python benchmarks/generate.py --preset tiny --batch 4 --prompt-len 32 --new-tokens 16 --hf-batch 4  # CPU
  python benchmarks/generate.py --workload longtail --preset tiny --requests 256 --slots 32 \
      --prompt-len 64 --new-tokens 256 --baseline f2d4886                                              # CPU

Random weights (bfloat16 on GPU, float32 on CPU), prompts of random token ids.

uniform: every row decodes exactly --new-tokens (EOS disabled). Reports
  prefill tokens/s          batch * prompt_len / prefill time
  decode tokens/s           batch * (new_tokens - 1) / decode time
  decode step (ms)          decode time / (new_tokens - 1)
  step floor (ms)           bytes read per step / --hbm-gbps: all weights once + the KV cache, the minimum
                            time any implementation needs on a memory-bound decode step
  transformers tokens/s     model.generate(do_sample=False, min_new_tokens=max_new_tokens), same batch

longtail: --requests prompts of --prompt-len/2 .. --prompt-len tokens, each with its own token limit drawn
from a long-tailed (log-normal) distribution over 8 .. --new-tokens (median --median-frac x the max, so
the mean is about 0.3x the max), sampled at temperature 1 with EOS enabled, --n samples per prompt.
Reports, for this engine (--slots decode slots) and, with --baseline REV, for the engine of commit REV
(checked out into a temporary directory and run in a subprocess on the same workload and weights):
  useful tokens/s           generated tokens that end up in the outputs / wall time (compiled, best of
                            --repeats after a warm-up call)
  wasted row-steps          1 - decoded output tokens / (decode batch rows x decode steps); ours from the
                            engine's counters (GenerateStats), the static baseline's from its loop: every
                            row of the batch bucket runs until the longest output ends (chunk-rounded)
  speed-up                  ours / baseline useful tokens/s
Prints one JSON object and a markdown row for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --engine-root DIR: import the library (engine, model) from another checkout (the baseline run)
_root = sys.argv[sys.argv.index("--engine-root") + 1] if "--engine-root" in sys.argv else str(ROOT)
sys.path.insert(0, _root)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from hopchain_jax.configs.models import PRESETS  # noqa: E402
from hopchain_jax.infer.engine import BATCH_BUCKETS, InferenceEngine, Request, SamplingParams  # noqa: E402
from hopchain_jax.models.qwen_vl import init_sharded  # noqa: E402
from hopchain_jax.models.sharding import make_mesh  # noqa: E402


def param_bytes(model) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def best_of(n, fn):
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def make_engine(model, mesh, args) -> InferenceEngine:
    """This checkout's engine, or an earlier one's (only the keyword arguments it knows are passed)."""
    kwargs = {"length_bucket": 64, "decode_chunk": args.decode_chunk, "max_slots": args.slots,
              "kv_bucket": args.kv_bucket}
    known = inspect.signature(InferenceEngine.__init__).parameters
    return InferenceEngine(model, mesh=mesh, **{k: v for k, v in kwargs.items() if k in known})


# -- uniform workload ----------------------------------------------------------------------------------
def run_uniform(model, config, args, prompts):
    engine = make_engine(model, make_mesh(), args)
    requests = [Request(p) for p in prompts]
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens)
    one = dataclasses.replace(params, max_new_tokens=1)
    engine.generate(requests, params)  # compile both shapes first
    engine.generate(requests, one)
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
    sys.path.insert(0, str(ROOT / "tests"))
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


def uniform_main(args, config, model, dtype):
    rng = np.random.default_rng(0)
    prompts = rng.integers(10, 50000 if config.text.vocab_size > 50000 else config.text.vocab_size - 10,
                           size=(args.batch, args.prompt_len)).tolist()
    ours = run_uniform(model, config, args, prompts)
    weights = param_bytes(model)
    t = config.text
    kv_bytes = 2 * t.num_hidden_layers * args.batch * (args.prompt_len + args.new_tokens / 2) * t.num_key_value_heads \
        * t.head_dim * jnp.dtype(dtype).itemsize
    floor_ms = 1e3 * (weights + kv_bytes) / (args.hbm_gbps * 1e9)
    result = {**environment(args, dtype), "batch": args.batch, "prompt_len": args.prompt_len,
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


# -- long-tailed workload ------------------------------------------------------------------------------
def longtail_requests(args, vocab: int) -> list[Request]:
    """Prompts of prompt_len/2..prompt_len random tokens, log-normal token limits clipped to 8..new_tokens."""
    rng = np.random.default_rng(args.seed)
    limits = rng.lognormal(np.log(args.median_frac * args.new_tokens), args.sigma, args.requests)
    limits = np.clip(limits.astype(int), 8, args.new_tokens)
    lengths = rng.integers(args.prompt_len // 2, args.prompt_len + 1, args.requests)
    high = 50000 if vocab > 50000 else vocab - 10
    return [Request(rng.integers(10, high, size=int(n)).tolist(), max_new_tokens=int(m))
            for n, m in zip(lengths, limits)]


def static_row_steps(outs, requests, n: int, chunk: int, batch_buckets=BATCH_BUCKETS):
    """Decode row-steps of the static-batch engine: every row of the batch bucket decodes in chunks until
    the longest output ends (its loop stops at the first chunk boundary after that)."""
    rows = len(requests) * n
    batch = next((b for b in batch_buckets if rows <= b), -(-rows // batch_buckets[-1]) * batch_buckets[-1])
    longest = max(len(o.token_ids) for o in outs)
    max_new = max(r.max_new_tokens for r in requests)
    steps = min(-(-(longest - 1) // chunk) * chunk, -(-max_new // chunk) * chunk)
    return batch * steps


def run_longtail(model, config, args) -> dict:
    requests = longtail_requests(args, config.text.vocab_size)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, n=args.n, seed=args.seed)
    engine = make_engine(model, make_mesh(), args)
    engine.generate(requests, params)   # warm-up: compiles every bucket this workload visits
    seconds, outs = best_of(args.repeats, lambda: engine.generate(requests, params))
    useful = sum(len(o.token_ids) for o in outs)
    decoded = sum(len(o.token_ids) - 1 for o in outs)
    stats = getattr(engine, "last_stats", None)
    if stats is not None:
        row_steps, wasted = stats.row_steps, stats.wasted_fraction
        detail = stats.as_dict()
    else:   # the static-batch engine keeps no counters
        row_steps = static_row_steps(outs, requests, args.n, args.decode_chunk)
        wasted, detail = 1 - decoded / row_steps, {}
    return {"seconds": seconds, "useful_tokens": useful, "useful_tok_s": useful / seconds, "row_steps": row_steps,
            "wasted_fraction": wasted, "mean_len": useful / len(outs),
            "max_len": max(len(o.token_ids) for o in outs), "sequences": len(outs), "stats": detail}


def run_baseline(rev: str, argv: list[str]) -> dict:
    """The same workload with the engine of commit `rev` (git archive into a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--engine-root", tmp, "--result-json", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"baseline run at {rev} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def longtail_main(args, config, model, dtype, argv):
    ours = run_longtail(model, config, args)
    result = {**environment(args, dtype), "workload": "longtail", "requests": args.requests, "n": args.n,
              "slots": args.slots, "prompt_len": args.prompt_len, "max_new_tokens": args.new_tokens,
              "median_frac": args.median_frac, "sigma": args.sigma, "decode_chunk": args.decode_chunk,
              "engine_root": _root, "ours": ours}
    if args.result_json:   # the baseline subprocess: hand the figures back
        Path(args.result_json).write_text(json.dumps(result, default=float))
        return
    if args.baseline:
        base_argv = [a for a in argv if a not in ("--baseline", args.baseline)]
        base = run_baseline(args.baseline, base_argv)
        result["baseline"] = {"rev": args.baseline, **base["ours"]}
        result["speedup_useful_tok_s"] = ours["useful_tok_s"] / base["ours"]["useful_tok_s"]
    print(json.dumps(result, indent=1, default=float))
    b = result.get("baseline")
    print(f"| {result['device']} | {args.preset} | {args.requests}x{args.n} | {args.slots} | {args.prompt_len} | "
          f"{args.new_tokens} | {ours['mean_len']:.0f} | {ours['useful_tok_s']:.0f} | {ours['wasted_fraction']:.3f} | "
          + (f"{b['useful_tok_s']:.0f} | {b['wasted_fraction']:.3f} | {result['speedup_useful_tok_s']:.2f}x |"
             if b else "- | - | - |"))


def environment(args, dtype) -> dict:
    return {"preset": args.preset, "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "n_devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
            "dtype": jnp.dtype(dtype).name}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="uniform", choices=["uniform", "longtail"])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=64, help="uniform: rows")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=512, help="uniform: tokens per row; longtail: the largest limit")
    p.add_argument("--decode-chunk", type=int, default=32)
    p.add_argument("--slots", type=int, default=64, help="decode slots of the engine (its max_slots)")
    p.add_argument("--kv-bucket", type=int, default=256, help="base of the engine's cache-length buckets")
    p.add_argument("--requests", type=int, default=256, help="longtail: prompts")
    p.add_argument("--n", type=int, default=1, help="longtail: samples per prompt")
    p.add_argument("--median-frac", type=float, default=0.2, help="longtail: median limit / --new-tokens")
    p.add_argument("--sigma", type=float, default=0.8, help="longtail: log-normal spread of the limits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", help="longtail: also run the engine of this git revision (e.g. f2d4886)")
    p.add_argument("--engine-root", help=argparse.SUPPRESS)
    p.add_argument("--result-json", help=argparse.SUPPRESS)
    p.add_argument("--hbm-gbps", type=float, default=3350.0, help="memory bandwidth, GB/s (H100 SXM: 3350)")
    p.add_argument("--hf-batch", type=int, default=None, help="batch for transformers (default: --batch)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    args = p.parse_args(argv)
    args.hf_batch = args.hf_batch or args.batch
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    config = dataclasses.replace(PRESETS[args.preset](), eos_token_id=None) if args.workload == "uniform" \
        else PRESETS[args.preset]()
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    model = init_sharded(config, dtype=dtype, mesh=make_mesh())
    if args.workload == "uniform":
        uniform_main(args, config, model, dtype)
    else:
        longtail_main(args, config, model, dtype, argv)


if __name__ == "__main__":
    main()

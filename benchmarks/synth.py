"""Synthesis and data-loading throughput.

  python benchmarks/synth.py [--images 96] [--workers 2] [--read-epochs 2] [--seed 123]
                             [--composer KEY=VALUE ...]   e.g. --composer drop_blind_solvable=false

Measures, on this machine:
  1. procedural synthesis on ONE core (in-process, no worker start-up): verified full-chain queries/s
     and verified records/s (every variant is verified on its own) -- the per-core figure -- and the
     two blind baselines of stats.py on those queries (goals: most common answer <= 10%, text-only
     rule <= 15%);
  2. the same through `run_synthesis` with --workers processes, writing the TensorStore dataset;
  3. Grain read throughput over that dataset (examples/s, image decode included), shuffled, with
     worker_count 0 and 2.
Prints a JSON object and a markdown row for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time

import grain
import numpy as np

import hopchain_jax
from hopchain_jax.data.grain_source import make_loader
from hopchain_jax.synth.composer import ComposerConfig
from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis, synthesize_shard
from hopchain_jax.synth.stats import blind_baselines


def composer_overrides(items: list[str]) -> ComposerConfig:
    """ComposerConfig with KEY=VALUE overrides (e.g. drop_blind_solvable=false, max_answer_share=0.1)."""
    base = ComposerConfig()
    fields = {f.name: f for f in dataclasses.fields(ComposerConfig)}
    changes = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--composer {item}: no field {key!r}; fields: {', '.join(fields)}")
        default = getattr(base, key)
        changes[key] = value.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(value)
    return dataclasses.replace(base, **changes)


def bench_one_core(images: int, seed: int = 123, composer: ComposerConfig = ComposerConfig()) -> dict:
    # Warm the per-process caches (fonts, the seven backdrop textures, sprites) with a shard of other
    # seeds, as a long run's workers are warm: texture generation alone is ~1 s once per process.
    synthesize_shard(SynthConfig(seed=99, num_images=48), 0)
    config = SynthConfig(seed=seed, num_images=images, composer=composer)  # default shard size: the balance window
    start = time.perf_counter()
    full = records = 0
    kept = []
    for shard in range(config.num_shards):
        _, _, recs, stats = synthesize_shard(config, shard)
        full += stats["queries"]["full"]
        records += len(recs)
        kept += recs
    seconds = time.perf_counter() - start
    blind = blind_baselines(kept)
    return {"images": images, "seconds": round(seconds, 3), "full_queries_per_s_per_core": round(full / seconds, 1),
            "records_per_s_per_core": round(records / seconds, 1),
            "blind_most_common": blind["most_common"], "blind_text_only": blind["text_only"]}


def bench_grain(root: str, worker_count: int, epochs: int) -> dict:
    loader = make_loader(root, seed=0, num_epochs=epochs, worker_count=worker_count,
                         shard_options=grain.sharding.NoSharding())
    start = time.perf_counter()
    n, pixels = 0, 0
    for el in loader:
        n += 1
        pixels += el["image"].size
    seconds = time.perf_counter() - start
    return {"worker_count": worker_count, "examples": n, "examples_per_s": round(n / seconds, 1),
            "MB_per_s": round(pixels / seconds / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--read-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=123, help="synthesis seed of the one-core run")
    parser.add_argument("--composer", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ComposerConfig field in both runs (repeatable)")
    parser.add_argument("--out", help="dataset directory (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain's multiprocessing reads absl flags (SPEC §7)

    result = {"hopchain_jax": hopchain_jax.__version__, "python": platform.python_version(),
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "numpy": np.__version__}
    composer = composer_overrides(args.composer)
    result["composer_overrides"] = args.composer
    result["one_core"] = bench_one_core(args.images, args.seed, composer)
    root = args.out or tempfile.mkdtemp(prefix="hopchain-bench-")
    try:
        summary = run_synthesis(root, SynthConfig(seed=321, num_images=args.images, composer=composer), workers=args.workers, progress=False)
        result["pipeline"] = summary["this_run"]
        result["grain"] = [bench_grain(root, w, args.read_epochs) for w in (0, 2)]
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=1))
    one = result["one_core"]
    print(f"| {one['full_queries_per_s_per_core']} | {one['records_per_s_per_core']} | "
          f"{one['blind_most_common']:.1%} / {one['blind_text_only']:.1%} | "
          f"{result['pipeline']['full_queries_per_s']} ({result['pipeline']['workers']} workers) | "
          + " | ".join(str(g["examples_per_s"]) for g in result["grain"]) + " |")


if __name__ == "__main__":
    main()

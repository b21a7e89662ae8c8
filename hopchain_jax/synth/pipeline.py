"""`hopchain synth`: run the four stages over procedural scenes and write a sharded dataset.

Work is split into shards of `images_per_shard` consecutive scene seeds; each shard is synthesised
and written by one worker process, atomically (data/store.py), so a killed run resumes by rerunning
the same command. Scene seeds are `seed * 1_000_003 + image_index`, so shard contents do not depend on
how many workers ran or in what order.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import concurrent.futures
import multiprocessing as mp
import os
import time
from typing import Iterable

import numpy as np
import tqdm

import hopchain_jax
from hopchain_jax.data import store
from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.synth.composer import AnswerBalance, ComposerConfig
from hopchain_jax.synth.learnable import (LearnableConfig, format_variant_report, synthesize_learnable_shard,
                                          variant_report)
from hopchain_jax.synth.record import build_record
from hopchain_jax.synth.stats import blind_baselines
from hopchain_jax.synth.stages import (ChainQueryComposer, ImageInput, OracleCategoryIdentifier, OracleSegmenter,
                                       ProgramVerifier)
from hopchain_jax.world.render import render_scene
from hopchain_jax.world.scene import SceneConfig, sample_scene
from hopchain_jax.variants import CHAIN_VARIANTS

MIN_INSTANCES = 3
CHAINS = ("multi_hop", "learnable")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthesized dataset.

    seed: base seed; num_images: scenes to render; images_per_shard: scenes per atomic shard, which is
    also the window over which answers are balanced (composer.AnswerBalance): larger shards balance
    better, smaller ones spread over more workers.
    chains: "multi_hop" (the paper's chains, composer.py) or "learnable" (learnable.py: few large
    objects, 1-2 hop questions with small balanced answers, as "single"/"half" records; its scenes take
    their population from `scene` and the rest from `learnable`; presets.learnable_config builds one).
    Run: `hopchain synth --out DIR [--num-images N] [--seed S] [--workers W]`.
    """

    seed: int = 0
    num_images: int = 240
    images_per_shard: int = 48
    scene: SceneConfig = SceneConfig()
    composer: ComposerConfig = ComposerConfig()
    chains: str = "multi_hop"
    learnable: LearnableConfig = LearnableConfig()

    def __post_init__(self):
        if self.num_images < 1 or self.images_per_shard < 1:
            raise ValueError("SynthConfig: num_images and images_per_shard must be >= 1")
        if self.chains not in CHAINS:
            raise ValueError(f"SynthConfig: chains must be one of {CHAINS}, got {self.chains!r}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.images_per_shard)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        if self.chains == "multi_hop" and self.learnable == LearnableConfig():
            del data["chains"], data["learnable"]  # default runs keep the config.json they always had
        return data

    @classmethod
    def from_json(cls, data: dict) -> "SynthConfig":
        return cls(**{**data, "scene": SceneConfig(**data["scene"]), "composer": ComposerConfig(**data["composer"]),
                      "learnable": LearnableConfig(**data.get("learnable", {}))})


def scene_seed(config: SynthConfig, image_index: int) -> int:
    return config.seed * 1_000_003 + image_index


def _provenance(config: SynthConfig, seed: int, stages: dict) -> dict:
    return {"backend": stages, "models": None, "seed": seed, "synth_seed": config.seed,
            "versions": {"hopchain_jax": hopchain_jax.__version__, "numpy": np.__version__}}


def synthesize_shard(config: SynthConfig, shard_index: int) -> tuple[list, list, list, dict]:
    """Images, label maps, records and stats of one shard: a pure function of (config, shard_index)."""
    if config.chains == "learnable":
        return synthesize_learnable_shard(config, shard_index)
    identify, segment = OracleCategoryIdentifier(), OracleSegmenter()
    compose, verify = ChainQueryComposer(config.composer), ProgramVerifier()
    stages = {"categories": identify.name, "segmentation": segment.name, "composition": compose.name,
              "verification": verify.name}
    images, labels, records = [], [], []
    stats = _empty_stats()
    balance = AnswerBalance()  # what was kept so far: the composer keeps the rarest answers and values
    first = shard_index * config.images_per_shard
    for image_index in range(first, min(first + config.images_per_shard, config.num_images)):
        seed = scene_seed(config, image_index)
        rendered = render_scene(sample_scene(seed, config.scene))
        image = ImageInput(rendered.image, f"procedural:{seed}", rendered)
        stats["images_seen"] += 1
        seg = segment.segment(image, identify.identify(image))
        if len(seg.instances) < MIN_INSTANCES:
            stats["skipped"][f"fewer than {MIN_INSTANCES} instances"] += 1
            continue
        queries = compose.compose(image, seg.instances, np.random.default_rng([seed, 2]), balance)
        if not queries:
            stats["skipped"]["no clear chain found"] += 1
            continue
        ref = {"shard": store.shard_name(shard_index), "index": len(images), "width": image.width,
               "height": image.height, "sha256": image.sha256}
        kept = 0
        for variants in queries:
            chain_records = []
            for variant, query in variants.items():
                rec = build_record(image=ref, instances=seg.instances, query=query,
                                   chain_program=variants["full"].program, provenance=_provenance(config, seed, stages))
                verdict = verify.verify(rec)
                if not verdict.accepted:
                    stats["rejected"][verdict.reason.split(":")[0]] += 1
                    break
                rec["verification"] = verdict.record_field
                chain_records.append(rec)
            else:  # a chain lands with all its variants or not at all
                records.extend(chain_records)
                kept += 1
                for rec in chain_records:
                    count_record(stats, rec, shape=rec["variant"] == "full")
        if kept:
            images.append(rendered.image)
            labels.append(seg.labels)
        else:
            stats["skipped"]["every chain failed verification"] += 1
    return images, labels, records, stats


def count_record(stats: dict, rec: dict, shape: bool = True) -> None:
    """Count a kept record in a shard's stats: its variant, and with `shape` its hops, answer and ops."""
    stats["queries"][rec["variant"]] += 1
    if shape:
        stats["hops"][str(len(rec["hops"]))] += 1
        stats["answers"][str(rec["answer"])] += 1
        stats["ops"].update(step["op"] for step in rec["program"]["steps"])


def _empty_stats() -> dict:
    return {"images_seen": 0, "skipped": collections.Counter(), "rejected": collections.Counter(),
            "queries": collections.Counter(), "hops": collections.Counter(), "ops": collections.Counter(),
            "answers": collections.Counter()}


def merge_stats(parts: Iterable[dict]) -> dict:
    total = _empty_stats()
    for part in parts:
        total["images_seen"] += part["images_seen"]
        for key in ("skipped", "rejected", "queries", "hops", "ops", "answers"):
            total[key].update(part.get(key, {}))
    return total


def _run_shard(args: tuple[str, dict, int]) -> dict:
    root, config_json, shard_index = args
    config = SynthConfig.from_json(config_json)
    images, labels, records, stats = synthesize_shard(config, shard_index)
    stats = json.loads(json.dumps(stats))  # Counters -> plain dicts
    store.write_shard(root, shard_index, images, labels, records, {"stats": stats})
    return stats


def prepare_output(root: str | os.PathLike, config: SynthConfig) -> None:
    """Create `root` or check that it holds a run of this same config; refuse to mix runs."""
    wanted = json.loads(json.dumps(config.to_json()))  # tuples -> lists, as read back from the file
    have = store.claim_dataset_dir(root, wanted)
    if have is not None and have != wanted:
        raise ValueError(
            f"{root} already holds a dataset made with a different config (differs in "
            f"{store.config_difference(have, wanted)}); rerun with the same options to finish it, or choose a "
            "new --out directory")


def run_synthesis(root: str | os.PathLike, config: SynthConfig, workers: int = 0, progress: bool = True) -> dict:
    """Synthesize every missing shard of `config` under `root`; returns the summary of the whole dataset."""
    prepare_output(root, config)
    cleaned = store.clean_partial_shards(root)
    done = store.committed_shards(root)
    todo = [i for i in range(config.num_shards) if i not in done]
    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo) or 1))
    start = time.perf_counter()
    new_stats = []
    bar = tqdm.tqdm(total=config.num_images, unit="img", desc="synth", disable=not progress,
                    initial=sum(min(config.images_per_shard, config.num_images - i * config.images_per_shard)
                                for i in done if i < config.num_shards))
    jobs = [(str(root), config.to_json(), i) for i in todo]
    if workers == 1:
        results = map(_run_shard, jobs)
        pool = None
    else:
        # concurrent.futures (not multiprocessing.Pool): a worker that dies -- e.g. a caller's script without an
        # `if __name__ == "__main__":` guard, whose spawned children re-run it -- breaks the pool with an error
        # instead of being replaced forever (a silent hang).
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        results = (f.result() for f in concurrent.futures.as_completed([pool.submit(_run_shard, j) for j in jobs]))
    try:
        for stats in results:
            new_stats.append(stats)
            bar.update(stats["images_seen"])
            bar.set_postfix(queries=sum(sum(s["queries"].values()) for s in new_stats))
    except concurrent.futures.process.BrokenProcessPool as e:
        raise RuntimeError(
            f"synthesis worker processes died before finishing ({len(new_stats)} of {len(jobs)} shards written to "
            f"{root}; they are kept and a rerun resumes). Worker processes are spawned: a script that calls "
            f"run_synthesis with workers > 1 must do so under `if __name__ == \"__main__\":`, or pass workers=1 "
            f"(`hopchain synth --workers 1`).") from e
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.perf_counter() - start
    all_stats = merge_stats(json.loads((p / "shard.json").read_text())["stats"]
                            for _, p in sorted(store.committed_shards(root).items()))
    made = merge_stats(new_stats)
    answers = all_stats["answers"]
    full_total = sum(answers.values())
    top = answers.most_common(1)[0] if answers else (None, 0)
    summary = {
        "out": str(root), "shards": config.num_shards, "shards_resumed": len(done), "partial_shards_removed": cleaned,
        "images_seen": all_stats["images_seen"], "skipped": dict(all_stats["skipped"]),
        "rejected": dict(all_stats["rejected"]), "queries": dict(all_stats["queries"]),
        "hops": dict(sorted(all_stats["hops"].items())), "ops": dict(all_stats["ops"].most_common()),
        "answers": dict(sorted(answers.items(), key=lambda kv: int(kv[0]))),
        "most_common_answer": {"answer": None if top[0] is None else int(top[0]),
                               "share": round(top[1] / full_total, 4) if full_total else None},
        "blind": blind_baselines(HopChainDataset(root).records()),
        "this_run": {"images": made["images_seen"], "records": sum(made["queries"].values()),
                     "full_queries": made["queries"].get("full", 0), "seconds": round(elapsed, 2),
                     "full_queries_per_s": round(made["queries"].get("full", 0) / elapsed, 1) if elapsed else None,
                     "records_per_s": round(sum(made["queries"].values()) / elapsed, 1) if elapsed else None,
                     "workers": workers},
    }
    if config.chains != "multi_hop":  # hops and answers above then count every record, not full chains
        summary["chains"] = config.chains
        summary["variants"] = variant_report(HopChainDataset(root).records())
    return summary


def _histogram_line(answers: dict) -> str:
    """'0-4: 12%, 5-9: 20%, ...' over buckets of 5, then the largest answer."""
    total = sum(answers.values())
    if not total:
        return "none"
    buckets = collections.Counter()
    for answer, n in answers.items():
        buckets[int(answer) // 5] += n
    parts = [f"{5 * b}-{5 * b + 4}: {n / total:.0%}" for b, n in sorted(buckets.items())]
    return ", ".join(parts) + f" (max {max(int(a) for a in answers)})"


def format_summary(summary: dict) -> str:
    run = summary["this_run"]
    every = "chains" in summary  # a learnable-world run: no full chains, stats over every record
    lines = [
        f"dataset: {summary['out']}  ({summary['shards']} shards, {summary['shards_resumed']} already done"
        + (f", {summary['partial_shards_removed']} partial shards redone" if summary["partial_shards_removed"] else "") + ")",
        f"images seen: {summary['images_seen']}   skipped: {sum(summary['skipped'].values())}"
        + "".join(f"\n  - {why}: {n}" for why, n in summary["skipped"].items()),
        "queries per variant: " + ", ".join(f"{v}={summary['queries'].get(v, 0)}" for v in CHAIN_VARIANTS),
        ("hops per question: " if every else "hops per full chain: ")
        + ", ".join(f"{k} hops: {v}" for k, v in summary["hops"].items()),
        ("program ops (all records): " if every else "program ops (full chains): ")
        + ", ".join(f"{k}={v}" for k, v in summary["ops"].items()),
        ("answers (all records): " if every else "full-chain answers: ") + _histogram_line(summary["answers"]),
    ]
    if every:
        lines += format_variant_report(summary["variants"])
    blind = summary["blind"]
    if blind["queries"]:
        top = summary["most_common_answer"]
        lines.append(f"blind baselines on full queries (no image): most common answer ({top['answer']}) "
                     f"{blind['most_common']:.1%}, text-only rule {blind['text_only']:.1%} "
                     f"(goal: <= 10% and <= 15%; rule: {blind['text_only_rule']})")
    if summary["rejected"]:
        lines.append("rejected by verification: " + ", ".join(f"{k}={v}" for k, v in summary["rejected"].items()))
    lines.append(f"this run: {run['images']} images, {run['full_queries']} full-chain queries "
                 f"({run['records']} records with variants) in {run['seconds']} s with {run['workers']} workers "
                 f"= {run['full_queries_per_s']} full queries/s, {run['records_per_s']} records/s")
    return "\n".join(lines)

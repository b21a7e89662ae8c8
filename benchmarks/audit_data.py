"""Audit a synthesized dataset for the defects of issue 31: near-duplicate queries per image, counts combined
with themselves, subtractions that cancel, compare steps whose swap leaves the answer unchanged, size classes
that contradict what is seen, and how much of an image's questions share one answer.

  python benchmarks/audit_data.py DATASET_DIR [--variant full half single]

Prints one JSON line per variant, with its blind baselines: stats.py's most-common answer and text-only rule
(priors fitted on that variant's records) and the learned one of synth/blind_classifier.py (TF-IDF + logistic
regression trained on other images' questions). The near-duplicate test is independent of synth/signature.py: two queries of an image
are duplicates when they use the same instances, the same (op, instances, value) of every number-valued hop,
the same combine ops and the same answer.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hopchain_jax.data.store import HopChainDataset  # noqa: E402
from hopchain_jax.synth.blind_classifier import classifier_baseline  # noqa: E402
from hopchain_jax.synth.program import Executor, ProgramError  # noqa: E402
from hopchain_jax.synth.stats import blind_baselines  # noqa: E402


def _is_number(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def duplicate_key(rec: dict) -> tuple:
    hops = rec["hops"]
    leaves = sorted((h["op"], tuple(sorted(h["instance_ids"])), h["value"]) for h in hops if _is_number(h["value"]))
    return (frozenset(i for h in hops for i in h["instance_ids"]), tuple(leaves),
            tuple(h["combine"]["op"] for h in hops if h.get("combine")), rec["answer"])


def audit(records: list[dict]) -> dict:
    seen: dict[tuple, set] = collections.defaultdict(set)
    answers: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    out = collections.Counter()
    size_total, size_wrong = collections.Counter(), collections.Counter()
    for rec in records:
        image = (rec["image"]["shard"], rec["image"]["index"])
        key = duplicate_key(rec)
        out["near_duplicates"] += key in seen[image]
        seen[image].add(key)
        answers[image][rec["answer"]] += 1
        ex = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"])
        answer, env = ex.run(rec["program"])
        found = {v for v in env.values() if isinstance(v, str)}
        hops = rec["hops"]
        for hop in hops:
            if not hop.get("combine"):
                continue
            other = hops[hop["combine"]["with_hop"]]
            counted, other_counted = set(hop["instance_ids"]) - found, set(other["instance_ids"]) - found
            out["self_combines"] += bool(counted) and hop["op"] == other["op"] and counted == other_counted
            out["cancelling_subtractions"] += hop["combine"]["op"] == "sub" and bool(counted & other_counted)
        steps = rec["program"]["steps"]
        for k, step in enumerate(steps):
            if step["op"] == "compare":
                out["compare_steps"] += 1
                a, b = (ex._instance(step["args"][x], env)["id"] for x in ("a", "b"))
                prefix = {s["id"]: env[s["id"]] for s in steps[:k]}
                prefix[step["id"]] = b if env[step["id"]] == a else a
                try:
                    out["compare_swaps_same_answer"] += ex.run(rec["program"], start=k + 1, env=prefix)[0] == answer
                except ProgramError:
                    pass
            size = (step["args"].get("filter") or {}).get("size") if step["op"] == "select" else None
            if isinstance(size, str):
                inst = ex.by_id[env[step["id"]]]
                areas = sorted(c["area"] for c in ex.by_category[inst["category"]])
                size_total[size] += 1
                size_wrong[size] += {"large": inst["area"] != areas[-1], "small": inst["area"] != areas[0],
                                     "medium": inst["area"] in (areas[0], areas[-1])}[size]
    shares = [c.most_common(1)[0][1] / sum(c.values()) for c in answers.values()]
    return {"records": len(records), **{k: out[k] for k in ("near_duplicates", "self_combines", "cancelling_subtractions",
                                                            "compare_steps", "compare_swaps_same_answer")},
            "size_class_against_area_order": {k: f"{size_wrong[k]}/{size_total[k]}" for k in sorted(size_total)},
            "mean_top_answer_share_per_image": round(sum(shares) / max(1, len(shares)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--variant", nargs="+", default=["full"])
    args = parser.parse_args()
    every = list(HopChainDataset(args.dataset).records())
    for variant in args.variant:
        records = [r for r in every if r["variant"] == variant]
        rule = blind_baselines(records, variant)
        blind = {"most_common": rule["most_common"], "text_only": rule["text_only"],
                 "classifier": classifier_baseline(records)["accuracy"]}
        print(json.dumps({"variant": variant, **audit(records), "blind": blind}), flush=True)


if __name__ == "__main__":
    main()

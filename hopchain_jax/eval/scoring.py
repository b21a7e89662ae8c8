"""Scoring sampled answers and aggregating them into accuracies with intervals (no JAX import).

One evaluated item is a record and its k sampled responses. Per response (`score_response`): the answer
span (rl.reward.extract_answer), whether it parses to the record's number, whether it is a format failure
(no parseable answer) and whether it was truncated (no EOS within the token limit; scored wrong unless
`count_truncated`, the RL reward's default, TrainConfig.zero_reward_truncated).

Per item, over its k responses:
  mean@k  fraction of the k responses that are correct;
  pass@k  1 if any of them is correct;
  maj@k   1 if the most common parsed answer (ties: the one that appeared first) equals the record's.
Over items (`accuracy_table`): the mean of each, with a 95% interval: Wilson's score interval for the
0/1 metrics (pass@k, maj@k, and mean@1), the normal interval of the per-item means for mean@k (k > 1).
"""
from __future__ import annotations

import collections
import dataclasses
import math
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from hopchain_jax.rl.reward import answer_to_fraction, extract_answer, parse_number

__all__ = ["ResponseScore", "score_response", "item_metrics", "wilson_interval", "mean_interval",
           "paired_difference",
           "accuracy_table", "LENGTH_BUCKETS", "length_bucket", "answer_range"]

Z95 = 1.959963984540054
#: response-length buckets in tokens (lower edges); the paper's long-CoT analysis bins by length
LENGTH_BUCKETS = (0, 64, 128, 256, 512, 1024, 2048, 4096)
#: answer ranges (lower edges) for the breakdown by answer size
ANSWER_RANGES = (0, 5, 10, 20, 50, 100)


@dataclasses.dataclass(frozen=True)
class ResponseScore:
    """parsed: the answer as a string (normalised Fraction text) or None; correct: counts as right;
    format_failure: no parseable answer; truncated: ended at the token limit without EOS; counted: its
    answer takes part in scoring and voting (not truncated, or truncations counted)."""

    parsed: str | None
    correct: bool
    format_failure: bool
    truncated: bool
    counted: bool = True


def score_response(text: str, answer: Any, finish_reason: str = "stop", *, count_truncated: bool = False
                   ) -> ResponseScore:
    """Score one response against the record's numeric answer (exact rational equality, as the reward)."""
    truncated = finish_reason == "length"
    span = extract_answer(text or "")
    value = parse_number(span) if span is not None else None
    parsed = None if value is None else str(value)
    right = value is not None and value == answer_to_fraction(answer)
    counted = count_truncated or not truncated
    return ResponseScore(parsed, bool(right and counted), value is None, truncated, counted)


def item_metrics(scores: Sequence[ResponseScore], answer: Any) -> dict[str, float]:
    """mean@k, pass@k, maj@k of one item's k responses, plus its format-failure and truncation rates."""
    k = len(scores)
    if k == 0:
        raise ValueError("item_metrics: an item needs at least one response")
    voters = [s.parsed for s in scores if s.parsed is not None and s.counted]
    votes = collections.Counter(voters)
    majority = max(votes, key=lambda v: (votes[v], -voters.index(v)), default=None)
    return {"mean": sum(s.correct for s in scores) / k, "pass": float(any(s.correct for s in scores)),
            "maj": float(majority is not None and Fraction(majority) == answer_to_fraction(answer)),
            "format_failure": sum(s.format_failure for s in scores) / k,
            "truncated": sum(s.truncated for s in scores) / k}


def wilson_interval(successes: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (n = 0 -> (0, 1))."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """95% normal interval of a mean of per-item values, clipped to `bounds` (the values' range)."""
    n = len(values)
    if n == 0:
        return bounds
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    half = Z95 * math.sqrt(var / n)
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of a[i] - b[i] over paired per-item values in [0, 1], with its 95% normal interval (in [-1, 1]):
    {"value", "low", "high"}."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    low, high = mean_interval(d, (-1.0, 1.0))
    return {"value": round(sum(d) / len(d), 4) if d else 0.0, "low": round(low, 4), "high": round(high, 4)}


def accuracy_table(items: Iterable[Mapping[str, Any]], k: int) -> dict[str, Any]:
    """Aggregate items (each with "metrics" from item_metrics) into
    {"items", "mean@k": {"value", "low", "high"}, "pass@k": ..., "maj@k": ..., "format_failure", "truncated"}."""
    metrics = [it["metrics"] for it in items]
    n = len(metrics)
    out: dict[str, Any] = {"items": n}
    for name in ("mean", "pass", "maj"):
        values = [m[name] for m in metrics]
        value = sum(values) / n if n else 0.0
        low, high = wilson_interval(sum(values), n) if (name != "mean" or k == 1) else mean_interval(values)
        out[f"{name}@{k}"] = {"value": round(value, 4), "low": round(low, 4), "high": round(high, 4)}
    out["format_failure"] = round(sum(m["format_failure"] for m in metrics) / n, 4) if n else 0.0
    out["truncated"] = round(sum(m["truncated"] for m in metrics) / n, 4) if n else 0.0
    return out


def length_bucket(tokens: int) -> str:
    """The response-length bucket of a response of `tokens` tokens, e.g. "128-255", "4096+"."""
    edges = LENGTH_BUCKETS
    for lo, hi in zip(edges, edges[1:]):
        if tokens < hi:
            return f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def answer_range(answer: Any) -> str:
    """The breakdown bucket of a numeric answer: "<0", "0-4", "5-9", ..., "100+", or "non-integer"."""
    value = answer_to_fraction(answer)
    if value.denominator != 1:
        return "non-integer"
    if value < 0:
        return "<0"
    for lo, hi in zip(ANSWER_RANGES, ANSWER_RANGES[1:]):
        if value < hi:
            return f"{lo}-{hi - 1}"
    return f"{ANSWER_RANGES[-1]}+"

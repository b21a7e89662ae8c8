"""Per-hop error localisation (`hopchain eval --localize`): at which hop does a model lose a chain?

For every full chain the model got wrong, each hop is asked again as a sub-question built from the
record, with the earlier hops solved for it (their gold rationale steps), and the first hop it gets wrong is
reported. Probes, in hop order (the record's hops and gold rationale: "Step j: <hop text> <its result>"):

  number hop k (counts, parts, read numbers, letters: a numeric value)
      probe A(k): gold steps 1..k, then hop k's text; the gold answer is hop k's value.
  instance hop k (select / relate / superlative / between: the value is an instance)
      probe R(k): gold steps 1..k, then the texts of hops k..m, where m is the first number hop that
      depends on k; the gold answer is hop m's value. It tests finding k's instance through m.
  arithmetic (the chain combines numbers)
      probe C: every gold step, then the question's closing instruction (e.g. "What is the second number
      minus the first?"); the gold answer is the record's.

The first wrong hop, walking the hops in order: a number hop whose A probe is wrong; an instance hop
whose R probe is wrong while the probe that follows it with k resolved (R(k+1) or A(m)) is right; then
the arithmetic. A chain whose probes are all right fails only as a whole ("not localized"). Each hop is
classed by kind: "level1" / "level2" (perception hops by level), "instance_chain" (hop kind), or
"arithmetic"; and by its program op and level.

Probes go through the same backend and settings as the evaluation (a probe is right when its majority
answer is), cached and appended to OUT/localize.jsonl per chain (crash-safe, resumable).
"""
from __future__ import annotations

import collections
import re
from typing import Any, Sequence

from hopchain_jax.eval.scoring import item_metrics, score_response, wilson_interval

__all__ = ["Probe", "chain_probes", "first_wrong_hop", "localize_items", "localization_summary"]

_STEP_RE = re.compile(r"Step (\d+): ")
PROBE_INTRO = "These first steps of a question about this image are already solved correctly:"


class Probe(dict):
    """{"hop": index, "kind", "op", "level", "question", "gold"} (a dict, so it is written to JSON as is)."""


def rationale_steps(record: dict) -> list[str]:
    """The gold rationale cut into its "Step j:" parts (hop text + its result), one per hop; [] if it
    does not have one part per hop."""
    text = record.get("rationale") or ""
    marks = list(_STEP_RE.finditer(text))
    if len(marks) != len(record.get("hops") or []):
        return []
    steps = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        part = text[m.end():end].strip()
        if i + 1 == len(marks):   # the last step ends where the combination / answer sentence starts
            part = re.split(r"\s+(?:Combining|The answer is)", part)[0].strip()
        steps.append(part)
    return steps


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def hop_kind(hop: dict) -> str:
    """"instance_chain", "level1" or "level2"."""
    if hop.get("kind") == "instance_chain":
        return "instance_chain"
    return f"level{int(hop.get('level') or 2)}"


def _closure(hops: list[dict], k: int) -> set[int]:
    """Hops hop k depends on, transitively."""
    seen, todo = set(), list(hops[k].get("depends_on") or [])
    while todo:
        j = todo.pop()
        if j not in seen:
            seen.add(j)
            todo.extend(hops[j].get("depends_on") or [])
    return seen


def _question(steps: Sequence[str], texts: Sequence[str], ask: str) -> str:
    solved = (PROBE_INTRO + "\n" + "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps)) + "\nNow: "
              if steps else "")
    return solved + " ".join(texts) + " " + ask


def chain_probes(record: dict) -> list[Probe]:
    """The probes of one full chain (module docstring), in hop order, the arithmetic probe last."""
    hops = record.get("hops") or []
    steps = rationale_steps(record)
    if not hops or not steps:
        return []
    probes = []
    for k, hop in enumerate(hops):
        base = {"hop": k, "op": hop.get("op"), "level": hop.get("level")}
        if _is_number(hop.get("value")):
            probes.append(Probe(base, kind=hop_kind(hop), probe="A", gold=hop["value"],
                                question=_question(steps[:k], [hop["text"]], "What number does this step give?")))
            continue
        m = next((j for j in range(k + 1, len(hops)) if _is_number(hops[j].get("value")) and k in _closure(hops, j)),
                 None)
        if m is None:
            continue
        probes.append(Probe(base, kind=hop_kind(hop), probe="R", gold=hops[m]["value"], through=m,
                            question=_question(steps[:k], [h["text"] for h in hops[k:m + 1]],
                                               "What number does the last step give?")))
    if any(h.get("combine") for h in hops):
        texts = " ".join(h["text"] for h in hops)
        tail = record["question"][len(texts):].strip() if record["question"].startswith(texts) else record["question"]
        probes.append(Probe(hop=len(hops), kind="arithmetic", op=hops[-1]["combine"]["op"], level=None, probe="C",
                            gold=record["answer"], question=_question(steps, [], tail)))
    return probes


def first_wrong_hop(probes: Sequence[dict], right: Sequence[bool]) -> dict | None:
    """The first wrong hop of a chain from its probes and whether each was answered right (module docstring),
    as {"hop", "kind", "op", "level"}, or None when every probe was right."""
    by_hop = {p["hop"]: (p, ok) for p, ok in zip(probes, right)}
    for p, ok in zip(probes, right):
        if ok:
            continue
        if p["probe"] == "R":   # blame the instance only when the probe after it, with it resolved, is right
            m = p["through"]
            after = next((by_hop[j] for j in range(p["hop"] + 1, m + 1) if j in by_hop and
                          (j == m or by_hop[j][0].get("through") == m)), None)
            if after is None or not after[1]:
                continue
        return {k: p[k] for k in ("hop", "kind", "op", "level")}
    return None


def localize_items(items: Sequence[dict], records: dict[str, dict], ask) -> list[dict]:
    """Localise the wrong full chains among evaluated `items` (items.jsonl lines): ask(questions, records) ->
    per question a list of response (text, finish_reason) pairs. Returns one line per chain:
    {"id", "probes": [... with "parsed", "right"], "first_wrong": {...} | None}."""
    lines = []
    for item in items:
        rec = records[item["id"]]
        probes = chain_probes(rec)
        if not probes:
            lines.append({"id": rec["id"], "probes": [], "first_wrong": None, "error": "no per-hop rationale"})
            continue
        answers = ask([p["question"] for p in probes], [rec] * len(probes))
        done = []
        for p, responses in zip(probes, answers):
            if isinstance(responses, str):   # the backend failed this probe
                done.append({**p, "error": responses, "right": False})
                continue
            scores = [score_response(t, p["gold"], r) for t, r in responses]
            done.append({**p, "parsed": [s.parsed for s in scores], "right": bool(item_metrics(scores, p["gold"])["maj"])})
        errors = [d["error"] for d in done if "error" in d]
        lines.append({"id": rec["id"], "probes": done, "error": errors[0] if errors else None,
                      "first_wrong": first_wrong_hop(done, [d["right"] for d in done])})
    return lines


def localization_summary(lines: Sequence[dict]) -> dict[str, Any]:
    """Over localised chains: where the first wrong hop falls (counts and shares by kind, op, level) and
    each probe kind's error rate (wrong probes / probes asked, with a 95% interval) by kind, op and level."""
    good = [line for line in lines if line.get("error") is None and line["probes"]]
    first = {key: collections.Counter() for key in ("kind", "op", "level")}
    asked = {key: collections.defaultdict(list) for key in ("kind", "op", "level")}
    for line in good:
        fw = line["first_wrong"]
        for key in first:
            first[key][str(fw[key]) if fw else "not localized"] += 1
        for p in line["probes"]:
            for key in asked:
                asked[key][str(p[key])].append(not p["right"])
    n = len(good)
    out: dict[str, Any] = {"chains": n, "failed": len(lines) - n, "first_wrong": {}, "probe_error_rate": {}}
    for key in first:
        out["first_wrong"][key] = {g: {"chains": c, "share": round(c / n, 4)} for g, c in first[key].most_common()}
        out["probe_error_rate"][key] = {
            g: {"probes": len(v), "error_rate": round(sum(v) / len(v), 4),
                "low": round(wilson_interval(sum(v), len(v))[0], 4), "high": round(wilson_interval(sum(v), len(v))[1], 4)}
            for g, v in sorted(asked[key].items())}
    return out

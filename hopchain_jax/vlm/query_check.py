"""Stage 3 output check: a VLM-written multi-hop query, parsed from its JSON and held to SPEC §3.

The composer model sees the image, a crop of each instance and the instance list (ids and 0-1000
boxes), and answers with JSON:
    {"question": str, "answer": number,
     "hops": [{"level": 1|2, "kind": "perception"|"instance_chain", "instances": [ids],
               "depends_on": [earlier hop indices], "text": str, "value": its result (optional)}, ...]}
`check_query` returns the schema-v2 pieces (hops, question, answer; a hop's value is the model's
stated result, an instance id or a number, or None; the last hop's value is the answer) or the reasons
the output is rejected: unreadable JSON, unknown instance ids, fewer than 3 or more than 6 instances,
fewer than 3 hops, a hop after the first that depends on nothing earlier, a missing Level-1 / Level-2
perception hop or instance-chain hop, a non-numeric answer, a last hop whose stated value is not the
answer, or a question that refers to boxes, masks, ids, coordinates or crops (which the solver will not see).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

from hopchain_jax.synth.record import FORBIDDEN_WORDS
from hopchain_jax.vlm.parse import answer_json_values

_COORDS = re.compile(r"\(\s*\d{1,4}\s*,\s*\d{1,4}\s*(,\s*\d{1,4}\s*,\s*\d{1,4}\s*)?\)|\[\s*\d{1,4}\s*,\s*\d{1,4}\s*,")


@dataclasses.dataclass(frozen=True)
class CheckedQuery:
    """hops: schema-v2 hop dicts (value None: a model-written hop has no executable value); problems:
    every rule the output breaks (empty: accepted)."""

    question: str | None
    answer: int | float | None
    hops: list[dict]
    problems: list[str]


def _query_json(text: str) -> dict | None:
    return next((v for v in answer_json_values(text) if isinstance(v, dict) and "question" in v), None)


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, str):
        try:
            return _number(json.loads(value.strip()))
        except (json.JSONDecodeError, ValueError):
            return None
    return None


def check_query(text: str, instance_ids: Sequence[str]) -> CheckedQuery:
    """Parse and check one stage-3 answer against the image's instance ids (see the module docstring)."""
    data = _query_json(text or "")
    if data is None:
        return CheckedQuery(None, None, [], ["no JSON object with a question in the output"])
    problems = []
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append("the question is missing or empty")
        question = None
    else:
        bad = sorted({w.lower() for w in FORBIDDEN_WORDS.findall(question)})
        if bad:
            problems.append(f"the question refers to things the solver does not see: {bad}")
        if _COORDS.search(question) or any(re.search(rf"\b{re.escape(i)}\b", question) for i in instance_ids):
            problems.append("the question gives coordinates or instance ids")
    answer = _number(data.get("answer"))
    if answer is None:
        problems.append(f"the answer {data.get('answer')!r} is not a single number")
    known = set(instance_ids)
    hops = []
    raw_hops = data.get("hops") if isinstance(data.get("hops"), list) else []
    for i, raw in enumerate(raw_hops):
        if not isinstance(raw, dict):
            problems.append(f"hop {i} is not an object")
            continue
        ids = [str(x) for x in raw.get("instances") or []]
        deps = [d for d in raw.get("depends_on") or [] if isinstance(d, int)]
        unknown = sorted(set(ids) - known)
        if unknown:
            problems.append(f"hop {i} names unknown instances {unknown}")
        if raw.get("kind") not in ("perception", "instance_chain") or raw.get("level") not in (1, 2):
            problems.append(f"hop {i} has kind {raw.get('kind')!r} level {raw.get('level')!r}")
        if any(not 0 <= d < i for d in deps) or (i > 0 and not deps):
            problems.append(f"hop {i} must depend on earlier hops, got {raw.get('depends_on')!r}")
        value = raw.get("value")
        value = value if isinstance(value, str) and value in known else _number(value)
        hops.append({"index": i, "kind": raw.get("kind"), "level": raw.get("level"), "op": raw.get("op", "vlm"),
                     "instance_ids": ids, "depends_on": deps, "text": str(raw.get("text", "")), "value": value,
                     "combine": None})
    if hops and answer is not None:
        if hops[-1]["value"] is not None and hops[-1]["value"] != answer:
            problems.append(f"the last hop's value {hops[-1]['value']!r} is not the answer {answer!r}")
        hops[-1]["value"] = answer  # schema: the last hop's value is the answer
    used = {i for h in hops for i in h["instance_ids"]}
    if len(hops) < 3:
        problems.append(f"{len(hops)} hops; a chain needs at least 3")
    if not 3 <= len(used) <= 6:
        problems.append(f"the chain uses {len(used)} instances; it needs 3 to 6")
    kinds = {(h["kind"], h["level"]) for h in hops}
    for need, what in ((("perception", 1), "Level-1 perception hop"), (("perception", 2), "Level-2 perception hop")):
        if need not in kinds:
            problems.append(f"no {what}")
    if not any(h["kind"] == "instance_chain" for h in hops):
        problems.append("no instance-chain hop")
    return CheckedQuery(question, answer, hops, problems)

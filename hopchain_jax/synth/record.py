"""Schema-v1 records (SPEC §3): building one from a realised query, and checking every invariant."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from hopchain_jax.synth.program import ProgramError, execute

SCHEMA_VERSION = 1
HOP_KINDS = ("perception", "instance_chain")
VARIANTS = ("full", "half", "single")
# Words a question may not use: it names objects by what is visible, never by annotation artefacts.
FORBIDDEN_WORDS = re.compile(
    r"\b(box|boxes|bbox|bboxes|bounding|mask|masks|segment|segments|segmentation|coordinate|coordinates|"
    r"crop|crops|cropped|id|ids|instance|instances|label|labels)\b", re.IGNORECASE)


def record_id(image_sha256: str, chain_program: dict, variant: str) -> str:
    """Stable id from content: the image hash, the full chain's canonical program and the variant.

    Variants are keyed by their full chain: two chains that end in the same hop have identical
    single-hop programs, and each still owns its own ablation record.
    """
    blob = json.dumps({"image": image_sha256, "program": chain_program, "variant": variant}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_record(*, image: dict, instances: list[dict], query: Any, chain_program: dict, provenance: dict) -> dict:
    """A schema-v1 record (verification filled in by the verifier). `query` is a RealizedQuery;
    chain_program: the program of its full chain (names the chain in the id)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "id": record_id(image["sha256"], chain_program, query.variant),
        "image": image,
        "instances": instances,
        "hops": query.hops,
        "program": query.program,
        "question": query.question,
        "answer": query.answer,
        "variant": query.variant,
        "rationale": query.rationale,
        "provenance": provenance,
        "verification": None,
    }


def validate_record(record: dict, check_program: bool = True) -> list[str]:
    """Every way `record` breaks SPEC §3; empty when it is valid.

    Shape invariants of a chain (3-6 instances, >= 3 hops, the three hop types) apply to the "full"
    variant; "half" and "single" are the ablation's shortened chains and keep every other rule.
    """
    problems: list[str] = []
    need = ("id", "image", "instances", "hops", "question", "answer", "variant", "provenance", "verification")
    missing = [k for k in need if k not in record]
    if missing:
        return [f"missing fields {missing}"]
    image = record["image"]
    for key in ("width", "height", "sha256"):
        if key not in image:
            problems.append(f"image lacks {key}")
    ids = set()
    for inst in record["instances"]:
        ids.add(inst["id"])
        box = inst["bbox"]
        if not (len(box) == 4 and all(isinstance(v, int) and 0 <= v <= 1000 for v in box)
                and box[0] < box[2] and box[1] < box[3]):
            problems.append(f"instance {inst['id']} has a bad bbox {box}")
    hops = record["hops"]
    if not hops:
        return problems + ["no hops"]
    for i, hop in enumerate(hops):
        if hop["index"] != i:
            problems.append(f"hop {i} has index {hop['index']}")
        if hop["kind"] not in HOP_KINDS or hop["level"] not in (1, 2):
            problems.append(f"hop {i} has kind {hop['kind']!r} level {hop['level']!r}")
        if any(not 0 <= d < i for d in hop["depends_on"]):
            problems.append(f"hop {i} depends on a hop that is not earlier: {hop['depends_on']}")
        if i > 0 and not hop["depends_on"]:
            problems.append(f"hop {i} depends on no earlier hop")
        unknown = set(hop["instance_ids"]) - ids
        if unknown:
            problems.append(f"hop {i} uses unknown instances {sorted(unknown)}")
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        problems.append(f"answer {answer!r} is not a number")
    if hops[-1]["value"] != answer:
        problems.append(f"last hop value {hops[-1]['value']!r} != answer {answer!r}")
    if record["variant"] not in VARIANTS:
        problems.append(f"variant {record['variant']!r}")
    bad = FORBIDDEN_WORDS.findall(record["question"])
    if bad:
        problems.append(f"question mentions {sorted(set(w.lower() for w in bad))}")
    if record["variant"] == "full":
        used = {i for hop in hops for i in hop["instance_ids"]}
        if not 3 <= len(used) <= 6:
            problems.append(f"full chain uses {len(used)} instances, needs 3-6")
        if len(hops) < 3:
            problems.append(f"full chain has {len(hops)} hops, needs >= 3")
        kinds = {(h["kind"], h["level"]) for h in hops}
        if ("perception", 1) not in kinds:
            problems.append("no Level-1 perception hop")
        if ("perception", 2) not in kinds:
            problems.append("no Level-2 perception hop")
        if not any(h["kind"] == "instance_chain" for h in hops):
            problems.append("no instance-chain hop")
    if check_program and "program" in record and record["program"] is not None:
        try:
            got = execute(record)
        except ProgramError as e:
            problems.append(f"program does not execute: {e}")
        else:
            if got != answer:
                problems.append(f"program gives {got}, answer is {answer}")
    return problems

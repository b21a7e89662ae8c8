"""Schema-v2 records (SPEC §3 plus docs/record_schema.md): building one from a realised query, and
checking every invariant.

v2 over v1: each hop's `value` is that hop's own result and its `combine` (or null) the arithmetic that
joins it with an earlier hop's value; the answer is the last hop's combined value when it has one;
`variant_of` links a half/single record to its full record; `box_convention` names the bbox format;
instances may list the instances they are in front of (`occludes`); image paths in exports are relative
to the JSONL file.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from hopchain_jax.synth.program import ProgramError, execute
from hopchain_jax.variants import CHAIN_VARIANTS

SCHEMA_VERSION = 2
BOX_CONVENTION = ("bbox = [x0, y0, x1, y1], integers in 0..1000: x * 1000 / image width, y * 1000 / image height, "
                  "origin at the top-left corner, y growing downwards")
HOP_KINDS = ("perception", "instance_chain")
VARIANTS = CHAIN_VARIANTS
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
    """A schema-v2 record (verification filled in by the verifier). `query` is a RealizedQuery;
    chain_program: the program of its full chain (names the chain in the id; half/single records point
    to the full record through `variant_of`)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "id": record_id(image["sha256"], chain_program, query.variant),
        "variant_of": None if query.variant == "full" else record_id(image["sha256"], chain_program, "full"),
        "image": image,
        "box_convention": BOX_CONVENTION,
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
    last = hops[-1].get("combine") or hops[-1]
    if last["value"] != answer:
        problems.append(f"last hop's {'combined ' if hops[-1].get('combine') else ''}value {last['value']!r} != answer {answer!r}")
    for i, hop in enumerate(hops):
        combine = hop.get("combine")
        if combine is None:
            continue
        j = combine.get("with_hop")
        if combine.get("op") not in ("add", "sub", "mul") or not isinstance(j, int) or not 0 <= j < i:
            problems.append(f"hop {i} has a bad combine {combine}")
            continue
        a, b = hops[j]["value"], hop["value"]
        if combine.get("value") not in {"add": (a + b,), "sub": (a - b, b - a), "mul": (a * b,)}[combine["op"]]:
            problems.append(f"hop {i} combines {a} and {b} by {combine['op']} into {combine['value']}")
    if record["variant"] == "full" and record.get("variant_of") is not None:
        problems.append("a full record has a variant_of")
    if record["variant"] in ("half", "single") and record.get("schema_version", 1) >= 2 and not record.get("variant_of"):
        problems.append(f"{record['variant']} record does not name its full record in variant_of")
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

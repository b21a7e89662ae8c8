"""Users' own (image, question, number) data into the HopChain TensorStore format.

Input: a JSONL file, one object per line::

    {"image": "imgs/cat.jpg", "question": "How many legs ...?", "answer": 4, "id": "optional-id"}

``image`` is relative to ``images_root`` (default: the JSONL's folder) unless absolute; ``answer`` is a JSON
number or a numeric string ("12", "2.5", "-3e2"); ``id`` (string or integer) defaults to a content hash of
(image pixels, question, answer). Other keys are ignored.

Bad lines are reported one by one (``file:line: skipped (reason): detail``) and skipped; the run goes on:
invalid UTF-8 / JSON, a missing or empty key, a non-numeric answer, an unreadable, corrupt or too small image
(``synth.user_images.check_image``), an id seen on an earlier line. Blank lines are ignored.

Output: the same layout as ``hopchain synth`` (store.py), so ``HopChainSource`` / ``make_mixture`` read it.
Shard k holds the records of JSONL lines [k*images_per_shard + 1, (k+1)*images_per_shard]: at most
``images_per_shard`` images, fewer when lines are bad or share an image (identical pixels are stored once
per shard). Records are schema v2 with ``variant: "external"``, no instances/hops/program, ``rationale:
null``, ``provenance: {"backend": "jsonl-import", "source": <jsonl>, "line": n}``.

Crash safety as in synth: ``config.json`` (the JSONL's path, size and mtime, images_root, images_per_shard) is
written first; shards are built in a temporary directory and renamed into place; a rerun of the same command
skips the committed shards and redoes the rest, so no record is lost or duplicated. A different JSONL (or the
same one changed since), or other options, into the same ``out_dir`` is refused.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tqdm
from PIL import Image, ImageOps

from hopchain_jax.data import store
from hopchain_jax.models.image_processor import to_rgb_uint8
from hopchain_jax.synth.user_images import check_image
from hopchain_jax.variants import EXTERNAL

__all__ = ["import_jsonl", "parse_answer", "format_import_summary", "IMPORT_KIND"]

IMPORT_KIND = "jsonl-import"
MAX_PROBLEMS_IN_SUMMARY = 1000
_REQUIRED = ("image", "question", "answer")


class _BadLine(Exception):
    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


def parse_answer(value) -> int | float:
    """A JSON number (floats parsed as Decimal) or numeric string -> int when integral, else float.

    Raises ValueError for booleans, NaN/infinity, and anything that is not a number.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{json.dumps(value)} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, str):
        text = value.strip()
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"{json.dumps(value, ensure_ascii=False)} is not a number") from None
    if not isinstance(value, Decimal):
        raise ValueError(f"{json.dumps(value, ensure_ascii=False, default=str)} is not a number")
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _import_config(jsonl: Path, images_root: Path, images_per_shard: int) -> dict:
    st = jsonl.stat()
    return {"kind": IMPORT_KIND, "schema_version": 1, "source": str(jsonl), "source_size": st.st_size,
            "source_mtime_ns": st.st_mtime_ns, "images_root": str(images_root), "images_per_shard": images_per_shard}


def _prepare_output(root: Path, config: dict) -> None:
    """Create ``root`` or check it holds an import of this same JSONL with the same options."""
    have = store.claim_dataset_dir(root, config)
    if have is not None:
        if have == config:
            return
        if have.get("kind") != IMPORT_KIND:
            raise ValueError(f"{root} already holds a dataset that is not a JSONL import (e.g. `hopchain synth` "
                             "output); choose a new output directory")
        if have.get("source") != config["source"]:
            raise ValueError(f"{root} already holds an import of {have.get('source')}; refusing to import "
                             f"{config['source']} into it (records would mix): choose a new output directory")
        if (have.get("source_size"), have.get("source_mtime_ns")) != (config["source_size"], config["source_mtime_ns"]):
            raise ValueError(f"{config['source']} changed since the import into {root} began (size or modification "
                             "time differ), so the import cannot be resumed safely: import it into a new output "
                             "directory (or delete this one)")
        diff = store.config_difference(have, config)
        raise ValueError(f"{root} holds an import of {config['source']} made with different options ({diff}: "
                         f"{ {k: have.get(k) for k in diff} }); rerun with the same options to finish it, or choose a "
                         "new output directory")


def _chunks(jsonl: Path, size: int) -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
    """(shard index, [(line number, raw line), ...]) for consecutive groups of ``size`` lines."""
    with open(jsonl, "rb") as f:
        chunk: list[tuple[int, bytes]] = []
        index = 0
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                raw = raw[3:]
            chunk.append((number, raw))
            if len(chunk) == size:
                yield index, chunk
                chunk, index = [], index + 1
        if chunk:
            yield index, chunk


def _parse_line(raw: bytes) -> dict | None:
    """The line's fields (None for a blank line); raises _BadLine."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadLine("invalid UTF-8", str(e)) from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise _BadLine("invalid JSON", f"{e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise _BadLine("invalid JSON", f"expected an object {{...}}, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if obj.get(k) is None]
    if missing:
        raise _BadLine("missing key", ", ".join(repr(k) for k in missing))
    for key in ("image", "question"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise _BadLine("invalid field",
                           f"{key!r} must be a non-empty string, got {json.dumps(obj[key], default=str)}")
    try:
        answer = parse_answer(obj["answer"])
    except ValueError as e:
        raise _BadLine("non-numeric answer", str(e)) from None
    rid = obj.get("id")
    if rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
            raise _BadLine("invalid field", f"'id' must be a non-empty string or an integer, got "
                                            f"{json.dumps(rid, default=str)}")
        rid = str(rid)
    return {"image": obj["image"], "question": obj["question"], "answer": answer, "id": rid}


def _load_image(path: Path) -> np.ndarray:
    reason = check_image(path)
    if reason is not None:
        raise _BadLine("unreadable image", f"{path}: {reason}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # as the user sees it (transformers' load_image does the same)
            return to_rgb_uint8(im)
    except Exception as e:  # noqa: BLE001 - any decode failure is this line's problem, not the run's
        raise _BadLine("unreadable image", f"{path}: {type(e).__name__}: {e}") from None


def _content_id(image_sha: str, question: str, answer) -> str:
    blob = json.dumps({"image": image_sha, "question": question, "answer": answer}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _build_shard(jsonl: Path, images_root: Path, shard_index: int, lines: list[tuple[int, bytes]],
                 seen_ids: dict[str, int], report: Callable[[int, str, str], None]):
    """Images, records and stats of one shard; updates ``seen_ids`` (id -> first line)."""
    images: list[np.ndarray] = []
    records: list[dict] = []
    by_sha: dict[str, int] = {}
    by_path: dict[Path, tuple[str, np.ndarray]] = {}
    stats = {"lines": [lines[0][0], lines[-1][0]], "lines_read": len(lines), "blank_lines": 0, "imported": 0,
             "images": 0, "skipped": collections.Counter(), "problems": []}
    name = store.shard_name(shard_index)
    for number, raw in lines:
        try:
            fields = _parse_line(raw)
            if fields is None:
                stats["blank_lines"] += 1
                continue
            path = Path(fields["image"]).expanduser()
            path = path if path.is_absolute() else images_root / path
            if path not in by_path:
                pixels = _load_image(path)
                by_path[path] = (hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest(), pixels)
            sha, pixels = by_path[path]
            rid = fields["id"] or _content_id(sha, fields["question"], fields["answer"])
            first = seen_ids.get(rid)
            if first is not None and first < number:
                raise _BadLine("duplicate id", f"{rid!r} (first on line {first})")
            if sha not in by_sha:  # stored once per shard, and only when a record uses it
                by_sha[sha] = len(images)
                images.append(pixels)
            index = by_sha[sha]
            height, width = pixels.shape[:2]
            records.append({
                "schema_version": 1, "id": rid,
                "image": {"shard": name, "index": index, "width": int(width), "height": int(height), "sha256": sha,
                          "source_path": str(path)},
                "instances": [], "hops": [], "program": None,
                "question": fields["question"], "answer": fields["answer"], "variant": EXTERNAL, "rationale": None,
                "provenance": {"backend": IMPORT_KIND, "source": str(jsonl), "line": number},
                "verification": {"method": "external"},
            })
            seen_ids[rid] = number
        except _BadLine as bad:
            stats["skipped"][bad.category] += 1
            stats["problems"].append([number, bad.category, bad.detail])
            report(number, bad.category, bad.detail)
    stats["imported"] = len(records)
    stats["images"] = len(images)
    stats["skipped"] = dict(stats["skipped"])
    return images, records, stats


def import_jsonl(jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 images_root: str | os.PathLike | None = None, images_per_shard: int = 64, progress: bool = True,
                 on_problem: Callable[[int, str, str], None] | None = None) -> dict:
    """Import a JSONL of (image, question, numeric answer) into a HopChain dataset directory ``out_dir``.

    Rerunning the same call resumes an interrupted import. ``on_problem(line, reason, detail)`` receives each
    skipped line (default: printed to stderr). Returns a summary over the whole dataset: lines_read,
    blank_lines, imported, images, skipped {reason: count}, skipped_total, problems (first
    ``MAX_PROBLEMS_IN_SUMMARY`` as {"line", "reason", "detail"}), shards, shards_resumed, this_run.
    """
    jsonl = Path(jsonl_path).expanduser().resolve()
    if not jsonl.is_file():
        raise FileNotFoundError(f"import_jsonl: {jsonl_path} is not a file")
    if isinstance(images_per_shard, bool) or not isinstance(images_per_shard, int) or images_per_shard < 1:
        raise ValueError(f"import_jsonl(images_per_shard=...): expected a positive integer, got {images_per_shard!r}")
    root_dir = Path(images_root).expanduser().resolve() if images_root is not None else jsonl.parent
    if not root_dir.is_dir():
        raise NotADirectoryError(f"import_jsonl(images_root=...): {images_root} is not a directory")
    out = Path(out_dir)
    _prepare_output(out, _import_config(jsonl, root_dir, images_per_shard))
    cleaned = store.clean_partial_shards(out)
    done = store.committed_shards(out)

    def report(line: int, category: str, detail: str) -> None:
        if on_problem is not None:
            on_problem(line, category, detail)
        else:
            tqdm.tqdm.write(f"{jsonl}:{line}: skipped ({category}): {detail}", file=sys.stderr)

    seen_ids: dict[str, int] = {}
    if done:  # ids of committed shards, for duplicate detection in the shards still to write
        for rec in store.HopChainDataset(out).records():
            line = rec.get("provenance", {}).get("line", 0)
            seen_ids[rec["id"]] = min(line, seen_ids.get(rec["id"], line))

    total_lines = None
    if progress:
        with open(jsonl, "rb") as f:
            total_lines = sum(1 for _ in f)
    bar = tqdm.tqdm(total=total_lines, unit="line", desc="import", disable=not progress)
    start = time.perf_counter()
    run = {"lines": 0, "imported": 0, "shards": 0}
    n_shards = 0
    try:
        for shard_index, lines in _chunks(jsonl, images_per_shard):
            n_shards = shard_index + 1
            if shard_index in done:
                bar.update(len(lines))
                continue
            images, records, stats = _build_shard(jsonl, root_dir, shard_index, lines, seen_ids, report)
            store.write_shard(out, shard_index, images, [np.zeros(im.shape[:2], np.uint8) for im in images],
                              records, {"stats": stats})
            run["lines"] += len(lines)
            run["imported"] += len(records)
            run["shards"] += 1
            bar.update(len(lines))
            bar.set_postfix(imported=run["imported"])
    finally:
        bar.close()
    if n_shards == 0:
        raise ValueError(f"import_jsonl: {jsonl} is empty")
    elapsed = time.perf_counter() - start

    shards = store.committed_shards(out)
    totals = {"lines_read": 0, "blank_lines": 0, "imported": 0, "images": 0}
    skipped: collections.Counter = collections.Counter()
    problems = []
    for _, path in sorted(shards.items()):
        stats = json.loads((path / "shard.json").read_text())["stats"]
        for key in totals:
            totals[key] += stats[key]
        skipped.update(stats["skipped"])
        problems.extend(stats["problems"])
    return {
        "out": str(out), "source": str(jsonl), "shards": n_shards, "shards_resumed": len(done),
        "partial_shards_removed": cleaned, **totals, "skipped": dict(skipped.most_common()),
        "skipped_total": sum(skipped.values()),
        "problems": [{"line": n, "reason": c, "detail": d} for n, c, d in problems[:MAX_PROBLEMS_IN_SUMMARY]],
        "this_run": {**run, "seconds": round(elapsed, 2)},
    }


def format_import_summary(summary: dict) -> str:
    lines = [f"imported {summary['source']} -> {summary['out']}  ({summary['shards']} shards, "
             f"{summary['shards_resumed']} already done)",
             f"lines read: {summary['lines_read']}   imported: {summary['imported']} records "
             f"({summary['images']} images)   blank: {summary['blank_lines']}   skipped: {summary['skipped_total']}"]
    lines += [f"  - {reason}: {n}" for reason, n in summary["skipped"].items()]
    run = summary["this_run"]
    lines.append(f"this run: {run['lines']} lines, {run['imported']} records, {run['shards']} shards "
                 f"in {run['seconds']} s")
    return "\n".join(lines)

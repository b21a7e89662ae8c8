"""People as the stage-4 solvers (paper: four annotators must all give the composer's answer).

    export_sheet("data/hop", "sheets/round1", annotators=4, limit=200)   # send sheet.csv + images/ out
    result = import_sheet("sheets/round1/sheet.csv")                       # key.json read from beside it
    write_verdicts(result, "data/hop/verdicts-human.jsonl")
    # hopchain export data/hop --jsonl out.jsonl --verdicts data/hop/verdicts-human.jsonl

A sheet folder holds:
  sheet.csv    item, record_id, image_file, question, answer_1..answer_k (empty), notes
  images/      <item>.png: the image only (no boxes, no answer)
  index.html   the questions next to their images, for reading in a browser
  README.txt   what annotators do
  key.json     item -> record id, gold answer, variant: KEEP IT; do not send it with the sheet

Importing is tolerant of what spreadsheets do to a CSV (a UTF-8 BOM, ";" or tab delimiters, stray
whitespace, "3.0" for 3) and never stops at a bad row: unknown items, duplicate rows, non-numeric answers
are reported with their row number (the header is row 1, as a spreadsheet shows it). A record is accepted
when at least `required` annotators (default: the sheet's annotator count) answered, every answer equals
the gold answer (the RL reward's numeric equivalence) and its row has no unreadable answer.

Verdict sidecar: JSON Lines like the calibration sidecar (same reader), one object per record:
{"id", "method": "human", "solvers": annotators who answered, "agreeing": of those, with the gold
answer, "accepted": bool}. Writing merges into an existing file (a new import of an id replaces it).
"""
from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tqdm
from PIL import Image

from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.rl.reward import is_equivalent, parse_number
from hopchain_jax.vlm.calibrate import DEFAULT_VARIANTS, read_sidecar

__all__ = ["HumanVerdict", "SheetExport", "export_sheet", "import_sheet", "write_verdicts", "load_verdicts",
           "apply_verdict", "format_import"]

KEY_FORMAT = "hopchain-annotation-key/1"
_ANSWER_COLUMN = re.compile(r"^answer[ _-]?(\d+)$")

README = """Multi-hop questions about images
================================

Each row of sheet.csv is one question about one image (images/<item>.png; index.html shows them side by
side). Every question has exactly one answer: a single number.

  * Work out the answer by looking at the image only, and write the number in YOUR column
    (annotator 1 -> answer_1, annotator 2 -> answer_2, ...). Digits only, e.g. 3 or 12.
  * Leave the cell empty if you cannot answer; write why in notes if you like.
  * Do not discuss the questions with the other annotators.
  * Keep the item column as it is; rows may be sorted.
"""


@dataclasses.dataclass(frozen=True)
class HumanVerdict:
    """One verdict-sidecar line: solvers = annotators who answered, agreeing = of those with the gold
    answer, accepted = enough answered, all agree, no unreadable answer."""

    id: str
    solvers: int
    agreeing: int
    accepted: bool
    method: str = "human"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "HumanVerdict":
        return cls(str(data["id"]), int(data["solvers"]), int(data["agreeing"]), bool(data["accepted"]),
                   str(data.get("method", "human")))


@dataclasses.dataclass(frozen=True)
class SheetExport:
    """What export_sheet wrote: the folder, its files and the number of items (rows)."""

    out_dir: Path
    sheet: Path
    key: Path
    items: int


# ---------------------------------------------------------------------------------------------- export

def _select(root_or_records, variants, ids, limit, seed, image_of):
    if isinstance(root_or_records, (str, os.PathLike, HopChainDataset)):
        ds = root_or_records if isinstance(root_or_records, HopChainDataset) else HopChainDataset(root_or_records)
        records, image_of, source = ds.records(), image_of or ds.image_of, str(ds.root)
    else:
        if image_of is None:
            raise ValueError("export_sheet: with a list of records, pass image_of (record -> uint8 [H, W, 3]); "
                             "or pass the dataset directory instead")
        records, source = root_or_records, None
    wanted = None if ids is None else list(dict.fromkeys(ids))
    wanted_set = set(wanted or ())
    chosen = [r for r in records if (r.get("variant") in variants if wanted is None else r["id"] in wanted_set)]
    if wanted is not None:
        missing = sorted(set(wanted) - {r["id"] for r in chosen})
        if missing:
            raise ValueError(f"export_sheet: {len(missing)} requested ids are not in the records, e.g. "
                             f"{missing[:5]}; check the ids (or the dataset)")
        by_id = {r["id"]: r for r in chosen}
        chosen = [by_id[i] for i in wanted]
    else:  # shuffled, so that no structure of the dataset (shards, similar chains) is visible
        chosen = [chosen[i] for i in np.random.default_rng(seed).permutation(len(chosen))]
    if limit is not None:
        chosen = chosen[:max(0, limit)]
    if not chosen:
        raise ValueError(f"export_sheet: no records to annotate (variants {list(variants)}, ids {ids}); "
                         "choose other variants or ids")
    return chosen, image_of, source


def _index_html(rows: list[dict]) -> str:
    cards = "\n".join(
        f'<section><img src="{html.escape(r["image_file"])}" alt="{html.escape(r["item"])}">'
        f'<div><h2>{html.escape(r["item"])}</h2><p>{html.escape(r["question"])}</p></div></section>' for r in rows)
    return ("<!doctype html><meta charset=utf-8><title>questions</title><style>"
            "body{font-family:sans-serif;margin:1em}section{display:flex;gap:1.5em;margin:0 0 2em;"
            "align-items:flex-start}img{max-width:60vw;max-height:85vh;border:1px solid #ccc}"
            "p{font-size:1.15em;max-width:35em}</style>\n" + cards + "\n")


def export_sheet(root_or_records: str | os.PathLike | HopChainDataset | Sequence[dict], out_dir: str | os.PathLike,
                 *, annotators: int = 4, variants: Sequence[str] = DEFAULT_VARIANTS, ids: Sequence[str] | None = None,
                 limit: int | None = None, seed: int = 0,
                 image_of: Callable[[dict], np.ndarray] | None = None, progress: bool = True) -> SheetExport:
    """Write an annotation folder (see the module docstring) for the records of `variants` (or exactly
    `ids`, in that order), shuffled by `seed`, at most `limit`. Items are named q0001, q0002, ...

    The folder appears whole or not at all (built beside it, then renamed); an existing non-empty
    out_dir is never overwritten (it may hold filled sheets)."""
    if annotators < 1:
        raise ValueError(f"export_sheet: annotators must be >= 1, got {annotators}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty (it may hold filled sheets); "
                              "choose a new --out folder or delete that one")
    records, image_of, source = _select(root_or_records, tuple(variants), ids, limit, seed, image_of)
    width = max(4, len(str(len(records))))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "images").mkdir(parents=True)
    try:
        rows, key, written = [], {}, {}
        for k, rec in enumerate(tqdm.tqdm(records, unit="item", desc="sheet", disable=not progress)):
            item = f"q{k + 1:0{width}d}"
            target = tmp / "images" / f"{item}.png"
            sha = (rec.get("image") or {}).get("sha256")
            if sha in written:  # another question about the same image: copy, do not re-encode
                shutil.copyfile(written[sha], target)
            else:
                Image.fromarray(np.asarray(image_of(rec), np.uint8)).save(target, format="PNG", compress_level=1)
                if sha:
                    written[sha] = target
            rows.append({"item": item, "record_id": rec["id"], "image_file": f"images/{item}.png",
                         "question": rec["question"]})
            key[item] = {"record_id": rec["id"], "answer": rec["answer"], "variant": rec.get("variant")}
        answer_cols = [f"answer_{j}" for j in range(1, annotators + 1)]
        with open(tmp / "sheet.csv", "w", encoding="utf-8-sig", newline="") as f:  # the BOM: Excel reads UTF-8
            writer = csv.DictWriter(f, ["item", "record_id", "image_file", "question", *answer_cols, "notes"])
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "key.json").write_text(json.dumps({"format": KEY_FORMAT, "dataset": source, "annotators": annotators,
                                                  "items": key}, indent=1, sort_keys=True))
        (tmp / "index.html").write_text(_index_html(rows), encoding="utf-8")
        (tmp / "README.txt").write_text(README)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SheetExport(out, out / "sheet.csv", out / "key.json", len(rows))


# ---------------------------------------------------------------------------------------------- import

def _read_table(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - cp1252 fails on only five undefined bytes
        text = raw.decode("latin-1")
    text = text.lstrip("\ufeff")
    header = text.split("\n", 1)[0]
    delimiter = max([",", ";", "\t"], key=header.count)
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def _load_key(key_json: Path) -> dict:
    if not key_json.exists():
        raise FileNotFoundError(f"answer key {key_json} does not exist; pass the key.json that `hopchain annotate "
                                "export` wrote next to the sheet (--key FILE)")
    key = json.loads(key_json.read_text())
    if key.get("format") != KEY_FORMAT or not isinstance(key.get("items"), dict):
        raise ValueError(f"{key_json} is not an annotation key (format {KEY_FORMAT!r}); pass the key.json of "
                         "this sheet")
    return key


def import_sheet(sheet_csv: str | os.PathLike, key_json: str | os.PathLike | None = None, *,
                 required: int | None = None) -> dict:
    """Read a filled sheet; returns {"verdicts", "problems", "summary"}:

      verdicts  {record_id: {"item", "answer" (gold), "answers": [cell text or None, one per answer
                 column], "answered": m, "agreeing": k, "bad": unreadable cells, "accepted": bool}}
      problems  [{"row", "item", "column", "problem"}]: rows/cells that could not be used (row 1 = header)
      summary   rows, items (in the key), records, accepted, rejected, disagreeing (someone gave another
                number), incomplete (fewer than `required` answers, no disagreement), not_in_sheet (key
                items without a usable row), problems, annotators (answer columns), required

    required: answers needed to accept (default: the annotator count in the key). Raises only when the
    file as a whole is unusable (no item column, no answer columns, missing or foreign key)."""
    sheet = Path(sheet_csv)
    key = _load_key(Path(key_json) if key_json is not None else sheet.with_name("key.json"))
    items: dict[str, dict] = key["items"]
    table = _read_table(sheet)
    if not table:
        raise ValueError(f"{sheet} is empty; expected the header row item, record_id, ..., answer_1, ...")
    header = [h.strip().lower() for h in table[0]]
    if "item" not in header:
        raise ValueError(f"{sheet}: no 'item' column in the header {table[0]}; keep the header row of the sheet "
                         "as exported")
    answer_cols = sorted(((int(m.group(1)), i, table[0][i].strip()) for i, h in enumerate(header)
                          if (m := _ANSWER_COLUMN.match(h))))
    if not answer_cols:
        raise ValueError(f"{sheet}: no answer columns (answer_1, answer_2, ...) in the header {table[0]}")
    required = int(key.get("annotators", len(answer_cols))) if required is None else required
    if not 1 <= required <= len(answer_cols):
        raise ValueError(f"{sheet}: {required} answers required but the sheet has {len(answer_cols)} answer columns; "
                         f"pass required (--required) between 1 and {len(answer_cols)}")
    col_item = header.index("item")
    col_rid = header.index("record_id") if "record_id" in header else None
    problems: list[dict] = []
    verdicts: dict[str, dict] = {}
    first_row: dict[str, int] = {}
    rows = 0

    def problem(row, item, column, text):
        problems.append({"row": row, "item": item, "column": column, "problem": text})

    for number, cells in enumerate(table[1:], 2):
        if not any(c.strip() for c in cells):
            continue  # blank lines spreadsheets leave at the end
        rows += 1
        cell = lambda i: cells[i].strip() if i < len(cells) else ""  # noqa: E731 - short rows are padded
        item = cell(col_item)
        if not item:
            problem(number, None, "item", "the row has no item")
            continue
        if item not in items:
            problem(number, item, "item", f"unknown item {item!r} (not in the key)")
            continue
        if item in first_row:
            problem(number, item, "item", f"item {item} appears again (first on row {first_row[item]}); "
                                          "this row is ignored")
            continue
        entry = items[item]
        if col_rid is not None and cell(col_rid) and cell(col_rid) != entry["record_id"]:
            problem(number, item, "record_id", f"record_id {cell(col_rid)!r} is not the key's "
                                               f"{entry['record_id']!r} for {item}; this row is ignored")
            continue
        first_row[item] = number
        answers, answered, agreeing, bad = [], 0, 0, 0
        for _, i, name in answer_cols:
            text = cell(i)
            if not text:
                answers.append(None)
                continue
            if parse_number(text) is None:
                problem(number, item, name, f"{text!r} is not a number")
                answers.append(None)
                bad += 1
                continue
            answers.append(text)
            answered += 1
            agreeing += is_equivalent(text, entry["answer"])
        verdicts[entry["record_id"]] = {
            "item": item, "answer": entry["answer"], "answers": answers, "answered": answered,
            "agreeing": agreeing, "bad": bad, "accepted": answered >= required and agreeing == answered and not bad}
    accepted = sum(v["accepted"] for v in verdicts.values())
    disagreeing = sum(v["agreeing"] < v["answered"] for v in verdicts.values())
    summary = {"rows": rows, "items": len(items), "records": len(verdicts), "accepted": accepted,
               "rejected": len(verdicts) - accepted, "disagreeing": disagreeing,
               "incomplete": sum(not v["accepted"] and v["agreeing"] == v["answered"] for v in verdicts.values()),
               "not_in_sheet": len(items) - len(first_row), "problems": len(problems),
               "annotators": len(answer_cols), "required": required}
    return {"verdicts": verdicts, "problems": problems, "summary": summary}


def format_import(result: dict) -> str:
    """The summary, then one line per problem ("row 5 (q0004), answer_2: 'abc' is not a number")."""
    s = result["summary"]
    lines = [f"{s['records']} annotated records from {s['rows']} rows ({s['annotators']} answer columns, "
             f"{s['required']} answers required): {s['accepted']} accepted, {s['rejected']} rejected "
             f"({s['disagreeing']} with a disagreeing answer, {s['incomplete']} incomplete)"]
    if s["not_in_sheet"]:
        lines.append(f"{s['not_in_sheet']} of the key's {s['items']} items have no usable row in the sheet")
    for p in result["problems"]:
        where = f"row {p['row']}" + (f" ({p['item']})" if p["item"] and p["column"] != "item" else "")
        lines.append(f"  {where}, {p['column']}: {p['problem']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- verdict sidecar

def write_verdicts(result: dict, path: str | os.PathLike) -> int:
    """Merge the verdicts of `import_sheet` into the JSON Lines sidecar `path` (created if missing;
    earlier lines of other ids are kept, these ids replaced), atomically. Returns lines written."""
    path = Path(path)
    merged: dict[str, dict] = {}
    for obj in read_sidecar(path):
        merged[obj["id"]] = obj
    for rid, v in result["verdicts"].items():
        merged.pop(rid, None)
        merged[rid] = HumanVerdict(rid, v["answered"], v["agreeing"], v["accepted"]).to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(o, sort_keys=True) + "\n" for o in merged.values()))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(merged)


def load_verdicts(path: str | os.PathLike) -> dict[str, HumanVerdict]:
    """id -> HumanVerdict of a verdict sidecar (the latest line of each id)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"verdict file {path} does not exist; write it with `hopchain annotate import "
                                "SHEETDIR/sheet.csv --out FILE`")
    out = {}
    for obj in read_sidecar(path):
        try:
            out[obj["id"]] = HumanVerdict.from_json(obj)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: entry {obj.get('id')!r} is not a human verdict ({err}); is this a "
                             "verdict file?") from None
    return out


def apply_verdict(record: dict, verdict: HumanVerdict | None) -> bool:
    """For an accepted verdict, set record["verification"] to {method: "human", solvers, agreeing} (keeping
    its calibration) and return True; a rejected verdict returns False, None (not annotated) True, both
    leaving the record unchanged."""
    if verdict is None:
        return True
    if not verdict.accepted:
        return False
    record["verification"] = {**(record.get("verification") or {}), "method": verdict.method,
                              "solvers": verdict.solvers, "agreeing": verdict.agreeing}
    return True


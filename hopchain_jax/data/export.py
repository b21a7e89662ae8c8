"""`hopchain export`: a dataset directory to JSON Lines records (one record per line).

Optional stage-4 sidecars are applied on the way out:
  calibration  a `hopchain calibrate` file: fills verification.calibration = {model, samples, correct};
               with drop_too_easy, records the calibrator solved in every sample are left out
  verdicts     a `hopchain annotate import` file (human solvers): an accepted record gets
               verification {method: "human", solvers, agreeing}; a rejected one is left out;
               records nobody annotated are written unchanged
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import tqdm
from PIL import Image

from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.variants import CHAIN_VARIANTS


@dataclasses.dataclass
class ExportSummary:
    """Counts over the records of the chosen variants.

    written: lines in the JSONL; considered: records of the variants; calibrated: with a calibration
    entry (error-free) applied; too_easy: of those, all samples correct; dropped_too_easy: too-easy
    records left out (drop_too_easy); human_accepted / dropped_rejected: records with an accepted /
    rejected human verdict (the rejected are left out); calibration / verdicts: the files applied."""

    written: int = 0
    considered: int = 0
    calibrated: int = 0
    too_easy: int = 0
    dropped_too_easy: int = 0
    human_accepted: int = 0
    dropped_rejected: int = 0
    calibration: str | None = None
    verdicts: str | None = None


def add_export_calibration_args(parser: argparse.ArgumentParser) -> None:
    """The `export` flags for the stage-4 sidecars (calibration, too-easy filter, human verdicts)."""
    parser.add_argument("--calibration", help="a `hopchain calibrate` results file: fill verification.calibration")
    parser.add_argument("--drop-too-easy", action="store_true",
                        help="with --calibration: leave out queries the calibration model solved in every sample")
    parser.add_argument("--verdicts", help="a `hopchain annotate import` file: apply human verdicts, leave out "
                                           "rejected queries")


def export_dataset(root: str | os.PathLike, jsonl: str | os.PathLike, png_dir: str | os.PathLike | None = None,
                   variants: tuple[str, ...] = CHAIN_VARIANTS, progress: bool = True, *,
                   calibration: str | os.PathLike | None = None, drop_too_easy: bool = False,
                   verdicts: str | os.PathLike | None = None) -> ExportSummary:
    """Write every record of `variants` to `jsonl` (atomically: a temp file renamed at the end).

    With png_dir, each image is also written once as PNG and records carry its path in image.path,
    relative to the JSONL file's folder (so the export can be moved or shared as one directory).
    calibration / drop_too_easy / verdicts: see the module docstring. Returns the counts.
    """
    if drop_too_easy and calibration is None:
        raise ValueError("export: drop_too_easy (--drop-too-easy) needs a calibration file (--calibration FILE); "
                         "write one with `hopchain calibrate DIR`")
    ds = HopChainDataset(root)
    calib = human = None
    if calibration is not None:
        from hopchain_jax.vlm.calibrate import load_calibration
        calib = load_calibration(calibration)
    if verdicts is not None:
        from hopchain_jax.vlm.annotation import load_verdicts
        human = load_verdicts(verdicts)
    if calib is not None or human is not None:
        from hopchain_jax.vlm.annotation import apply_verdict
        from hopchain_jax.vlm.calibrate import apply_calibration
    out = Path(jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    png = Path(png_dir) if png_dir else None
    if png:
        png.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(calibration=None if calibration is None else str(calibration),
                            verdicts=None if verdicts is None else str(verdicts))
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in tqdm.tqdm(ds.records(), total=len(ds), unit="rec", desc="export", disable=not progress):
            if rec["variant"] not in variants:
                continue
            summary.considered += 1
            if human is not None and rec["id"] in human:
                if not apply_verdict(rec, human[rec["id"]]):
                    summary.dropped_rejected += 1
                    continue
                summary.human_accepted += 1
            if calib is not None and rec["id"] in calib and calib[rec["id"]].error is None:
                summary.calibrated += 1
                if apply_calibration(rec, calib[rec["id"]]):
                    summary.too_easy += 1
                    if drop_too_easy:
                        summary.dropped_too_easy += 1
                        continue
            if png:
                ref = rec["image"]
                path = png / f"{ref['shard']}-{ref['index']:04d}.png"
                if not path.exists():
                    tmp_png = path.with_name(path.name + ".tmp")
                    # Fast zlib level: the default level spends ~0.25 s per image for a few % of size.
                    Image.fromarray(ds.image_of(rec)).save(tmp_png, format="PNG", compress_level=1)
                    os.replace(tmp_png, path)
                rec["image"] = {**ref, "path": os.path.relpath(path.resolve(), out.parent.resolve())}
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            summary.written += 1
    os.replace(tmp, out)
    return summary


def export_jsonl(root: str | os.PathLike, jsonl: str | os.PathLike, png_dir: str | os.PathLike | None = None,
                 variants: tuple[str, ...] = CHAIN_VARIANTS, progress: bool = True, *,
                 calibration: str | os.PathLike | None = None, drop_too_easy: bool = False,
                 verdicts: str | os.PathLike | None = None) -> int:
    """`export_dataset`, returning only the number of records written."""
    return export_dataset(root, jsonl, png_dir, variants, progress, calibration=calibration,
                          drop_too_easy=drop_too_easy, verdicts=verdicts).written


def format_export_summary(summary: ExportSummary, jsonl: str | os.PathLike) -> str:
    """One line, plus what the sidecars did when they did anything."""
    text = f"wrote {summary.written} records to {jsonl}"
    extra = []
    if summary.calibration is not None:
        extra.append(f"{summary.calibrated} of {summary.considered} calibrated, {summary.too_easy} too easy"
                     + (f" (left out: {summary.dropped_too_easy})" if summary.dropped_too_easy else "")
                     + ("" if summary.calibrated or not summary.considered else
                        f" ({summary.calibration} has no entry for these records: is it for this dataset?)"))
    if summary.verdicts is not None:
        extra.append(f"human verdicts: {summary.human_accepted} accepted, {summary.dropped_rejected} rejected "
                     "(left out)")
    return text + ("; " + "; ".join(extra) if extra else "")

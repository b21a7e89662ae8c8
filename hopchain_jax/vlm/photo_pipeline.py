"""`hopchain synth --images PHOTOS`: the paper's four model-driven stages over a folder of photos.

  1. a VLM lists the object categories          (categories.VLMCategoryIdentifier)
  2. SAM3 segments each category's instances    (sam3.Sam3Segmenter; images with < 3 instances skipped)
  3. a VLM writes a query per set of 3-6 instances, shown crops  (query_writer.VLMQueryWriter)
  4. solvers must agree with its answer, a weaker model calibrates difficulty  (solvers.AgreementVerifier)

The folder is scanned once; the readable images, in sorted order, are saved in OUT/manifest.json and
split into shards of `images_per_shard`. Each shard runs the four stages over its images (each model
stage as one batched call) and is written atomically (data/store.py), so a killed run resumes by
rerunning the same command: committed shards are kept, the shard in flight is redone, and with the
response cache (OUT/vlm-cache by default) none of its completed model calls is paid for twice. Every
item a stage drops is counted under a short reason (reason_key; the summary prints one real example per
reason), and the shard's log (shard.json "events") keeps each item's full reason, so a bad image or a
malformed model answer is reported, never a crash.

Nothing is lost to a failure that may not repeat: before any image, one probe call per endpoint finds
what would fail every call (unreachable endpoint, unknown model, a max_tokens the context cannot hold)
and names the fix; during the run, a model call that outlasts its retries with a connection error,
timeout, 429 or 5xx (ChatResult.transient) is never recorded as a rejection: its shard is left
unwritten, the run stops there, and the summary's "pending" says how many items wait for a rerun of the
same command (the CLI exits 1).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tqdm
from PIL import Image

import hopchain_jax
from hopchain_jax.data import store
from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.synth.composer import RealizedQuery
from hopchain_jax.synth.record import build_record, validate_record
from hopchain_jax.synth.stages import ImageInput, InstanceSegmenter
from hopchain_jax.synth.user_images import scan_images
from hopchain_jax.vlm.categories import VLMCategoryIdentifier
from hopchain_jax.vlm.query_writer import QueryDraft, VLMQueryWriter
from hopchain_jax.vlm.solvers import AgreementVerifier

STAGES = ("categories", "segmentation", "queries", "verification")


@dataclasses.dataclass(frozen=True)
class PhotoSynthConfig:
    """What determines a photo run (a rerun must match it). models: the spec of each stage's model
    ({"categories", "segmentation", "queries", "solvers", "calibrator"}), kept for provenance and so a
    rerun cannot mix models. max_image_side: photos larger than this are downscaled first (px)."""

    images: str
    seed: int = 0
    images_per_shard: int = 16
    max_image_side: int = 2048
    min_instances: int = 3
    models: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.images_per_shard < 1 or self.max_image_side < 28 or self.min_instances < 1:
            raise ValueError("PhotoSynthConfig: images_per_shard >= 1, max_image_side >= 28, min_instances >= 1")

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass
class PhotoStages:
    """The four stage implementations. identifier: a VLMCategoryIdentifier (or any object with
    identify_many(images) -> CategoryParse list); segmenter: an InstanceSegmenter, optionally with
    segment_with_report(image, categories) -> (Segmentation, {reason: count}); writer: VLMQueryWriter;
    verifier: AgreementVerifier (or any object with verify_many(records, images) -> Verification list)."""

    identifier: VLMCategoryIdentifier
    segmenter: InstanceSegmenter
    writer: VLMQueryWriter
    verifier: AgreementVerifier

    def names(self) -> dict:
        return {"categories": self.identifier.name, "segmentation": self.segmenter.name,
                "composition": self.writer.name, "verification": self.verifier.name}

    def warnings(self) -> list[str]:
        """What makes stage 4 weaker than the paper's, said plainly in the summary: the query writer grading
        its own queries, and difficulty calibration skipped."""
        out = []
        writer = getattr(self.writer, "backend", None)
        if writer is not None and any(s is writer for s in getattr(self.verifier, "solvers", ()) or ()):
            out.append(f"the query writer ({writer.model}) also solves its own queries, so its mistakes can agree "
                       "with themselves; give --solver with other models for independent verification")
        if hasattr(self.verifier, "calibrator") and self.verifier.calibrator is None:
            out.append("difficulty calibration was skipped (no --calibrator): queries a weaker model always "
                       "solves are kept")
        return out

    def probe(self) -> list[str]:
        """One probe call per distinct endpoint, with the largest answer budget the stages ask of it (backends
        with a `probe(max_tokens)`, e.g. OpenAIChatBackend; local checkpoints need none), before any image: the
        problems that would fail every call (unreachable endpoint, unknown model name, a max_tokens the
        model's context cannot hold), each with its fix; [] when every endpoint answers."""
        uses = [(self.identifier, getattr(self.identifier, "backend", None)),
                (self.writer, getattr(self.writer, "backend", None)),
                *((self.verifier, s) for s in getattr(self.verifier, "solvers", ()) or ()),
                (self.verifier, getattr(self.verifier, "calibrator", None))]
        budgets: dict[int, tuple[object, int]] = {}   # per backend, the largest answer budget a stage asks of it
        for stage, backend in uses:
            budget = getattr(stage, "max_tokens", None)
            if backend is not None and hasattr(backend, "probe") and budget:
                budgets[id(backend)] = (backend, max(budget, budgets.get(id(backend), (None, 0))[1]))
        problems = []
        for backend, budget in budgets.values():
            problem = backend.probe(budget)
            if problem:
                problems.append(problem)
        return problems


def reason_key(reason: str) -> str:
    """A short, countable form of a reason: its first clause (before the first ':', '(' or ';') with
    numbers and quoted names blanked ("hop 3 names unknown instances ['i9']" -> "hop N names unknown
    instances")."""
    head = re.split(r"[:(;]", reason, maxsplit=1)[0]
    head = re.sub(r"\[[^\]]*\]|(?<![A-Za-z])'[^']*'(?![A-Za-z])|\"[^\"]*\"", "", head)
    head = re.sub(r"\d+(\.\d+)?", "N", head)
    return re.sub(r"\s+", " ", head).strip() or reason[:60]


class _StageCounts:
    """Per stage: items in, accepted, and rejected by short reason; plus the full per-item event log."""

    def __init__(self):
        self.stats = {s: {"in": 0, "accepted": 0, "rejected": collections.Counter()} for s in STAGES}
        self.examples: dict[str, dict[str, str]] = {s: {} for s in STAGES}   # stage -> reason key -> first reason
        self.dropped_instances: collections.Counter = collections.Counter()
        self.category_notes: collections.Counter = collections.Counter()      # SAM3: categories without / failing
        self.instances_kept = 0
        self.events: list[dict] = []
        self.pending: list[dict] = []   # items whose model call failed transiently: retried by a rerun

    def accept(self, stage: str, n: int = 1) -> None:
        self.stats[stage]["in"] += n
        self.stats[stage]["accepted"] += n

    def reject(self, stage: str, item: str, reason: str) -> None:
        key = reason_key(reason)
        self.stats[stage]["in"] += 1
        self.stats[stage]["rejected"][key] += 1
        self.examples[stage].setdefault(key, f"{reason} [{item}]")   # the reason first: the item may be long
        self.events.append({"stage": stage, "item": item, "reason": reason})

    def defer(self, stage: str, item: str, reason: str) -> None:
        """The item's model call failed in a way that may not repeat (ChatResult.transient): not a
        rejection; the shard is left unwritten so that a rerun retries it."""
        self.pending.append({"stage": stage, "item": item, "reason": reason})

    def as_json(self) -> dict:
        return json.loads(json.dumps({"stages": self.stats, "examples": self.examples,
                                      "instances_kept": self.instances_kept,
                                      "instances_dropped": self.dropped_instances,
                                      "categories": self.category_notes}))


def load_photo(path: Path, max_side: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of an image file, downscaled (aspect kept) to at most max_side px."""
    from PIL import ImageOps
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        return np.asarray(im)


def _provenance(config: PhotoSynthConfig, names: dict, source: str, seed: int) -> dict:
    return {"backend": names, "models": config.models, "source": source, "seed": seed,
            "versions": {"hopchain_jax": hopchain_jax.__version__, "numpy": np.__version__}}


def _record(draft: QueryDraft, image: ImageInput, instances: list[dict], provenance: dict) -> dict:
    checked = draft.checked
    query = RealizedQuery(variant="full", hops=checked.hops, program=None, question=checked.question,
                          answer=checked.answer,
                          rationale="\n".join(f"Step {h['index'] + 1}: {h['text']}" for h in checked.hops))
    ref = {"shard": None, "index": None, "width": image.width, "height": image.height, "sha256": image.sha256}
    return build_record(image=ref, instances=instances, query=query, provenance=provenance,
                        chain_program={"question": checked.question, "instances": list(draft.instance_ids)})


def synthesize_photo_shard(config: PhotoSynthConfig, stages: PhotoStages, paths: Sequence[Path],
                           shard_index: int) -> tuple[list, list, list, dict]:
    """Images, label maps, records (image refs filled in) and stats of one shard of photos."""
    counts = _StageCounts()
    names = stages.names()
    root = Path(config.images)
    images: list[ImageInput] = []
    for path in paths:  # checked when the manifest was made; a file changed since then is reported here
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        try:
            images.append(ImageInput(load_photo(path, config.max_image_side), source))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            counts.reject("categories", source, f"unreadable image: {type(e).__name__}: {e}")

    # stage 1: categories, one batched call
    found = []
    for image, parse in zip(images, stages.identifier.identify_many(images)):
        if parse.problem and getattr(parse, "transient", False):
            counts.defer("categories", image.source, parse.problem)
        elif parse.problem:
            counts.reject("categories", image.source, parse.problem)
        else:
            counts.accept("categories")
            found.append((image, parse.categories))

    # stage 2: instances
    segmented = []
    for image, categories in found:
        try:
            if hasattr(stages.segmenter, "segment_with_report"):
                seg, report = stages.segmenter.segment_with_report(image, categories)
            else:
                seg, report = stages.segmenter.segment(image, categories), {}
        except Exception as e:  # noqa: BLE001 - a failing image is reported, the run goes on
            counts.reject("segmentation", image.source, f"segmenter error: {type(e).__name__}: {e}")
            continue
        for key, value in (report or {}).items():
            if key == "empty_categories":       # categories that ran but kept no instance: not dropped instances
                counts.category_notes["without an instance"] += len(value)
            elif key == "errors":               # {category: message}: the first message is kept as the example
                counts.category_notes["failed"] += len(value)
                for cat, message in value.items():
                    counts.examples["segmentation"].setdefault("category failed", f"{cat}: {message} [{image.source}]")
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                counts.dropped_instances[key] += int(value)
            elif isinstance(value, (list, tuple, dict)):
                counts.dropped_instances[key] += len(value)
        if len(seg.instances) < config.min_instances:
            counts.reject("segmentation", image.source, f"fewer than {config.min_instances} instances "
                                                        f"({len(seg.instances)} found)")
            continue
        counts.accept("segmentation")
        counts.instances_kept += len(seg.instances)
        segmented.append((image, seg))

    # stage 3: queries, one batched call over every instance set of the shard
    drafts = stages.writer.write_many([(image, seg.instances, np.random.default_rng([config.seed, shard_index, k]))
                                       for k, (image, seg) in enumerate(segmented)])
    candidates = []
    for (image, seg), image_drafts in zip(segmented, drafts):
        for draft in image_drafts:
            item = f"{image.source} [{','.join(draft.instance_ids)}]"
            problems = draft.problems
            if getattr(draft, "transient", False):
                counts.defer("queries", item, "; ".join(problems))
                continue
            record = None
            if not problems:
                seed = int.from_bytes(bytes.fromhex(image.sha256[:8]), "big")
                record = _record(draft, image, seg.instances, _provenance(config, names, image.source, seed))
                problems = validate_record(record, check_program=False)
            if problems:
                counts.reject("queries", item, "; ".join(problems))
            else:
                counts.accept("queries")
                candidates.append((image, seg, record))

    # stage 4: solvers agree, then calibration, one batched call per model
    verdicts = stages.verifier.verify_many([rec for _, _, rec in candidates],
                                           images=[image.pixels for image, _, _ in candidates]) if candidates else []
    kept_images: list[np.ndarray] = []
    kept_labels: list[np.ndarray] = []
    index_of: dict[str, int] = {}
    records = []
    for (image, seg, rec), verdict in zip(candidates, verdicts):
        item = f"{image.source}: {rec['question']}"
        if not verdict.accepted and getattr(verdict, "transient", False):
            counts.defer("verification", item, verdict.reason)
            continue
        if not verdict.accepted:
            counts.reject("verification", item, verdict.reason)
            continue
        counts.accept("verification")
        if image.sha256 not in index_of:
            index_of[image.sha256] = len(kept_images)
            kept_images.append(image.pixels)
            kept_labels.append(seg.labels)
        rec["image"].update(shard=store.shard_name(shard_index), index=index_of[image.sha256])
        rec["verification"] = verdict.record_field
        records.append(rec)
    stats = counts.as_json()
    stats["images_seen"] = len(paths)
    stats["answers"] = dict(collections.Counter(str(r["answer"]) for r in records))
    return kept_images, kept_labels, records, {"stats": stats, "events": counts.events, "pending": counts.pending}


def prepare_photo_output(root: str | os.PathLike, config: PhotoSynthConfig) -> list[Path]:
    """Create `root` (or check it holds this same run) and return the run's image list: scanned and
    saved in manifest.json on the first run, read back on a rerun so shards keep their images."""
    root = Path(root)
    wanted = {"kind": "photos", **config.to_json()}
    have = store.claim_dataset_dir(root, wanted)
    if have is not None and have != wanted:
        raise ValueError(f"{root} already holds a dataset made with a different config (differs in "
                         f"{store.config_difference(have, wanted)}); rerun with the same options and models to "
                         "finish it, or choose a new --out directory")
    manifest_path = root / "manifest.json"
    folder = Path(config.images)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        paths = [folder / p for p in manifest["images"]]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ValueError(f"{len(missing)} images of this run are gone from {folder} (e.g. {missing[0]}); "
                             "put them back to finish the run, or start a new --out directory")
        return paths
    scan = scan_images(folder)
    manifest = {"images": [str(p.relative_to(folder)) for p in scan.readable],
                "unreadable": {str(p.relative_to(folder)): why for p, why in scan.problems}}
    store.write_json_atomic(manifest_path, manifest)
    return list(scan.readable)


def _merge(parts: Sequence[dict]) -> dict:
    total: dict[str, Any] = {"images_seen": 0, "instances_kept": 0, "instances_dropped": collections.Counter(),
                             "categories": collections.Counter(), "answers": collections.Counter(),
                             "examples": {s: {} for s in STAGES},
                             "stages": {s: {"in": 0, "accepted": 0, "rejected": collections.Counter()} for s in STAGES}}
    for part in parts:
        total["images_seen"] += part["images_seen"]
        total["instances_kept"] += part["instances_kept"]
        total["instances_dropped"].update(part["instances_dropped"])
        total["categories"].update(part.get("categories", {}))   # shards written before the split lack it
        total["answers"].update(part["answers"])
        for s in STAGES:
            for key, example in part.get("examples", {}).get(s, {}).items():
                total["examples"][s].setdefault(key, example)
        for s in STAGES:
            total["stages"][s]["in"] += part["stages"][s]["in"]
            total["stages"][s]["accepted"] += part["stages"][s]["accepted"]
            total["stages"][s]["rejected"].update(part["stages"][s]["rejected"])
    return json.loads(json.dumps(total))


def run_photo_synthesis(root: str | os.PathLike, config: PhotoSynthConfig, stages: PhotoStages,
                        progress: bool = True) -> dict:
    """Run the four stages over every missing shard of the photo folder; returns the summary of the
    whole dataset (every committed shard), with per-stage accepted/rejected counts and reasons."""
    paths = prepare_photo_output(root, config)
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    cleaned = store.clean_partial_shards(root)
    done = store.committed_shards(root)
    n_shards = -(-len(paths) // config.images_per_shard)
    todo = [i for i in range(n_shards) if i not in done]
    if todo:   # what would fail every call is found before any image is processed
        problems = stages.probe() if hasattr(stages, "probe") else []
        if problems:
            raise ValueError("the models cannot be used as configured:\n  - " + "\n  - ".join(problems))
    start = time.perf_counter()
    made = 0
    pending: list[dict] = []
    pending_shard = None
    bar = tqdm.tqdm(total=len(paths), unit="img", desc="photos", disable=not progress,
                    initial=min(len(paths), len([i for i in done if i < n_shards]) * config.images_per_shard))
    try:
        for shard in todo:
            chunk = paths[shard * config.images_per_shard:(shard + 1) * config.images_per_shard]
            images, labels, records, info = synthesize_photo_shard(config, stages, chunk, shard)
            pending = info.pop("pending")
            if pending:   # a model call failed transiently: nothing of this shard is final, the rest waits
                pending_shard = shard
                break
            store.write_shard(root, shard, images, labels, records, info)
            made += len(records)
            bar.update(len(chunk))
            bar.set_postfix(queries=made)
    finally:
        bar.close()
    shards = sorted(store.committed_shards(root).items())
    total = _merge([json.loads((p / "shard.json").read_text())["stats"] for _, p in shards])
    elapsed = time.perf_counter() - start
    return {"out": str(root), "images_in_folder": len(paths) + len(manifest["unreadable"]),
            "unreadable": manifest["unreadable"], "shards": n_shards, "shards_resumed": len(done),
            "partial_shards_removed": cleaned, **total, "records": len(HopChainDataset(root)) if shards else 0,
            "this_run": {"shards": len(todo) if pending_shard is None else todo.index(pending_shard),
                         "records": made, "seconds": round(elapsed, 2)},
            "warnings": stages.warnings() if hasattr(stages, "warnings") else [],
            "pending": None if pending_shard is None else {
                "shard": pending_shard, "shards_left": len(todo) - todo.index(pending_shard), "items": len(pending),
                "by_stage": dict(collections.Counter(p["stage"] for p in pending)), "first": pending[0]}}


def _short(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def format_photo_summary(summary: dict) -> str:
    """The per-stage table a user reads after `hopchain synth --images`."""
    lines = [f"dataset: {summary['out']}  ({summary['shards']} shards, {summary['shards_resumed']} already done"
             + (f", {summary['partial_shards_removed']} partial shards redone" if summary["partial_shards_removed"] else "")
             + ")",
             f"images: {summary['images_in_folder']} in the folder, {len(summary['unreadable'])} unreadable"
             + "".join(f"\n  - {path}: {why}" for path, why in list(summary["unreadable"].items())[:10])]
    what = {"categories": "images", "segmentation": "images", "queries": "drafted queries",
            "verification": "queries"}
    for k, stage in enumerate(STAGES, 1):
        s = summary["stages"][stage]
        examples = summary.get("examples", {}).get(stage, {})
        lines.append(f"stage {k} {stage}: {s['in']} {what[stage]} in, {s['accepted']} accepted, "
                     f"{s['in'] - s['accepted']} rejected"
                     + "".join(f"\n  - {why}: {n}" + (f"\n      e.g. {_short(examples[why])}" if why in examples else "")
                               for why, n in sorted(s["rejected"].items(), key=lambda kv: -kv[1])))
        if stage == "segmentation":
            dropped = ", ".join(f"{k}={v}" for k, v in summary["instances_dropped"].items() if v) or "none"
            lines.append(f"  instances kept: {summary['instances_kept']}; dropped: {dropped}")
            notes = summary.get("categories") or {}
            if any(notes.values()):
                lines.append("  categories: " + ", ".join(f"{notes[why]} {why}" for why in ("without an instance", "failed")
                                                          if notes.get(why))
                             + (f"\n      e.g. {_short(examples['category failed'])}" if "category failed" in examples
                                else ""))
    lines.append(f"records: {summary['records']}; this run: {summary['this_run']['records']} new in "
                 f"{summary['this_run']['shards']} shards, {summary['this_run']['seconds']} s")
    lines += [f"warning: {w}" for w in summary.get("warnings") or []]
    pending = summary.get("pending")
    if pending:
        first = pending["first"]
        lines.append(f"{pending['items']} items could not reach the model: rerun the same command to retry "
                     f"({pending['shards_left']} shards left, from shard {pending['shard']}; completed model calls are "
                     f"cached and not repeated). First: stage {first['stage']}, {first['item']}: {first['reason']}")
    return "\n".join(lines)

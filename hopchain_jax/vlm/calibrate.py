"""Difficulty calibration of any dataset (procedural, model-written or imported): a weaker model samples
each query `samples` times; a query it always solves is too easy (paper, stage 4: 8 samples, dropped).

    backend = OpenAIChatBackend(url, model="Qwen/Qwen2.5-VL-7B-Instruct", cache_dir="runs/vlm-cache")
    summary = calibrate_dataset("data/hop", backend, samples=8)    # -> data/hop/calibration-<model>.jsonl
    entries = load_calibration("data/hop/calibration-Qwen-Qwen2.5-VL-7B-Instruct.jsonl")
    too_easy = apply_calibration(record, entries[record["id"]])   # fills record["verification"]["calibration"]

The calibrator sees what a solver sees (`solvers.solver_request`: the image, the question and the training
prompt's boxed-number instruction) and a sample counts as correct by the RL reward's numeric equivalence.

Sidecar: JSON Lines, one object per record, {"id", "model", "samples", "correct", "error"}; `samples` is
the number of answers received (0 on error), `correct` how many equal the record's answer, `error` None
or why the item failed. Lines are appended, flushed and fsynced after every batch, so a killed run keeps
every finished batch; a rerun of the same call skips the ids already there and retries the ids whose
line has an error (the newer line wins; superseded lines are compacted away at the end of a run). A
crash can only leave a torn LAST line: it is detected, dropped with a warning and recomputed. The same
reader/appender serves the human-verdict sidecar of `hopchain_jax.vlm.annotation`.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import tqdm

from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.rl.reward import is_equivalent
from hopchain_jax.vlm.chat import ChatResult
from hopchain_jax.vlm.solvers import ChatBackend, solver_request

__all__ = ["CalibrationEntry", "calibrate_dataset", "load_calibration", "apply_calibration", "default_sidecar",
           "model_slug", "read_sidecar", "SidecarWriter", "DEFAULT_VARIANTS"]

# "external" is what `hopchain import` gives user data: calibrating it is a main use.
DEFAULT_VARIANTS = ("full", "external")
CALIBRATION_SALT = "calibration"  # the request salt AgreementVerifier uses: both share cached responses
_ABORT_AFTER_FAILED_BATCHES = 3


@dataclasses.dataclass(frozen=True)
class CalibrationEntry:
    """One sidecar line. samples: answers received (0 on error); correct: of those, how many give the
    record's answer; error: why the item failed, or None."""

    id: str
    model: str
    samples: int
    correct: int
    error: str | None = None

    @property
    def too_easy(self) -> bool:
        """The calibrator solved every one of its samples."""
        return self.error is None and self.samples > 0 and self.correct == self.samples

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CalibrationEntry":
        return cls(str(data["id"]), str(data["model"]), int(data["samples"]), int(data["correct"]), data.get("error"))


def model_slug(model: str) -> str:
    """A file-name-safe form of a model name: "Qwen/Qwen2.5-VL-7B" -> "Qwen-Qwen2.5-VL-7B"."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.")
    return slug[-80:] or "model"


def default_sidecar(root: str | os.PathLike, model: str) -> Path:
    """ROOT/calibration-<model slug>.jsonl"""
    return Path(root) / f"calibration-{model_slug(model)}.jsonl"


# ------------------------------------------------------------------------------------- sidecar files

def _scan(data: bytes, path: Path) -> tuple[list[tuple[int, dict]], int, bool]:
    """Parse sidecar bytes: ([(line number, object)], byte length of the good prefix, torn last line?).

    Only the last line may be bad (a crash tears at most the line being written); a bad line before it
    means the file was edited or mixed up, and is an error naming the line."""
    rows: list[tuple[int, dict]] = []
    lines = data.split(b"\n")
    good = 0
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        if not raw.strip():
            good += len(raw) + (not last)
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or "id" not in obj:
                raise ValueError("not an object with an id")
        except ValueError as err:
            if last:
                return rows, good, True
            raise ValueError(f"line {number} of {path} is not a sidecar entry ({err}); only a torn last line is "
                             f"recovered automatically: fix or delete that line, then rerun") from None
        rows.append((number, obj))
        good += len(raw) + (not last)
    return rows, good, False


def read_sidecar(path: str | os.PathLike) -> list[dict]:
    """Every entry of a JSON Lines sidecar, in file order (later lines supersede earlier ones of the same
    id). A torn last line is dropped with a warning; the file is not modified. Missing file -> []."""
    path = Path(path)
    if not path.exists():
        return []
    rows, _, torn = _scan(path.read_bytes(), path)
    if torn:
        warnings.warn(f"{path}: dropped a torn last line (a run was killed while writing it); "
                      "rerunning the same command recomputes it", RuntimeWarning, stacklevel=2)
    return [obj for _, obj in rows]


def _latest(rows: Iterable[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for obj in rows:
        out.pop(obj["id"], None)  # a superseded id moves to where its latest line is
        out[obj["id"]] = obj
    return out


class SidecarWriter:
    """Appends JSON Lines to a sidecar crash-safely: an exclusive lock (one writer per file), a torn
    last line truncated away on open (with a warning), each `append` written, flushed and fsynced."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._f = open(self.path, "a+b")
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise RuntimeError(f"another process is writing {self.path}; wait for it to finish "
                               "(or pass a different output file)") from None
        if created:
            _fsync_dir(self.path.parent)
        self._f.seek(0)
        data = self._f.read()
        try:
            rows, good, torn = _scan(data, self.path)
        except ValueError:
            self._f.close()
            raise
        if torn:
            warnings.warn(f"{self.path}: dropped a torn last line (a run was killed while writing it); "
                          "it is recomputed now", RuntimeWarning, stacklevel=2)
        if good < len(data):
            self._f.truncate(good)
            os.fsync(self._f.fileno())
        self._needs_newline = good > 0 and not data[:good].endswith(b"\n")
        self.entries: list[dict] = [obj for _, obj in rows]

    def append(self, objs: Sequence[dict]) -> None:
        """Write `objs` (one line each) and make them durable before returning."""
        if not objs:
            return
        text = "".join(json.dumps(o, sort_keys=True) + "\n" for o in objs)
        if self._needs_newline:
            text, self._needs_newline = "\n" + text, False
        self._f.seek(0, os.SEEK_END)
        self._f.write(text.encode())
        self._f.flush()
        os.fsync(self._f.fileno())
        self.entries.extend(objs)

    def compact(self) -> int:
        """Rewrite the file with only the latest line of each id (atomic replace); returns lines removed."""
        latest = _latest(self.entries)
        removed = len(self.entries) - len(latest)
        if removed:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write("".join(json.dumps(o, sort_keys=True) + "\n" for o in latest.values()).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
            self.entries = list(latest.values())
        return removed

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "SidecarWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_calibration(path: str | os.PathLike) -> dict[str, CalibrationEntry]:
    """id -> the latest CalibrationEntry of a calibration sidecar (a torn last line is dropped, warned)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration file {path} does not exist; write it with "
                                "`hopchain calibrate DIR --model CKPT` (or --endpoint URL --endpoint-model NAME)")
    out = {}
    for obj in read_sidecar(path):
        try:
            out[obj["id"]] = CalibrationEntry.from_json(obj)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: entry {obj.get('id')!r} is not a calibration entry ({err}); "
                             "is this a calibration file?") from None
    return out


def apply_calibration(record: dict, entry: CalibrationEntry | None) -> bool:
    """Set record["verification"]["calibration"] = {"model", "samples", "correct"} (in place) and return
    whether the record is too easy. An entry with an error (or None) leaves the record as it is: False."""
    if entry is None or entry.error is not None:
        return False
    record["verification"] = {**(record.get("verification") or {}),
                              "calibration": {"model": entry.model, "samples": entry.samples, "correct": entry.correct}}
    return entry.too_easy


# ------------------------------------------------------------------------------------------ the run

def _score(record: dict, result: ChatResult, model: str, samples: int) -> CalibrationEntry:
    rid = record["id"]
    if result.error:
        return CalibrationEntry(rid, model, 0, 0, str(result.error))
    if len(result.texts) != samples:
        return CalibrationEntry(rid, model, 0, 0, f"asked for {samples} samples, the backend returned "
                                                  f"{len(result.texts)}")
    try:
        correct = sum(is_equivalent(t, record["answer"]) for t in result.texts)
    except (TypeError, ValueError) as err:
        return CalibrationEntry(rid, model, 0, 0, f"the record's answer {record.get('answer')!r} is not one "
                                                  f"number: {err}")
    return CalibrationEntry(rid, model, samples, correct)


def _calibrate_batch(batch: list[dict], backend: ChatBackend, image_of: Callable[[dict], Any], samples: int,
                     temperature: float, max_tokens: int) -> tuple[list[CalibrationEntry], bool]:
    """Entries for one batch (errors per item) and whether the backend failed the whole batch."""
    requests, ok = [], []
    entries: list[CalibrationEntry | None] = [None] * len(batch)
    for k, rec in enumerate(batch):
        try:
            requests.append(solver_request(image_of(rec), rec["question"], samples, temperature, max_tokens,
                                           salt=CALIBRATION_SALT))
            ok.append(k)
        except Exception as err:  # noqa: BLE001 - an unreadable image fails its item only
            entries[k] = CalibrationEntry(rec["id"], backend.model, 0, 0, f"could not build the request: "
                                                                          f"{type(err).__name__}: {err}")
    whole_failed = False
    if requests:
        try:
            results = list(backend.complete(requests))
            if len(results) != len(requests):
                raise RuntimeError(f"backend returned {len(results)} results for {len(requests)} requests")
        except Exception as err:  # noqa: BLE001 - recorded on every item of the batch, retried on a rerun
            whole_failed = True
            results = [ChatResult([], [], {}, error=f"backend failed the batch: {type(err).__name__}: {err}")
                       ] * len(requests)
        for k, res in zip(ok, results):
            entries[k] = _score(batch[k], res, backend.model, samples)
    return entries, whole_failed


def calibrate_dataset(root: str | os.PathLike | HopChainDataset, backend: ChatBackend, *, samples: int = 8,
                      temperature: float = 1.0, max_tokens: int = 4096,
                      variants: Sequence[str] = DEFAULT_VARIANTS, out: str | os.PathLike | None = None,
                      batch_size: int = 64, progress: bool = True) -> dict:
    """Calibrate every record of `variants` not yet in the sidecar `out` (default
    ROOT/calibration-<model slug>.jsonl); returns the summary of the whole selection:

      records     records of `variants` in the dataset
      calibrated  of those, with an error-free entry (this run and earlier ones); new: this run's
      too_easy    calibrated records whose `samples` answers were all correct
      histogram   [n_0, ..., n_samples]: calibrated records by number of correct answers
      errors      records whose entry has an error (a rerun retries them)
      model, samples, temperature, sidecar (path), compacted (superseded lines removed)

    Backend failures are recorded per item, never raised; if the backend fails 3 whole batches
    (`backend.complete` raising) in a row the run stops with a RuntimeError (what was
    written stays). The sidecar must hold this model's entries with the same number of samples.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError(f"calibrate: samples ({samples}) and batch_size ({batch_size}) must be >= 1")
    ds = root if isinstance(root, HopChainDataset) else HopChainDataset(root)
    model = backend.model
    sidecar = Path(out) if out is not None else default_sidecar(ds.root, model)
    wanted = set(variants)
    with SidecarWriter(sidecar) as writer:
        latest = {i: CalibrationEntry.from_json(o) for i, o in _latest(writer.entries).items()}
        for entry in latest.values():
            if entry.model != model or (entry.error is None and entry.samples != samples):
                raise ValueError(
                    f"{sidecar} holds calibration by {entry.model!r} with {entry.samples} samples; this run is "
                    f"{model!r} with {samples}: pass another output file (--out) or the same model and --samples")
        selected: list[str] = []
        new = new_errors = failed_in_a_row = 0
        batch: list[dict] = []
        bar = tqdm.tqdm(total=len(ds), unit="rec", desc=f"calibrate {model_slug(model)}", disable=not progress)

        def flush() -> None:
            nonlocal new, new_errors, failed_in_a_row
            entries, whole_failed = _calibrate_batch(batch, backend, ds.image_of, samples, temperature, max_tokens)
            writer.append([e.to_json() for e in entries])
            for e in entries:
                latest[e.id] = e
            new += sum(e.error is None for e in entries)
            new_errors += sum(e.error is not None for e in entries)
            failed_in_a_row = failed_in_a_row + 1 if whole_failed else 0
            bar.update(len(batch))
            bar.set_postfix(new=new, errors=new_errors)
            batch.clear()
            if failed_in_a_row >= _ABORT_AFTER_FAILED_BATCHES:
                raise RuntimeError(f"calibrate: the backend {model!r} failed {failed_in_a_row} whole batches in a "
                                   f"row (last: {entries[0].error}); fix it and rerun the same command: "
                                   f"finished items in {sidecar} are kept")

        try:
            seen: set[str] = set()
            for rec in ds.records():
                if rec["variant"] not in wanted or rec["id"] in seen:
                    bar.update(1)
                    continue
                seen.add(rec["id"])
                selected.append(rec["id"])
                done = latest.get(rec["id"])
                if done is not None and done.error is None:
                    bar.update(1)
                    continue
                batch.append(rec)
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
        finally:
            bar.close()
        compacted = writer.compact()
    mine = [latest[i] for i in selected if i in latest]
    good = [e for e in mine if e.error is None]
    histogram = [0] * (samples + 1)
    for e in good:
        histogram[e.correct] += 1
    return {"records": len(selected), "calibrated": len(good), "new": new,
            "too_easy": sum(e.too_easy for e in good), "histogram": histogram,
            "errors": sum(e.error is not None for e in mine), "model": model, "samples": samples,
            "temperature": temperature, "variants": list(variants), "sidecar": str(sidecar), "compacted": compacted}

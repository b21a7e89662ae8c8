"""TensorStore-backed HopChain dataset: images, instance label maps and records, written in shards.

Layout of a dataset directory:
  config.json                     the synthesis config (a rerun must match it)
  shards/shard-00003/             one committed shard
          images/   zarr3 uint8  [n_images, H, W, 3]    one chunk per image, zstd; H, W = the shard's largest
                                                    image, each image top-left in its slot
      labels/   zarr3 uint8  [n_images, H, W]       0 background, k+1 = instance "i<k>"
      records/  zarr3 uint8  [total_bytes]          UTF-8 JSON of every record, back to back
      offsets/  zarr3 int64  [n_records + 1]        record r is records[offsets[r]:offsets[r+1]]
      shard.json                                    counts, each image's [h, w], stats; written last
  shards/.tmp-shard-00003-<nonce>/  a shard being written (never read; removed on the next run)

Crash safety: a shard is built in a temporary directory and renamed into place only when complete
(rename is atomic on one filesystem), so a killed run leaves whole shards or nothing. Shard contents
are a pure function of (config, shard index), so rerunning the same command recomputes exactly the
missing shards: no record is lost or duplicated.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import tensorstore as ts

SHARD_GLOB = "shard-*"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _spec(path: Path, shape=None, dtype=None, chunks=None) -> dict:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}} if dtype != "uint8" else {"name": "bytes"},
                       {"name": "zstd", "configuration": {"level": 3}}],
        }
    return spec


def _write_array(path: Path, data: np.ndarray, chunks: Sequence[int], dtype: str) -> None:
    arr = ts.open(_spec(path, data.shape, dtype, chunks), create=True).result()
    arr.write(data).result()


def write_shard(root: str | os.PathLike, index: int, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                records: Sequence[dict], info: dict) -> Path:
    """Write one shard atomically. images: uint8 [H, W, 3] each (one size per shard); labels: uint8
    [H, W]; records: schema-v2 dicts whose image refers to this shard. Returns the shard's path."""
    shards = Path(root) / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    final = shards / shard_name(index)
    if final.exists():
        raise FileExistsError(f"{final} already exists; shards are written once")
    tmp = shards / f".tmp-{shard_name(index)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        sizes = []
        if images:
            if len(labels) != len(images):
                raise ValueError("write_shard: one label map per image")
            for im, lb in zip(images, labels):
                if im.ndim != 3 or im.shape[2] != 3 or lb.shape != im.shape[:2]:
                    raise ValueError(f"write_shard: image {im.shape} / labels {lb.shape} must be [H, W, 3] / [H, W]")
                sizes.append([int(im.shape[0]), int(im.shape[1])])
            # Images of one shard may differ in size: each is stored top-left in an [H_max, W_max] slot.
            h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
            stacked = np.zeros((len(images), h, w, 3), np.uint8)
            stacked_labels = np.zeros((len(images), h, w), np.uint8)
            for k, (im, lb) in enumerate(zip(images, labels)):
                stacked[k, :im.shape[0], :im.shape[1]] = im
                stacked_labels[k, :lb.shape[0], :lb.shape[1]] = lb
            _write_array(tmp / "images", stacked, (1, h, w, 3), "uint8")
            _write_array(tmp / "labels", stacked_labels, (1, h, w), "uint8")
        blobs = [json.dumps(r, sort_keys=True, separators=(",", ":")).encode() for r in records]
        offsets = np.zeros(len(blobs) + 1, np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        data = np.frombuffer(b"".join(blobs), np.uint8) if blobs else np.zeros(0, np.uint8)
        _write_array(tmp / "records", data, (max(1, min(len(data), 1 << 22)),), "uint8")
        _write_array(tmp / "offsets", offsets, (len(offsets),), "int64")
        meta = {"index": index, "n_images": len(images), "n_records": len(records), "image_sizes": sizes, **info}
        (tmp / "shard.json").write_text(json.dumps(meta, sort_keys=True, indent=1))
        _fsync_tree(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def clean_partial_shards(root: str | os.PathLike) -> int:
    """Remove shards a killed run left half-written; returns how many."""
    shards = Path(root) / "shards"
    stale = list(shards.glob(".tmp-*")) if shards.exists() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def write_json_atomic(path: str | os.PathLike, value) -> None:
    """Write `value` as JSON to `path` through a temporary file and a rename: readers see all or nothing."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def config_difference(have: dict, wanted: dict) -> list[str]:
    """The top-level keys on which two dataset configs differ, sorted."""
    return sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))


def claim_dataset_dir(root: str | os.PathLike, config: dict) -> dict | None:
    """Create `root` and, on a first run, write `config` as its config.json (atomically); on a rerun
    return the config.json already there, for the caller to compare (None when it was just written).
    A directory holding shards but no config.json is refused: its contents are of unknown origin."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.json"
    if path.exists():
        return json.loads(path.read_text())
    if committed_shards(root):
        raise ValueError(f"{root} holds shards but no config.json; choose a new output directory")
    write_json_atomic(path, config)
    return None


def committed_shards(root: str | os.PathLike) -> dict[int, Path]:
    """Index -> path of every complete shard under root."""
    shards = Path(root) / "shards"
    out = {}
    for path in sorted(shards.glob(SHARD_GLOB)) if shards.exists() else []:
        if (path / "shard.json").exists():
            out[int(path.name.split("-")[1])] = path
    return out


@dataclasses.dataclass
class _OpenShard:
    name: str
    images: ts.TensorStore | None
    labels: ts.TensorStore | None
    records: ts.TensorStore
    offsets: np.ndarray
    meta: dict


class HopChainDataset:
    """Read access to a dataset directory: records in a stable global order (shard, then position),
    images and label maps by (shard name, image index). Opens every array eagerly (SPEC §7)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        shards = committed_shards(self.root)
        if not shards:
            raise FileNotFoundError(
                f"{self.root} holds no HopChain shards; create one with `hopchain synth --out {self.root}`")
        self.shards: dict[str, _OpenShard] = {}
        starts = []
        total = 0
        for _, path in sorted(shards.items()):
            meta = json.loads((path / "shard.json").read_text())
            has_images = meta["n_images"] > 0
            shard = _OpenShard(
                path.name,
                ts.open(_spec(path / "images")).result() if has_images else None,
                ts.open(_spec(path / "labels")).result() if has_images else None,
                ts.open(_spec(path / "records")).result(),
                ts.open(_spec(path / "offsets")).result().read().result(),
                meta)
            self.shards[path.name] = shard
            starts.append(total)
            total += meta["n_records"]
        self._order = list(self.shards.values())
        self._starts = np.asarray(starts, np.int64)
        self._total = total
        config_path = self.root / "config.json"
        self.config = json.loads(config_path.read_text()) if config_path.exists() else {}

    def __len__(self) -> int:
        return self._total

    def __repr__(self) -> str:  # stable: Grain compares it on checkpoint restore
        return f"HopChainDataset(root={str(self.root)!r}, shards={len(self.shards)}, records={self._total})"

    def _locate(self, i: int) -> tuple[_OpenShard, int]:
        if not 0 <= i < self._total:
            raise IndexError(f"record {i} out of range [0, {self._total})")
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self._order[s], i - int(self._starts[s])

    def record_bytes(self, i: int) -> bytes:
        shard, r = self._locate(i)
        lo, hi = int(shard.offsets[r]), int(shard.offsets[r + 1])
        return shard.records[lo:hi].read().result().tobytes()

    def record(self, i: int) -> dict:
        return json.loads(self.record_bytes(i))

    def records(self) -> Iterator[dict]:
        """Every record in order, reading each shard's bytes once."""
        for shard in self._order:
            data = shard.records.read().result().tobytes()
            for r in range(shard.meta["n_records"]):
                yield json.loads(data[shard.offsets[r]:shard.offsets[r + 1]])

    def _size(self, shard: str, index: int) -> tuple[int, int]:
        sizes = self.shards[shard].meta.get("image_sizes")
        if sizes:
            return tuple(sizes[index])
        return tuple(self.shards[shard].images.shape[1:3])

    def image(self, shard: str, index: int) -> np.ndarray:
        """uint8 [H, W, 3] (this image's own size)."""
        h, w = self._size(shard, index)
        return self.shards[shard].images[index, :h, :w].read().result()

    def labels(self, shard: str, index: int) -> np.ndarray:
        """uint8 [H, W]; value k+1 marks instance "i<k>"."""
        h, w = self._size(shard, index)
        return self.shards[shard].labels[index, :h, :w].read().result()

    def image_of(self, record: dict) -> np.ndarray:
        ref = record["image"]
        return self.image(ref["shard"], ref["index"])

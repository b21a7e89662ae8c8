"""Held-out splits by whole image: every record of an image (its full chain and its half / single variants,
every query written over it) lands on the same side, so a held-out score measures images the model never
trained on.

An image is held out when a salted SHA-256 of its content hash (the record's ``image.sha256``) falls below
``fraction``: the split depends on nothing but the image and the salt, so it is the same on every host,
for every seed, and when the dataset grows (an image never changes side).

    train, heldout = split_sources("data/hop", fraction=0.1)   # HopChainSources for make_mixture / evaluation
    half_only = keep_variants(train, ("half",))                 # the paper's ablation: train on one variant
"""
from __future__ import annotations

import hashlib
import json
import os

from hopchain_jax.data.grain_source import HopChainSource

__all__ = ["DEFAULT_SALT", "heldout_image", "SplitSource", "split_sources", "keep_variants"]

DEFAULT_SALT = "hopchain-heldout-v1"
PARTS = ("train", "heldout")


def heldout_image(sha256: str, fraction: float, salt: str = DEFAULT_SALT) -> bool:
    """True when the image with this content hash is in the held-out part of a `fraction` split."""
    digest = hashlib.sha256(f"{salt}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2 ** 64


class SplitSource(HopChainSource):
    """The records of one part ("train" or "heldout"; "all" with fraction 0: no split) of a dataset directory,
    as a Grain random-access source (``make_mixture`` takes it in place of a directory). ``indices``: the
    dataset rows it holds; ``image_hashes``: the distinct image hashes of those rows (sorted); ``variants``:
    the record variants it was restricted to (keep_variants; () for all)."""

    def __init__(self, root: str | os.PathLike, fraction: float, part: str, salt: str = DEFAULT_SALT,
                 _rows: tuple[list[int], list[str]] | None = None, variants: tuple[str, ...] = ()):
        if part not in PARTS + ("all",):
            raise ValueError(f"SplitSource(part={part!r}): use one of {PARTS}")
        if part != "all" and not 0 < fraction < 1:
            raise ValueError(f"SplitSource(fraction={fraction!r}): the held-out fraction must lie in (0, 1), e.g. "
                             "0.1 (TrainConfig.heldout_fraction)")
        super().__init__(root)
        self.fraction, self.part, self.salt = float(fraction), part, salt
        if _rows is None:
            _rows = _partition(self._ds, self.fraction, salt)[part if part != "all" else "train"]   # "all": fraction 0
        indices, hashes = _rows
        if not indices:
            raise ValueError(f"{root}: the {part} part of a {fraction} held-out split is empty ({len(self._ds)} "
                             f"records); use a larger dataset or change TrainConfig.heldout_fraction")
        self.indices = indices
        self.image_hashes = hashes
        self.variants = tuple(variants)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return super().__getitem__(self.indices[int(index)])

    def record(self, index: int) -> dict:
        """The full record of row `index` of this part."""
        return self._ds.record(self.indices[int(index)])

    def __repr__(self) -> str:
        only = f", variants={','.join(self.variants)}" if self.variants else ""
        return (f"HopChainSource(root={self._root!r}, records={len(self.indices)}, "
                f"split={self.part}:{self.fraction:g}:{self.salt}{only})")


def _partition(ds, fraction: float, salt: str) -> dict[str, tuple[list[int], list[str]]]:
    """part -> (dataset rows, sorted distinct image hashes), from one read of every record."""
    rows: dict[str, list[int]] = {part: [] for part in PARTS}
    hashes: dict[str, set[str]] = {part: set() for part in PARTS}
    for i in range(len(ds)):
        sha = json.loads(ds.record_bytes(i))["image"]["sha256"]
        part = "heldout" if heldout_image(sha, fraction, salt) else "train"
        rows[part].append(i)
        hashes[part].add(sha)
    return {part: (rows[part], sorted(hashes[part])) for part in PARTS}


def split_sources(root: str | os.PathLike, fraction: float, salt: str = DEFAULT_SALT
                  ) -> tuple[SplitSource, SplitSource]:
    """(train part, held-out part) of a dataset directory, reading its records once."""
    from hopchain_jax.data.store import HopChainDataset
    parts = _partition(HopChainDataset(root), float(fraction), salt)
    return tuple(SplitSource(root, fraction, part, salt, _rows=parts[part]) for part in PARTS)



def keep_variants(source: str | os.PathLike | HopChainSource, variants: tuple[str, ...]) -> SplitSource:
    """The records of `source` (a dataset directory, a HopChainSource or a SplitSource part) whose variant is
    one of `variants` ("full", "half", "single", "external"), e.g. to train on half chains only (the paper's
    ablation, TrainConfig.train_variants). Keeps the source's part and split; image_hashes are those of the
    kept records. Raises naming the variants the source has when none is kept."""
    if isinstance(source, SplitSource):
        root, fraction, part, salt, rows = source._root, source.fraction, source.part, source.salt, source.indices
    else:
        root = source._root if isinstance(source, HopChainSource) else str(source)
        fraction, part, salt, rows = 0.0, "all", DEFAULT_SALT, None   # the whole dataset: no split
    base = HopChainSource(root)
    rows = range(len(base)) if rows is None else rows
    kept, hashes, seen = [], set(), set()
    for i in rows:
        rec = json.loads(base.dataset.record_bytes(i))
        seen.add(rec["variant"])
        if rec["variant"] in variants:
            kept.append(i)
            hashes.add(rec["image"]["sha256"])
    if not kept:
        raise ValueError(f"{root}: no record of variants {tuple(variants)} (it has {sorted(seen)}); set "
                         "TrainConfig.train_variants to variants the data has, or () for all")
    return SplitSource(root, fraction, part, salt, _rows=(kept, sorted(hashes)), variants=tuple(variants))

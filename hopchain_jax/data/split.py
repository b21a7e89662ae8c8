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

import copy
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
    the record variants it was restricted to (``only``; () for all). The rows' image hashes and variants come
    from the one read of every record that made the split, so restricting it reads nothing again."""

    def __init__(self, root: str | os.PathLike, fraction: float, part: str, salt: str = DEFAULT_SALT,
                 _rows: tuple[list[int], list[str], list[str]] | None = None):
        if part not in PARTS + ("all",):
            raise ValueError(f"SplitSource(part={part!r}): use one of {PARTS}")
        if part != "all" and not 0 < fraction < 1:
            raise ValueError(f"SplitSource(fraction={fraction!r}): the held-out fraction must lie in (0, 1), e.g. "
                             "0.1 (TrainConfig.heldout_fraction)")
        super().__init__(root)
        self.fraction, self.part, self.salt = float(fraction), part, salt
        if _rows is None:
            _rows = _partition(self._ds, self.fraction, salt)[part if part != "all" else "train"]   # "all": fraction 0
        if not _rows[0]:
            raise ValueError(f"{root}: the {part} part of a {fraction} held-out split is empty ({len(self._ds)} "
                             f"records); use a larger dataset or change TrainConfig.heldout_fraction")
        self._set_rows(*_rows)
        self.variants: tuple[str, ...] = ()

    def _set_rows(self, indices: list[int], shas: list[str], row_variants: list[str]) -> None:
        self.indices, self._shas, self._row_variants = indices, shas, row_variants
        self.image_hashes = sorted(set(shas))

    def only(self, variants: tuple[str, ...]) -> "SplitSource":
        """This part restricted to the records whose variant is one of `variants` (same open dataset, nothing
        read again); raises naming the variants it has when none is kept."""
        keep = [k for k, v in enumerate(self._row_variants) if v in variants]
        if not keep:
            raise ValueError(f"{self._root}: no record of variants {tuple(variants)} (it has "
                             f"{sorted(set(self._row_variants))}); set TrainConfig.train_variants to variants the "
                             "data has, or () for all")
        out = copy.copy(self)
        out._set_rows([self.indices[k] for k in keep], [self._shas[k] for k in keep],
                      [self._row_variants[k] for k in keep])
        out.variants = tuple(variants)
        return out

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


def _partition(ds, fraction: float, salt: str) -> dict[str, tuple[list[int], list[str], list[str]]]:
    """part -> (dataset rows, each row's image hash, each row's variant), from one read of every record."""
    parts: dict[str, tuple[list[int], list[str], list[str]]] = {part: ([], [], []) for part in PARTS}
    for i in range(len(ds)):
        rec = json.loads(ds.record_bytes(i))
        sha = rec["image"]["sha256"]
        rows, shas, variants = parts["heldout" if heldout_image(sha, fraction, salt) else "train"]
        rows.append(i)
        shas.append(sha)
        variants.append(rec["variant"])
    return parts


def split_sources(root: str | os.PathLike, fraction: float, salt: str = DEFAULT_SALT
                  ) -> tuple[SplitSource, SplitSource]:
    """(train part, held-out part) of a dataset directory, reading its records once."""
    from hopchain_jax.data.store import HopChainDataset
    parts = _partition(HopChainDataset(root), float(fraction), salt)
    return tuple(SplitSource(root, fraction, part, salt, _rows=parts[part]) for part in PARTS)



def keep_variants(source: str | os.PathLike | HopChainSource, variants: tuple[str, ...]) -> SplitSource:
    """The records of `source` (a dataset directory, a HopChainSource or a SplitSource part) whose variant is
    one of `variants` ("full", "half", "single", "external"), e.g. to train on half chains only (the paper's
    ablation, TrainConfig.train_variants). A split part keeps its part and split (SplitSource.only: nothing
    read again); a directory is read once, as the whole dataset (part "all")."""
    if not isinstance(source, SplitSource):
        source = SplitSource(source._root if isinstance(source, HopChainSource) else str(source), 0.0, "all")
    return source.only(tuple(variants))

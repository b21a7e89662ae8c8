"""The paper's four stages as small protocols, and their procedural (oracle) implementations.

  1. CategoryIdentifier  image -> category names present          (paper: a large VLM)
  2. InstanceSegmenter   image, categories -> instances + masks    (paper: SAM3)
  3. QueryComposer       image, instances -> multi-hop queries     (paper: a VLM shown crops)
  4. QueryVerifier       record -> verification or a rejection     (paper: 4 solvers + calibration)

The procedural versions read a rendered scene's exact annotations (the oracle), so the whole pipeline
runs offline. Model-driven versions (VLM, SAM3) implement the same protocols; nothing else changes.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Protocol, Sequence

import numpy as np

from hopchain_jax.synth.composer import AnswerBalance, ChainComposer, ComposerConfig, RealizedQuery
from hopchain_jax.synth.counterfactual import counterfactual_failures
from hopchain_jax.synth.program import ProgramError, execute
from hopchain_jax.synth.record import validate_record
from hopchain_jax.world.catalog import CATEGORIES
from hopchain_jax.world.render import RenderedScene


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """An image entering the pipeline. pixels: uint8 [H, W, 3]; oracle: exact annotations when the image
    was rendered here (None for user photos)."""

    pixels: np.ndarray
    source: str
    oracle: RenderedScene | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """instances: schema-v1 instance dicts (ids "i<k>"); labels: uint8 [H, W], 0 background, k+1 instance i<k>."""

    instances: list[dict]
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Verification:
    """Schema-v1 `verification` field; `accepted` False carries the reason in `reason`; transient: not
    accepted only because a model call failed in a way that may not repeat (retry the record later)."""

    accepted: bool
    record_field: dict
    reason: str = ""
    transient: bool = False


class CategoryIdentifier(Protocol):
    name: str

    def identify(self, image: ImageInput) -> list[str]: ...


class InstanceSegmenter(Protocol):
    name: str

    def segment(self, image: ImageInput, categories: Sequence[str]) -> Segmentation: ...


class QueryComposer(Protocol):
    name: str

    def compose(self, image: ImageInput, instances: list[dict], rng: np.random.Generator,
                balance: AnswerBalance | None = None) -> list[dict[str, RealizedQuery]]: ...


class QueryVerifier(Protocol):
    name: str

    def verify(self, record: dict) -> Verification: ...


def _require_oracle(image: ImageInput, stage: str) -> RenderedScene:
    if image.oracle is None:
        raise ValueError(
            f"{stage}: the procedural stage needs a rendered scene, but {image.source} is a user image; "
            "user images need the model-driven stages (a VLM for categories, SAM3 for segmentation)")
    return image.oracle


def normalized_box(box_px: tuple[int, int, int, int], width: int, height: int) -> list[int]:
    """Pixel box (ends exclusive) -> [x0, y0, x1, y1] integers in 0..1000 that still enclose it."""
    x0, y0, x1, y1 = box_px
    return [int(np.floor(x0 * 1000 / width)), int(np.floor(y0 * 1000 / height)),
            min(1000, int(np.ceil(x1 * 1000 / width))), min(1000, int(np.ceil(y1 * 1000 / height)))]


class OracleCategoryIdentifier:
    """Stage 1 from annotations: the categories the scene holds, sorted."""

    name = "oracle-categories"

    def identify(self, image: ImageInput) -> list[str]:
        return sorted({obj.spec.category for obj in _require_oracle(image, self.name).objects})


class OracleSegmenter:
    """Stage 2 from annotations: every object of the asked categories, with its exact mask."""

    name = "oracle-segmenter"

    def segment(self, image: ImageInput, categories: Sequence[str]) -> Segmentation:
        scene = _require_oracle(image, self.name)
        wanted = set(categories)
        instances = []
        labels = np.zeros_like(scene.labels)
        ids = {}
        for k, obj in enumerate(scene.objects):
            if obj.spec.category in wanted:
                ids[k] = f"i{len(ids)}"
        for k, obj in enumerate(scene.objects):
            if k not in ids:
                continue
            inst_id = len(instances)
            labels[scene.labels == k + 1] = inst_id + 1
            instances.append({
                "id": f"i{inst_id}",
                "category": obj.spec.category,
                "bbox": normalized_box(obj.box_px, image.width, image.height),
                "area": obj.area_px,
                "score": 1.0,
                "attributes": {
                    "color": obj.spec.color,
                    "size": obj.spec.size,
                    "text": obj.spec.text,
                    "part": CATEGORIES[obj.spec.category].part,
                    "part_count": obj.spec.part_count,
                },
                "occludes": [ids[j] for j in getattr(obj, "covers", ()) if j in ids],
            })
        return Segmentation(instances, labels)


class ChainQueryComposer:
    """Stage 3: the procedural chain composer (see composer.py)."""

    name = "procedural-chain-v2"

    def __init__(self, config: ComposerConfig = ComposerConfig()):
        self.config = config

    def compose(self, image: ImageInput, instances: list[dict], rng: np.random.Generator,
                balance: AnswerBalance | None = None) -> list[dict[str, RealizedQuery]]:
        """balance: what was kept so far, to spread answers out (see ChainComposer.compose)."""
        return ChainComposer(instances, image.width, image.height, self.config).compose(rng, balance)


class ProgramVerifier:
    """Stage 4 for procedural queries: re-execute the program from the record alone and check every
    schema invariant. Exact ground truth needs no solver vote and no calibration model."""

    name = "program"

    def verify(self, record: dict) -> Verification:
        try:
            answer = execute(record)
        except ProgramError as e:
            return Verification(False, {}, f"program does not execute: {e}")
        if answer != record["answer"]:
            return Verification(False, {}, f"program gives {answer}, record says {record['answer']}")
        problems = validate_record(record, check_program=False)
        if problems:
            return Verification(False, {}, "; ".join(problems))
        if record["variant"] == "full":  # shortened variants name dropped instances directly
            failures = counterfactual_failures(record, first_only=True)
            if failures:
                return Verification(False, {}, "counterfactual: " + failures[0])
        return Verification(True, {"method": "program", "solvers": 1, "agreeing": 1, "calibration": None})

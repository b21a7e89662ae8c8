"""Stage 2 on real photos: SAM3 text-prompted instance segmentation behind the InstanceSegmenter protocol.

The paper segments every category that stage 1 listed with SAM3 (one text prompt per category). This module
runs transformers' ``Sam3Model`` for that, but does its own pre- and post-processing, because transformers'
``Sam3ImageProcessor`` / ``Sam3Processor`` import torchvision, which has no CPU build matching our torch.

Pre-processing (equal to ``Sam3ImageProcessor``, the TorchvisionBackend):
  1. uint8 [H, W, 3] -> channels-first, resized to the model's square input (1008 px for facebook/sam3) with
     the kernel torchvision's ``resize`` picks on CPU: ``torch.nn.functional.interpolate(antialias=True)``
     straight on uint8 when the CPU has AVX2/AVX512 (bilinear) or for bicubic, else in float32 then rounded;
  2. rescale and normalise fused as transformers does: ``(x - mean/rescale) / (std/rescale)`` in float32.
  Text prompts: the checkpoint's CLIP tokenizer, padded to 32 tokens (as ``Sam3Processor``).

Model: the vision backbone runs once per image (``get_vision_features``); the category prompts then run in
batches that share those features (each feature map expanded along the batch, a view, not a copy).

Post-processing, per prompt (as ``Sam3ImageProcessor.post_process_instance_segmentation``):
  score = sigmoid(pred_logits) * sigmoid(presence_logits); keep score >= score_threshold; masks: sigmoid of
  the mask logits, bilinearly upsampled to the image size (align_corners=False), > mask_threshold; boxes
  (xyxy in 0-1) scaled to pixels. Then ours: drop masks smaller than min_area_frac of the image, greedy NMS
  by mask IoU within the category, keep the best max_instances_per_category, and greedy NMS by mask IoU
  across categories (one object found for two prompts keeps its higher-scoring category). Finally the label
  map is painted in descending score order: a pixel belongs to the highest-scoring instance covering it, and
  an instance left with fewer visible pixels than the minimum area is dropped as too small.

Import cost: torch and transformers are imported inside functions, so ``import hopchain_jax.vlm`` works
without them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hopchain_jax.synth.stages import ImageInput, Segmentation, normalized_box

__all__ = [
    "DROP_REASONS",
    "SAM3_TEXT_LENGTH",
    "Sam3ImageConfig",
    "Sam3Thresholds",
    "PromptCandidates",
    "Sam3Segmenter",
    "image_config_from_dir",
    "resize_uint8",
    "preprocess_image",
    "tokenize_prompts",
    "instance_scores",
    "upsample_masks",
    "boxes_to_pixels",
    "mask_iou_matrix",
    "greedy_mask_nms",
    "postprocess_prompt",
    "merge_candidates",
]

DROP_REASONS = ("low_score", "too_small", "duplicate", "over_cap")
SAM3_TEXT_LENGTH = 32  # Sam3Processor pads every prompt to 32 tokens (the CLIP text model's positions)
MAX_LABELED_INSTANCES = 254  # uint8 label map: 0 background, 1..254 instances
_SAM3_MODEL_TYPES = ("sam3", "sam3_video")
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL ids, as transformers' `resample`
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)  # Sam3ImageProcessor's class defaults
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class Sam3ImageConfig:
    """Settings of SAM3's image pre-processing (``Sam3ImageProcessor``'s keys; defaults: its class defaults).

    size: (height, width) of the model input in pixels; must equal the model's ``image_size``.
    resample: PIL filter id, 2 bilinear (SAM3's) or 3 bicubic. rescale_factor: multiplies uint8 values.
    """

    size: tuple[int, int] = (1008, 1008)
    image_mean: tuple[float, float, float] = IMAGENET_STANDARD_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STANDARD_STD
    rescale_factor: float = 1 / 255
    resample: int = 2

    def __post_init__(self):
        if len(self.size) != 2 or any(int(s) != s or s < 1 for s in self.size):
            raise ValueError(f"Sam3ImageConfig.size must be (height, width) positive integers, got {self.size!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("Sam3ImageConfig.image_mean and image_std need 3 values (R, G, B)")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"Sam3ImageConfig.image_std has a zero: {self.image_std}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"Sam3ImageConfig.resample={self.resample!r} is not supported; use 2 (bilinear, "
                             "SAM3's default) or 3 (bicubic)")
        if not self.rescale_factor > 0:
            raise ValueError(f"Sam3ImageConfig.rescale_factor must be > 0, got {self.rescale_factor!r}")


@dataclasses.dataclass(frozen=True)
class Sam3Thresholds:
    """Which predictions become instances.

    score_threshold: minimum sigmoid(logit) * sigmoid(presence), in 0..1 (kept when >=).
    mask_threshold: a pixel is in the mask when the upsampled mask probability is > this.
    min_area_frac: minimum mask area as a fraction of the image area (at least 1 pixel in any case).
    iou_threshold: two masks with IoU > this are the same object (within and across categories).
    max_instances_per_category: the best this many survive per category; max_instances: in all (<= 254).
    """

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_area_frac: float = 0.0005
    iou_threshold: float = 0.7
    max_instances_per_category: int = 20
    max_instances: int = MAX_LABELED_INSTANCES

    def __post_init__(self):
        for name in ("score_threshold", "mask_threshold", "min_area_frac", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Sam3Thresholds.{name} must lie in [0, 1], got {value!r}")
        if self.max_instances_per_category < 1:
            raise ValueError("Sam3Thresholds.max_instances_per_category must be >= 1, got "
                             f"{self.max_instances_per_category!r}")
        if not 1 <= self.max_instances <= MAX_LABELED_INSTANCES:
            raise ValueError(f"Sam3Thresholds.max_instances must lie in 1..{MAX_LABELED_INSTANCES} (uint8 label "
                             f"map), got {self.max_instances!r}")

    def min_area_px(self, height: int, width: int) -> int:
        """The smallest mask area kept, in pixels, for an image of height x width (never below 1)."""
        return max(1, int(math.ceil(self.min_area_frac * height * width)))


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _check_model_dir(model_dir: Path) -> dict:
    """config.json of a SAM3 checkpoint directory, or a ValueError saying what is wrong."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"SAM3 checkpoint {model_dir}: not a directory; download one first, e.g. "
                                "`huggingface-cli download facebook/sam3 --local-dir DIR`")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"SAM3 checkpoint {model_dir}: no config.json; point at the folder that holds "
                         "config.json, the weights and the tokenizer files")
    cfg = _read_json(cfg_path)
    model_type = cfg.get("model_type")
    if model_type not in _SAM3_MODEL_TYPES:
        raise ValueError(f"SAM3 checkpoint {model_dir}: config.json has model_type={model_type!r}, expected one "
                         f"of {_SAM3_MODEL_TYPES}; this segmenter only runs SAM3 checkpoints")
    return cfg


def _model_image_size(cfg: dict) -> int | None:
    """The model's square input size from a config.json dict (sam3 or sam3_video), or None if absent."""
    if cfg.get("model_type") == "sam3_video" and isinstance(cfg.get("detector_config"), dict):
        cfg = cfg["detector_config"]
    backbone = (cfg.get("vision_config") or {}).get("backbone_config") or {}
    size = backbone.get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size is not None else None


def image_config_from_dir(model_dir: str | os.PathLike) -> Sam3ImageConfig:
    """Sam3ImageConfig of a checkpoint directory.

    Reads ``preprocessor_config.json`` (flat keys) or, failing that, the ``image_processor`` entry of
    ``processor_config.json``; keys they leave out take Sam3ImageProcessor's class defaults, except ``size``,
    which then follows the model's ``image_size`` from config.json. Raises ValueError when the processor
    size and the model's image size disagree, or when a do_* flag turns a step off (not supported).
    """
    model_dir = Path(model_dir)
    cfg = _check_model_dir(model_dir)
    model_size = _model_image_size(cfg)
    pp: dict[str, Any] = {}
    source = None
    if (model_dir / "preprocessor_config.json").is_file():
        source = model_dir / "preprocessor_config.json"
        pp = _read_json(source)
    elif (model_dir / "processor_config.json").is_file():
        source = model_dir / "processor_config.json"
        pp = _read_json(source).get("image_processor") or {}
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if pp.get(flag, True) is False:
            raise ValueError(f"{source}: {flag}=false is not supported by hopchain_jax's SAM3 pre-processing")
    kwargs: dict[str, Any] = {}
    size = pp.get("size")
    if size:
        if "height" not in size or "width" not in size:
            raise ValueError(f"{source}: size {size} is not {{'height': H, 'width': W}} as SAM3 uses")
        kwargs["size"] = (int(size["height"]), int(size["width"]))
    elif model_size is not None:
        kwargs["size"] = (model_size, model_size)
    if model_size is not None and "size" in kwargs and kwargs["size"] != (model_size, model_size):
        raise ValueError(f"{source}: size {kwargs['size']} differs from the model's image_size {model_size} "
                         "in config.json; fix one of the two files")
    for key in ("image_mean", "image_std"):
        if pp.get(key) is not None:
            value = pp[key]
            kwargs[key] = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3))
    if pp.get("rescale_factor") is not None:
        kwargs["rescale_factor"] = float(pp["rescale_factor"])
    if pp.get("resample") is not None:
        kwargs["resample"] = int(pp["resample"])
    try:
        return Sam3ImageConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"{source or model_dir}: {e}") from None


# --------------------------------------------------------------------------------------------- pre-processing


def _native_uint8_resize(resample: int) -> bool:
    """Whether torchvision's resize runs the uint8 kernel itself on this CPU (else float32 + round)."""
    import torch
    if _RESAMPLE[resample] == "bilinear":
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return True  # bicubic: always native on CPU


def resize_uint8(pixels: np.ndarray, size: tuple[int, int], resample: int = 2) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [3, h, w] (size = (h, w)), antialiased, bit-equal to torchvision's CPU resize.

    torchvision (which Sam3ImageProcessor calls) uses torch's interpolate: on uint8 directly where the CPU has
    AVX2/AVX512 for bilinear (always for bicubic), else in float32, clamped (bicubic) and rounded.
    """
    import torch
    import torch.nn.functional as F
    image = torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C")).permute(2, 0, 1).contiguous()  # a writable copy
    h, w = int(size[0]), int(size[1])
    if tuple(image.shape[-2:]) == (h, w):
        return image.numpy().copy()
    mode = _RESAMPLE[resample]
    batch = image[None]
    if _native_uint8_resize(resample):
        out = F.interpolate(batch, size=[h, w], mode=mode, align_corners=False, antialias=True)
    else:
        out = F.interpolate(batch.float(), size=[h, w], mode=mode, align_corners=False, antialias=True)
        if mode == "bicubic":
            out = out.clamp_(0, 255)
        out = out.round_().to(torch.uint8)
    return out[0].numpy()


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    """The image as uint8 [H, W, 3]; grayscale [H, W] is repeated to 3 channels; anything else raises."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"SAM3 pre-processing needs uint8 pixels, got {pixels.dtype}; convert with "
                         "hopchain_jax.models.image_processor.to_rgb_uint8 first")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"SAM3 pre-processing needs [H, W, 3] RGB pixels, got shape {pixels.shape}; convert "
                         "with hopchain_jax.models.image_processor.to_rgb_uint8 first")
    if min(pixels.shape[:2]) < 1:
        raise ValueError(f"SAM3 pre-processing got an empty image of shape {pixels.shape}")
    return pixels


def preprocess_image(pixels: np.ndarray, config: Sam3ImageConfig = Sam3ImageConfig()) -> np.ndarray:
    """uint8 [H, W, 3] (or [H, W]) -> float32 [3, h, w], the model's ``pixel_values`` for one image.

    Resize as torchvision does, then transformers' fused rescale + normalise in float32:
    ``(x - float32(mean) * float32(1/rescale)) / (float32(std) * float32(1/rescale))``.
    """
    resized = resize_uint8(_check_pixels(pixels), config.size, config.resample)
    inv = np.float32(1.0 / config.rescale_factor)
    mean = (np.asarray(config.image_mean, dtype=np.float32) * inv).reshape(3, 1, 1)
    std = (np.asarray(config.image_std, dtype=np.float32) * inv).reshape(3, 1, 1)
    return (resized.astype(np.float32) - mean) / std


def tokenize_prompts(tokenizer, prompts: Sequence[str], max_length: int = SAM3_TEXT_LENGTH
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Text prompts -> (input_ids int64 [C, max_length], attention_mask int64 [C, max_length]).

    As Sam3Processor: the checkpoint's CLIP tokenizer with ``padding="max_length", max_length=32``; unlike it,
    longer prompts are truncated to 32 tokens (the CLIP text model has 32 positions) instead of failing.
    """
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


# --------------------------------------------------------------------------------------------- post-processing


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def instance_scores(pred_logits: np.ndarray, presence_logit: float | np.ndarray | None) -> np.ndarray:
    """float32 [Q] query logits and the prompt's presence logit -> float32 [Q] scores in 0..1.

    score = sigmoid(logit) * sigmoid(presence) (the presence factor is 1 when the model gives none).
    """
    scores = _sigmoid(pred_logits)
    if presence_logit is not None:
        scores = scores * _sigmoid(np.asarray(presence_logit).reshape(-1)[0])
    return scores.astype(np.float32)


def upsample_masks(mask_logits: np.ndarray, image_hw: tuple[int, int], mask_threshold: float = 0.5) -> np.ndarray:
    """float [N, h, w] mask logits -> bool [N, H, W] masks at the image size.

    As transformers: sigmoid first, then bilinear upsampling (align_corners=False) of the probabilities, then
    ``> mask_threshold``.
    """
    import torch
    import torch.nn.functional as F
    mask_logits = np.asarray(mask_logits, dtype=np.float32)
    H, W = int(image_hw[0]), int(image_hw[1])
    if len(mask_logits) == 0:
        return np.zeros((0, H, W), dtype=bool)
    probs = torch.from_numpy(mask_logits).sigmoid()[None]  # [1, N, h, w]
    probs = F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)[0]
    return (probs > mask_threshold).numpy()


def boxes_to_pixels(boxes01: np.ndarray, width: int, height: int) -> np.ndarray:
    """float [N, 4] xyxy boxes in 0..1 -> int64 [N, 4] pixel boxes (ends exclusive), clipped to the image.

    x0, y0 round down and x1, y1 up, so the pixel box encloses the model's box; a box thinner than a pixel
    is widened to one pixel, so every box has x0 < x1 and y0 < y1. Coordinates within 1e-3 px of an integer
    are snapped to it first, so float32 noise (0.55 * 160 = 88.0000019) adds no pixel.
    """
    b = np.asarray(boxes01, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    px = np.round(b * scale, 3)
    x0 = np.clip(np.floor(np.minimum(px[:, 0], px[:, 2])), 0, width - 1)
    y0 = np.clip(np.floor(np.minimum(px[:, 1], px[:, 3])), 0, height - 1)
    x1 = np.clip(np.ceil(np.maximum(px[:, 0], px[:, 2])), 0, width)
    y1 = np.clip(np.ceil(np.maximum(px[:, 1], px[:, 3])), 0, height)
    x1 = np.maximum(x1, x0 + 1)
    y1 = np.maximum(y1, y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """bool [N, H, W] -> int64 [N, 4] tight pixel boxes (x0, y0, x1, y1), ends exclusive; (0,0,0,0) if empty."""
    out = np.zeros((len(masks), 4), dtype=np.int64)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        if len(rows):
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def mask_iou_matrix(masks: np.ndarray) -> np.ndarray:
    """bool [N, H, W] -> float64 [N, N] pairwise mask IoU (intersection / union of pixels; 0 for two empties).

    Each pair is compared only inside the overlap of the two masks' boxes, so far-apart masks cost nothing.
    """
    masks = np.asarray(masks, dtype=bool)
    n = len(masks)
    areas = masks.sum(axis=(1, 2), dtype=np.int64)
    boxes = _mask_boxes(masks)
    iou = np.eye(n, dtype=np.float64) * (areas > 0)
    for i in range(n):
        for j in range(i + 1, n):
            x0, y0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x1, y1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            if x0 >= x1 or y0 >= y1:
                continue
            inter = int(np.count_nonzero(masks[i, y0:y1, x0:x1] & masks[j, y0:y1, x0:x1]))
            union = int(areas[i] + areas[j] - inter)
            iou[i, j] = iou[j, i] = inter / union if union else 0.0
    return iou


def greedy_mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float,
                    groups: Sequence[Any] | None = None) -> tuple[np.ndarray, dict[int, int]]:
    """Greedy non-maximum suppression by mask IoU.

    masks bool [N, H, W]; scores [N]. Visits masks by descending score (ties: lower index first) and drops
    each one whose IoU with an already kept mask is > iou_threshold. groups: optional [N] labels; when
    given, only masks of different groups suppress each other (same-group pairs are left alone).
    Returns (kept indices int64 [K] in descending score order, {dropped index: index that suppressed it}).
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    iou = mask_iou_matrix(masks)
    kept: list[int] = []
    suppressed: dict[int, int] = {}
    for i in order:
        i = int(i)
        for k in kept:
            if groups is not None and groups[i] == groups[k]:
                continue
            if iou[i, k] > iou_threshold:
                suppressed[i] = k
                break
        else:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64), suppressed


@dataclasses.dataclass
class PromptCandidates:
    """The instances one category prompt yields after its own filters.

    scores float32 [N] (descending), boxes01 float32 [N, 4] (xyxy in 0..1), masks bool [N, H, W].
    drops: how many queries each reason removed (keys of DROP_REASONS).
    """

    category: str
    scores: np.ndarray
    boxes01: np.ndarray
    masks: np.ndarray
    drops: Counter = dataclasses.field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.scores)


def postprocess_prompt(category: str, pred_logits: np.ndarray, presence_logit: float | np.ndarray | None,
                       pred_boxes: np.ndarray, pred_masks: np.ndarray, image_hw: tuple[int, int],
                       thresholds: Sam3Thresholds = Sam3Thresholds()) -> PromptCandidates:
    """One prompt's raw outputs -> its candidate instances.

    pred_logits [Q], presence_logit scalar (or None), pred_boxes [Q, 4] xyxy in 0..1, pred_masks [Q, h, w]
    logits; image_hw (H, W) in pixels. Steps: score threshold ("low_score"), upsample + binarise masks, area
    below the minimum ("too_small"), NMS by mask IoU ("duplicate"), best max_instances_per_category
    ("over_cap").
    """
    H, W = int(image_hw[0]), int(image_hw[1])
    scores = instance_scores(pred_logits, presence_logit)
    drops: Counter = Counter()
    keep = np.flatnonzero(scores >= thresholds.score_threshold)
    drops["low_score"] += len(scores) - len(keep)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    masks = upsample_masks(np.asarray(pred_masks)[keep], (H, W), thresholds.mask_threshold)
    areas = masks.sum(axis=(1, 2))
    big = areas >= thresholds.min_area_px(H, W)
    drops["too_small"] += int((~big).sum())
    keep, masks = keep[big], masks[big]
    nms_keep, _ = greedy_mask_nms(masks, scores[keep], thresholds.iou_threshold)
    drops["duplicate"] += len(keep) - len(nms_keep)
    capped = nms_keep[:thresholds.max_instances_per_category]
    drops["over_cap"] += len(nms_keep) - len(capped)
    sel = keep[capped]
    return PromptCandidates(category, scores[sel].astype(np.float32),
                            np.asarray(pred_boxes, dtype=np.float32).reshape(-1, 4)[sel],
                            masks[capped], drops)


def merge_candidates(candidates: Sequence[PromptCandidates], image_hw: tuple[int, int],
                     thresholds: Sam3Thresholds = Sam3Thresholds()
                     ) -> tuple[list[dict], np.ndarray, Counter, list[dict]]:
    """All prompts' candidates -> (schema-v1 instances, uint8 [H, W] labels, drop counts, cross-category log).

    Cross-category NMS by mask IoU keeps the higher score ("duplicate"); then the label map is painted in
    descending score: each instance takes the pixels no higher-scoring instance holds, and is dropped when
    that leaves fewer than the minimum area ("too_small") or when max_instances are already placed
    ("over_cap"). Ids i0, i1, ... follow the categories' order, then descending score; ``area`` is the
    instance's pixel count in the label map; ``bbox`` the model's box in 0..1000.
    Drop counts are keyed by (category, reason); the log lists {"category", "kept_category", "score", "iou"}
    for each cross-category duplicate.
    """
    H, W = int(image_hw[0]), int(image_hw[1])
    drops: Counter = Counter()
    cross_log: list[dict] = []
    flat = [(ci, j) for ci, cand in enumerate(candidates) for j in range(len(cand))]
    labels = np.zeros((H, W), dtype=np.uint8)
    if not flat:
        return [], labels, drops, cross_log
    scores = np.array([candidates[ci].scores[j] for ci, j in flat], dtype=np.float64)
    masks = np.stack([candidates[ci].masks[j] for ci, j in flat])
    cats = [candidates[ci].category for ci, _ in flat]
    kept, suppressed = greedy_mask_nms(masks, scores, thresholds.iou_threshold, groups=cats)
    if suppressed:
        iou = mask_iou_matrix(masks)
        for i, k in sorted(suppressed.items()):
            drops[(cats[i], "duplicate")] += 1
            cross_log.append({"category": cats[i], "kept_category": cats[k], "score": round(float(scores[i]), 4),
                              "iou": round(float(iou[i, k]), 4)})
    min_area = thresholds.min_area_px(H, W)
    taken = np.zeros((H, W), dtype=bool)
    placed: list[tuple[int, np.ndarray]] = []  # (flat index, visible mask), descending score
    for i in kept:  # descending score
        i = int(i)
        if len(placed) >= thresholds.max_instances:
            drops[(cats[i], "over_cap")] += 1
            continue
        visible = masks[i] & ~taken
        if np.count_nonzero(visible) < min_area:
            drops[(cats[i], "too_small")] += 1
            continue
        taken |= visible
        placed.append((i, visible))
    placed.sort(key=lambda p: (flat[p[0]][0], -scores[p[0]], p[0]))
    instances = []
    for k, (i, visible) in enumerate(placed):
        ci, j = flat[i]
        labels[visible] = k + 1
        box = boxes_to_pixels(candidates[ci].boxes01[j:j + 1], W, H)[0]
        instances.append({
            "id": f"i{k}",
            "category": cats[i],
            "bbox": normalized_box(tuple(int(v) for v in box), W, H),
            "area": int(np.count_nonzero(visible)),
            "score": round(float(scores[i]), 4),
            "attributes": {},
            "occludes": [],
        })
    return instances, labels, drops, cross_log


# --------------------------------------------------------------------------------------------- the segmenter


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


class Sam3Segmenter:
    """Stage 2 (InstanceSegmenter) with SAM3: one text prompt per category, instances in schema v1.

    model: a transformers ``Sam3Model`` (eval mode, on its device); tokenizer: its CLIP tokenizer;
    image_config: pre-processing settings (see ``image_config_from_dir``); thresholds: instance filters.
    prompts_per_batch: category prompts sent through the detector together (they share the image features).
    """

    def __init__(self, model, tokenizer, image_config: Sam3ImageConfig = Sam3ImageConfig(),
                 thresholds: Sam3Thresholds = Sam3Thresholds(), *, name: str = "sam3", prompts_per_batch: int = 8):
        if prompts_per_batch < 1:
            raise ValueError(f"prompts_per_batch must be >= 1, got {prompts_per_batch}")
        model_size = getattr(getattr(model, "config", None), "image_size", None)
        if model_size is not None and tuple(image_config.size) != (int(model_size), int(model_size)):
            raise ValueError(f"image_config.size {image_config.size} differs from the model's image_size "
                             f"{model_size}; build the config with image_config_from_dir(model_dir)")
        self.model = model
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.thresholds = thresholds
        self.prompts_per_batch = int(prompts_per_batch)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, *, score_threshold: float = 0.5,
                        min_area_frac: float = 0.0005, iou_threshold: float = 0.7,
                        max_instances_per_category: int = 20, mask_threshold: float = 0.5,
                        device: str = "cpu", dtype=None, prompts_per_batch: int = 8) -> "Sam3Segmenter":
        """Load a SAM3 checkpoint directory (config.json, weights, CLIP tokenizer files).

        dtype: a torch dtype for the weights (default torch.float32; torch.bfloat16 on GPU halves memory).
        """
        model_dir = Path(model_dir)
        _check_model_dir(model_dir)
        image_config = image_config_from_dir(model_dir)
        import torch
        import transformers
        if not hasattr(transformers, "Sam3Model"):
            raise ImportError(f"transformers {transformers.__version__} has no Sam3Model; SAM3 needs "
                              "transformers >= 5.0 (pip install -U transformers)")
        from transformers import AutoTokenizer, Sam3Model
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as e:  # noqa: BLE001 - missing/corrupt tokenizer files: say what to do
            raise ValueError(f"SAM3 checkpoint {model_dir}: cannot load its CLIP tokenizer ({_error_text(e)}); "
                             "the folder needs the tokenizer files (tokenizer.json or vocab.json + merges.txt, "
                             "tokenizer_config.json) as published with the model") from e
        model = Sam3Model.from_pretrained(model_dir, dtype=dtype if dtype is not None else torch.float32)
        model = model.to(device).eval()
        thresholds = Sam3Thresholds(score_threshold=score_threshold, mask_threshold=mask_threshold,
                                    min_area_frac=min_area_frac, iou_threshold=iou_threshold,
                                    max_instances_per_category=max_instances_per_category)
        return cls(model, tokenizer, image_config, thresholds, name=f"sam3:{model_dir.resolve().name}",
                   prompts_per_batch=prompts_per_batch)

    # -- model calls

    def _model_device_dtype(self):
        param = next(self.model.parameters())
        return param.device, param.dtype

    def vision_features(self, pixels: np.ndarray):
        """uint8 [H, W, 3] -> the backbone's output for the image (batch 1), computed once per image."""
        import torch
        device, dtype = self._model_device_dtype()
        pixel_values = torch.from_numpy(preprocess_image(pixels, self.image_config))[None].to(device, dtype)
        with torch.inference_mode():
            return self.model.get_vision_features(pixel_values=pixel_values)

    @staticmethod
    def _expand_vision(vision, batch: int):
        """Batch-1 vision features -> the same features seen as a batch of `batch` (views, no copies)."""
        def grow(t):
            return t.expand(batch, *t.shape[1:]) if t is not None else None
        fields = {k: v for k, v in vision.items()}
        fields["last_hidden_state"] = grow(fields.get("last_hidden_state"))
        fields["fpn_hidden_states"] = tuple(grow(t) for t in vision.fpn_hidden_states)
        fields["fpn_position_encoding"] = tuple(grow(t) for t in vision.fpn_position_encoding)
        return type(vision)(**fields)

    def predict_prompts(self, vision, prompts: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """Run the detector for several text prompts on one image's features.

        Returns per prompt a dict of float32 numpy arrays: pred_logits [Q], presence_logit [1],
        pred_boxes [Q, 4] (xyxy in 0..1), pred_masks [Q, h, w] (logits).
        """
        import torch
        device, _ = self._model_device_dtype()
        input_ids, attention_mask = tokenize_prompts(self.tokenizer, prompts)
        with torch.inference_mode():
            out = self.model(vision_embeds=self._expand_vision(vision, len(prompts)),
                             input_ids=torch.from_numpy(input_ids).to(device),
                             attention_mask=torch.from_numpy(attention_mask).to(device))
        presence = out.presence_logits
        results = []
        for c in range(len(prompts)):
            results.append({
                "pred_logits": out.pred_logits[c].float().cpu().numpy(),
                "presence_logit": (presence[c].float().cpu().numpy().reshape(1) if presence is not None
                                   else None),
                "pred_boxes": out.pred_boxes[c].float().cpu().numpy(),
                "pred_masks": out.pred_masks[c].float().cpu().numpy(),
            })
        return results

    def _predict_chunk(self, vision, chunk: list[str], errors: dict[str, str]) -> dict[str, dict]:
        """prompts -> {prompt: raw prediction} in one batch; if the batch fails it is retried one prompt at a
        time, and a prompt that still fails lands in `errors` instead of raising."""
        try:
            return dict(zip(chunk, self.predict_prompts(vision, chunk)))
        except Exception as e:  # noqa: BLE001 - isolate the failing prompt below
            if len(chunk) == 1:
                errors[chunk[0]] = _error_text(e)
                return {}
        raw = {}
        for prompt in chunk:
            try:
                raw[prompt] = self.predict_prompts(vision, [prompt])[0]
            except Exception as e:  # noqa: BLE001 - one category's failure must not lose the image
                errors[prompt] = _error_text(e)
        return raw

    # -- the stage

    def segment(self, image: ImageInput, categories: Sequence[str]) -> Segmentation:
        """Instances of the asked categories on the image (see segment_with_report)."""
        return self.segment_with_report(image, categories)[0]

    def segment_with_report(self, image: ImageInput, categories: Sequence[str]) -> tuple[Segmentation, dict]:
        """Segment `categories` on `image`; returns the Segmentation and a flat report.

        The report: {reason: count} for each of DROP_REASONS (predictions dropped over all categories: a
        prompt yields one prediction per detector query), "empty_categories": the categories that ran but
        kept no instance, and "errors": {category: message} for each category whose tokenisation, model call
        or post-processing failed (those are neither empty nor counted). Asked categories are de-duplicated.
        A failure of the vision backbone (the whole image) raises.
        """
        H, W = image.height, image.width
        cats: list[str] = list(dict.fromkeys(categories))
        errors: dict[str, str] = {}
        prompts = []
        for cat in cats:
            if not isinstance(cat, str) or not cat.strip():
                errors[str(cat)] = f"ValueError: category {cat!r} is not a non-empty string"
            else:
                prompts.append(cat)
        candidates: list[PromptCandidates] = []
        vision = self.vision_features(image.pixels) if prompts else None
        for start in range(0, len(prompts), self.prompts_per_batch):
            raw = self._predict_chunk(vision, prompts[start:start + self.prompts_per_batch], errors)
            for cat, r in raw.items():  # post-process chunk by chunk: full-size mask logits are large
                try:
                    candidates.append(postprocess_prompt(cat, r["pred_logits"], r["presence_logit"],
                                                         r["pred_boxes"], r["pred_masks"], (H, W), self.thresholds))
                except Exception as e:  # noqa: BLE001 - report, keep the other categories
                    errors[cat] = _error_text(e)
            del raw
        instances, labels, merge_drops, _ = merge_candidates(candidates, (H, W), self.thresholds)
        dropped = Counter()
        for cand in candidates:
            dropped.update(cand.drops)
        for (_, reason), n in merge_drops.items():
            dropped[reason] += n
        kept = Counter(inst["category"] for inst in instances)
        report: dict[str, Any] = {reason: int(dropped.get(reason, 0)) for reason in DROP_REASONS}
        report["empty_categories"] = [c.category for c in candidates if kept[c.category] == 0]
        report["errors"] = errors
        return Segmentation(instances, labels), report

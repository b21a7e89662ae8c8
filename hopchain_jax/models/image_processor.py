"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL image preprocessing in numpy + PIL.

transformers' own Qwen-VL processors need torchvision (no CPU build here), so this module reimplements
``transformers.Qwen2VLImageProcessorPil`` step for step:

1. convert to RGB (alpha composited onto white, grayscale repeated), as ``image_transforms.convert_to_rgb``;
2. ``smart_resize`` to a multiple of ``patch_size * merge_size`` within [min_pixels, max_pixels], resampled
   by PIL with the configured filter (bicubic by default);
3. rescale by 1/255 (computed in float64, stored as float32), normalize ``(x - mean) / std`` in float32;
4. patchify into ``(grid_h * grid_w, C * temporal_patch_size * patch_size * patch_size)`` rows in merge-window
   order (the still image is repeated ``temporal_patch_size`` times along time), ``grid_thw = (1, gh, gw)``.

The output is bit-identical to the transformers PIL processor for uint8 / integer-valued inputs
(tests/test_image_processor.py checks this). Float arrays with non-integer values are rejected instead of
being run through transformers' lossy float->uint8->float round trip.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ImageProcessorConfig",
    "QWEN2_VL",
    "QWEN2_5_VL",
    "QWEN3_VL",
    "ProcessedImages",
    "smart_resize",
    "resized_size",
    "grid_thw_for_size",
    "num_image_tokens",
    "to_rgb_uint8",
    "preprocess",
    "from_pretrained_dir",
    "save_preprocessor_config",
    "PREPROCESSOR_CONFIG_NAME",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resampling filter ids (== PIL.Image.Resampling values, == transformers' PILImageResampling).
_RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}

MAX_ASPECT_RATIO = 200  # transformers' smart_resize limit

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Settings of the Qwen-VL image processor.

    The defaults are ``Qwen2VLImageProcessorPil``'s class defaults (what transformers uses for keys a
    ``preprocessor_config.json`` leaves out). ``min_pixels`` / ``max_pixels`` are transformers'
    ``size["shortest_edge"]`` / ``size["longest_edge"]`` (an area in pixels, despite the names).
    """

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = 3  # PIL bicubic
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            lowest = 0 if name == "min_pixels" else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
                kind = "a non-negative" if name == "min_pixels" else "a positive"
                raise ValueError(f"ImageProcessorConfig.{name} must be {kind} integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"ImageProcessorConfig.min_pixels ({self.min_pixels:,}) is larger than "
                f"max_pixels ({self.max_pixels:,})")
        if self.max_pixels < self.factor ** 2:
            raise ValueError(
                f"ImageProcessorConfig.max_pixels ({self.max_pixels:,}) is smaller than one merged patch "
                f"(patch_size*merge_size)^2 = {self.factor ** 2:,}; no image could respect it")
        resample = self.resample
        if isinstance(resample, str):
            if resample.lower() not in _RESAMPLE_NAMES:
                raise ValueError(f"ImageProcessorConfig.resample: unknown filter {resample!r}; "
                                 f"use one of {sorted(_RESAMPLE_NAMES)}")
            resample = _RESAMPLE_NAMES[resample.lower()]
        resample = int(resample)
        if resample not in _RESAMPLE_NAMES.values():
            raise ValueError(f"ImageProcessorConfig.resample must be a PIL filter id 0..5, got {self.resample!r}")
        object.__setattr__(self, "resample", resample)
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            value = (float(value),) * 3 if np.isscalar(value) else tuple(float(v) for v in value)
            if len(value) != 3:
                raise ValueError(f"ImageProcessorConfig.{name} must have 3 values (RGB), got {value!r}")
            object.__setattr__(self, name, value)
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"ImageProcessorConfig.image_std must be non-zero, got {self.image_std!r}")
        object.__setattr__(self, "rescale_factor", float(self.rescale_factor))

    @property
    def factor(self) -> int:
        """Side of one merged patch in pixels: resized sides are multiples of it."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one row of ``pixel_values``: C * T * P * P."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    def replace(self, **changes: Any) -> "ImageProcessorConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` keys transformers understands."""
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "resample": self.resample, "rescale_factor": self.rescale_factor,
        }


#: transformers' ``Qwen2VLImageProcessorPil`` class defaults (max 1280 merged tokens per image).
QWEN2_VL = ImageProcessorConfig()
#: Qwen/Qwen2.5-VL-*-Instruct ``preprocessor_config.json``: 14-px patches, CLIP mean/std, max 12,845,056 px.
QWEN2_5_VL = ImageProcessorConfig(min_pixels=3136, max_pixels=12845056)
#: Qwen/Qwen3-VL-*-Instruct ``preprocessor_config.json``: 16-px patches, mean/std 0.5, 65,536..16,777,216 px.
QWEN3_VL = ImageProcessorConfig(
    patch_size=16, min_pixels=65536, max_pixels=16777216, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))


@dataclass
class ProcessedImages:
    """``pixel_values``: float32 [total_patches, C*T*P*P]; ``image_grid_thw``: int64 [n_images, 3]."""

    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    merge_size: int = 2
    resized_sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) after smart_resize

    @property
    def num_image_tokens(self) -> list[int]:
        """LM placeholder tokens per image (t*h*w // merge_size**2)."""
        return [int(n) for n in num_image_tokens(self.image_grid_thw, self.merge_size)]

    def __len__(self) -> int:
        return int(self.image_grid_thw.shape[0])


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` with the area inside [min_pixels, max_pixels].

    Same arithmetic (and same ValueError for aspect ratios above 200) as transformers'
    ``qwen2_vl.image_processing_pil_qwen2_vl.smart_resize``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image height and width must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        ratio = max(height, width) / min(height, width)
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _describe(index: int, height: int, width: int) -> str:
    return f"image {index} ({width}x{height} px, width x height)"


def resized_size(height: int, width: int, config: ImageProcessorConfig = QWEN2_5_VL,
                 *, index: int = 0) -> tuple[int, int]:
    """``smart_resize`` with ``config``, raising a ValueError that names the image when it cannot be processed."""
    try:
        h, w = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    except ValueError as e:
        raise ValueError(f"{_describe(index, height, width)}: {e}") from None
    if h == 0 or w == 0:  # only possible with min_pixels == 0 and a side shorter than factor / 2
        raise ValueError(
            f"{_describe(index, height, width)} is too small: it resizes to {w}x{h} with "
            f"patch_size*merge_size={config.factor} and min_pixels={config.min_pixels}; raise min_pixels "
            f"(e.g. to {config.factor ** 2:,}) or pass a larger image")
    return h, w


def grid_thw_for_size(height: int, width: int, config: ImageProcessorConfig = QWEN2_5_VL) -> tuple[int, int, int]:
    """The ``image_grid_thw`` row an image of this size gets, without processing it."""
    h, w = resized_size(height, width, config)
    return 1, h // config.patch_size, w // config.patch_size


def num_image_tokens(grid_thw, merge_size: int = 2):
    """t*h*w // merge_size**2: an int for one (t, h, w) row, an int64 array for an [n, 3] array."""
    grid = np.asarray(grid_thw, dtype=np.int64)
    if grid.shape[-1:] != (3,) or grid.ndim > 2:
        raise ValueError(f"grid_thw must have shape (3,) or (n, 3), got {grid.shape}")
    counts = grid.prod(axis=-1) // (merge_size ** 2)
    return int(counts) if grid.ndim == 1 else counts


def _infer_channels_last(array: np.ndarray) -> bool:
    """transformers' infer_channel_dimension_format with num_channels=(1, 3, 4): channels-first wins ties."""
    if array.shape[0] in (1, 3, 4):
        return False
    if array.shape[-1] in (1, 3, 4):
        return True
    raise ValueError(f"cannot infer the channel axis of an array of shape {array.shape}: "
                     f"expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4")


def to_rgb_uint8(image, index: int = 0) -> np.ndarray:
    """A PIL image or numpy array as an (H, W, 3) uint8 array, converted like transformers' convert_to_rgb.

    PIL images with an alpha band (or a transparency entry) are composited onto white; other modes go
    through ``Image.convert("RGB")``. Arrays may be (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4};
    one channel is repeated, four channels are alpha-composited onto white. Float or wide-int arrays must
    hold integer values in [0, 255].
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image {index} is empty ({image.width}x{image.height} px)")
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(background, rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8)

    if not isinstance(image, np.ndarray):
        raise TypeError(f"image {index}: expected a PIL.Image.Image or numpy.ndarray, got {type(image).__name__}")
    array = image
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        try:
            channels_last = _infer_channels_last(array)
        except ValueError as e:
            raise ValueError(f"image {index}: {e}") from None
        if not channels_last:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(f"image {index}: expected a 2-D or 3-D array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image {index} is empty (array shape {image.shape})")

    if array.dtype != np.uint8:
        numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        if array.dtype == np.bool_ or not numeric:
            raise ValueError(f"image {index}: unsupported dtype {array.dtype}; pass uint8 RGB")
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(
                f"image {index}: float array with non-integer values (range [{array.min()}, {array.max()}]); "
                f"pass uint8 pixels in [0, 255], e.g. (img * 255).round().astype(np.uint8) for [0, 1] floats")
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"image {index}: pixel values must lie in [0, 255], got [{array.min()}, {array.max()}]")
        array = array.astype(np.uint8)

    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:
        alpha = array[..., 3:4] / 255
        composite = alpha * array[..., :3] + (1 - alpha) * 255
        return np.round(composite).astype(np.uint8)
    return np.ascontiguousarray(array)


def _patchify(image: np.ndarray, config: ImageProcessorConfig) -> np.ndarray:
    """(H, W, C) float32 -> (gh*gw, C*T*P*P) rows, ordered (merge-window row, col, in-window row, col)."""
    height, width, channels = image.shape
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    gh, gw = height // p, width // p
    patches = image.reshape(gh // m, m, p, gw // m, m, p, channels)
    # -> (gh/m, gw/m, m_h, m_w, C, p_h, p_w)
    patches = patches.transpose(0, 3, 1, 4, 6, 2, 5)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
    return patches.reshape(gh * gw, channels * t * p * p)


def preprocess(images, config: ImageProcessorConfig = QWEN2_5_VL) -> ProcessedImages:
    """Resize, rescale, normalize and patchify ``images`` (a list of PIL images / numpy arrays, or one image)."""
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("preprocess() needs at least one image")
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    all_patches, grids, sizes = [], [], []
    for index, image in enumerate(images):
        rgb = to_rgb_uint8(image, index)
        height, width = rgb.shape[:2]
        new_h, new_w = resized_size(height, width, config, index=index)
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample=config.resample), dtype=np.uint8)
        pixels = (resized.astype(np.float64) * config.rescale_factor).astype(np.float32)
        pixels = (pixels - mean) / std  # float32, same op order as transformers' normalize
        all_patches.append(_patchify(pixels, config))
        grids.append((1, new_h // config.patch_size, new_w // config.patch_size))
        sizes.append((new_h, new_w))
    pixel_values = np.ascontiguousarray(np.concatenate(all_patches, axis=0), dtype=np.float32)
    return ProcessedImages(pixel_values=pixel_values, image_grid_thw=np.asarray(grids, dtype=np.int64),
                           merge_size=config.merge_size, resized_sizes=sizes)


def save_preprocessor_config(path, config: ImageProcessorConfig, arch: str | None = None) -> Path:
    """Write ``config`` as ``path/preprocessor_config.json``, the file transformers' Qwen2-VL / Qwen3-VL image
    processors (``AutoImageProcessor``, ``Qwen2VLImageProcessor[Pil]``) and :func:`from_pretrained_dir` read.

    All settings are written explicitly (``config.to_dict()``: the do_* flags, mean/std, rescale factor,
    resample filter, patch/temporal/merge sizes, and the pixel budget both as top-level ``min_pixels`` /
    ``max_pixels`` and as ``size = {"shortest_edge": min, "longest_edge": max}``), so no reader falls back to
    its own defaults. ``arch`` (a registered model_type: qwen2_5_vl, qwen3_vl) adds its family's
    ``processor_class``, as in the official checkpoints. Creates ``path`` if needed; returns the file's path.
    """
    if not isinstance(config, ImageProcessorConfig):
        raise TypeError(f"save_preprocessor_config: expected an ImageProcessorConfig, got {type(config).__name__}")
    data = config.to_dict()
    if arch is not None:
        from hopchain_jax.models.families import FAMILIES  # the registry imports this module
        if arch not in FAMILIES:
            raise ValueError(f"save_preprocessor_config: unknown arch {arch!r}; expected one of {sorted(FAMILIES)} "
                             "(models/families.py)")
        data["processor_class"] = FAMILIES[arch].processor_class
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / PREPROCESSOR_CONFIG_NAME
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def _infer_default(path: str) -> ImageProcessorConfig:
    cfg_path = os.path.join(path, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        model_type = str(cfg.get("model_type", ""))
        vision = cfg.get("vision_config") or {}
        if model_type.startswith("qwen3") or vision.get("patch_size") == 16:
            return QWEN3_VL
    return QWEN2_5_VL


def from_pretrained_dir(path, default: ImageProcessorConfig | None = None) -> ImageProcessorConfig:
    """The processor settings of a checkpoint directory.

    Reads ``preprocessor_config.json`` when present, resolving keys like transformers does: ``size``
    (shortest_edge / longest_edge) first, then top-level ``min_pixels`` / ``max_pixels`` override it, and keys
    the file leaves out take ``Qwen2VLImageProcessorPil``'s class defaults. Without the file, returns
    ``default`` or, if None, ``QWEN3_VL`` for a Qwen3-VL ``config.json`` (model_type qwen3*, or 16-px vision
    patches) and ``QWEN2_5_VL`` otherwise.
    """
    path = os.fspath(path)
    pp_path = os.path.join(path, PREPROCESSOR_CONFIG_NAME)
    if not os.path.isfile(pp_path):
        return default if default is not None else _infer_default(path)
    with open(pp_path) as f:
        pp = json.load(f)
    for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
        if pp.get(flag, True) is False:
            raise ValueError(f"{pp_path}: {flag}=false is not supported by hopchain_jax's Qwen-VL image processor")
    base = ImageProcessorConfig()
    size = pp.get("size") or {}
    min_pixels = size.get("shortest_edge", size.get("min_pixels", base.min_pixels))
    max_pixels = size.get("longest_edge", size.get("max_pixels", base.max_pixels))
    if pp.get("min_pixels") is not None:
        min_pixels = pp["min_pixels"]
    if pp.get("max_pixels") is not None:
        max_pixels = pp["max_pixels"]
    kwargs: dict[str, Any] = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "resample",
                "rescale_factor"):
        if pp.get(key) is not None:
            kwargs[key] = pp[key]
    try:
        return ImageProcessorConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"{pp_path}: {e}") from None

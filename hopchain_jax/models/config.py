"""Typed model configs for Qwen2.5-VL and Qwen3-VL, read from / written to Hugging Face config.json.

Both architectures share one `QwenVLConfig` (arch = "qwen2_5_vl" | "qwen3_vl"); the fields that exist
for one architecture only are ignored by the other. `from_hf` accepts the nested transformers-5 layout
(text_config / vision_config, `rope_parameters`) and the older flat 4.x layout (`rope_scaling`,
`rope_theta` at top level, vision `in_chans`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hopchain_jax.models.families import FAMILIES, ModelFamily, family

ARCHES = tuple(FAMILIES)   # the registered model_types (models/families.py)
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # --dtype choices; jnp.dtype(name) gives the dtype


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision tower. Sizes in channels; patch_size in pixels; window_size in pixels (2.5-VL only)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 2048
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    in_channels: int = 3
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    # Qwen2.5-VL
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    # Qwen3-VL
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened input patch: channels x temporal x patch x patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Decoder LM. mrope_section: rotary frequency pairs given to (t, h, w); sums to head_dim / 2."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    mrope_interleaved: bool = False
    qkv_bias: bool = True
    o_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 128000


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
    arch: str = "qwen2_5_vl"
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    tie_word_embeddings: bool = False
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int | None = 151643
    eos_token_id: int | tuple[int, ...] | None = 151645
    pad_token_id: int | None = 151643
    hf_config: dict | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self):
        family(self.arch)   # an unregistered model type is refused by name
        half = self.text.head_dim // 2
        if sum(self.text.mrope_section) != half:
            raise ValueError(f"mrope_section {self.text.mrope_section} must sum to head_dim/2 = {half}")
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError("vision.out_hidden_size must equal text.hidden_size")

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        """Every id that marks or holds vision input (<|vision_start|>, <|vision_end|>, <|vision_pad|>,
        <|image_pad|>, <|video_pad|>) and lies inside the vocabulary: ids a response must never hold
        (the sampler masks them; packing a response reads them as an image). <|vision_pad|> has no
        config.json key: it is the id after <|vision_end|> in every Qwen-VL tokenizer."""
        ids = {self.vision_start_token_id, self.vision_end_token_id, self.vision_end_token_id + 1,
               self.image_token_id, self.video_token_id}
        return tuple(sorted(i for i in ids if i is not None and 0 <= i < self.text.vocab_size))

    @property
    def family(self) -> ModelFamily:
        """The registered family of `arch` (models/families.py): the flags the layers read."""
        return family(self.arch)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return tuple(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else (self.eos_token_id,)

    # -- Hugging Face config.json -----------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "QwenVLConfig":
        model_type = hf.get("model_type", "")
        try:
            fam = family(model_type)
        except ValueError as e:
            raise ValueError(f"config.json: {e}") from None
        text = dict(hf.get("text_config") or {})
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
                    "head_dim", "max_position_embeddings", "attention_bias", "tie_word_embeddings"):
            if key not in text and key in hf:  # 4.x flat layout
                text[key] = hf[key]
        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        theta = rope.get("rope_theta", text.get("rope_theta", 1000000.0))
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        biased = bool(text.get("attention_bias", False))
        t = TextConfig(
            vocab_size=text["vocab_size"], hidden_size=text["hidden_size"], intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=text.get("num_key_value_heads", heads), head_dim=head_dim,
            rms_norm_eps=text.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
            mrope_section=tuple(rope.get("mrope_section", fam.mrope_section)),
            mrope_interleaved=bool(rope.get("mrope_interleaved", fam.mrope_interleaved)),
            qkv_bias=biased if fam.attention_bias_in_config else True,
            o_bias=biased if fam.attention_bias_in_config else False,
            qk_norm=fam.qk_norm, max_position_embeddings=text.get("max_position_embeddings", 128000))
        vis = dict(hf.get("vision_config") or {})
        vrope = vis.get("rope_parameters") or {}
        v = VisionConfig(
            depth=vis["depth"], hidden_size=vis.get("hidden_size", vis.get("embed_dim")),
            intermediate_size=vis["intermediate_size"], num_heads=vis["num_heads"],
            out_hidden_size=vis.get("out_hidden_size", t.hidden_size), patch_size=vis.get("patch_size", 14),
            spatial_merge_size=vis.get("spatial_merge_size", 2), temporal_patch_size=vis.get("temporal_patch_size", 2),
            in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
            hidden_act=vis.get("hidden_act", fam.vision_act),
            rope_theta=float(vrope.get("rope_theta", 10000.0)),
            window_size=vis.get("window_size", 112), fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes", ())),
            num_position_embeddings=vis.get("num_position_embeddings", 2304),
            deepstack_visual_indexes=tuple(vis.get("deepstack_visual_indexes", ())))
        tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        return cls(arch=model_type, text=t, vision=v, tie_word_embeddings=bool(tie),
                   image_token_id=hf.get("image_token_id", 151655), video_token_id=hf.get("video_token_id", 151656),
                   vision_start_token_id=hf.get("vision_start_token_id", 151652),
                   vision_end_token_id=hf.get("vision_end_token_id", 151653),
                   bos_token_id=text.get("bos_token_id", hf.get("bos_token_id")),
                   eos_token_id=text.get("eos_token_id", hf.get("eos_token_id")),
                   pad_token_id=text.get("pad_token_id", hf.get("pad_token_id")), hf_config=hf)

    @classmethod
    def from_pretrained_dir(cls, path: str | Path) -> "QwenVLConfig":
        cfg = Path(path) / "config.json"
        if not cfg.exists():
            raise FileNotFoundError(f"{path} has no config.json: point --model at a Hugging Face checkpoint directory")
        return cls.from_hf(json.loads(cfg.read_text()))

    def to_hf(self) -> dict[str, Any]:
        """A config.json transformers 5 (and 4.x-era tools reading the nested layout) can load."""
        if self.hf_config is not None:
            return json.loads(json.dumps(self.hf_config))
        t, v = self.text, self.vision
        fam = family(self.arch)
        rope = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)}
        if fam.mrope_interleaved:   # the key this family's configs carry
            rope["mrope_interleaved"] = t.mrope_interleaved
        text = {"model_type": f"{self.arch}_text", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
                "head_dim": t.head_dim, "rms_norm_eps": t.rms_norm_eps, "rope_parameters": rope,
                "max_position_embeddings": t.max_position_embeddings, "hidden_act": "silu",
                "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id}
        if fam.attention_bias_in_config:
            text["attention_bias"] = t.qkv_bias
        vision = {"model_type": fam.vision_model_type, "depth": v.depth,
                  "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size, "num_heads": v.num_heads,
                  "out_hidden_size": v.out_hidden_size, "patch_size": v.patch_size,
                  "spatial_merge_size": v.spatial_merge_size, "temporal_patch_size": v.temporal_patch_size,
                  "in_channels": v.in_channels, "hidden_act": v.hidden_act}
        # Both architectures' fields are written (each model ignores the other's), so configs round-trip.
        vision.update(num_position_embeddings=v.num_position_embeddings,
                      deepstack_visual_indexes=list(v.deepstack_visual_indexes),
                      window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes))
        if fam.vision_rope_in_config:
            vision["rope_parameters"] = {"rope_type": "axial", "rope_theta": v.rope_theta}
        return {"model_type": self.arch, "architectures": [fam.architecture],
                "text_config": text, "vision_config": vision, "tie_word_embeddings": self.tie_word_embeddings,
                "image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
                "vision_start_token_id": self.vision_start_token_id, "vision_end_token_id": self.vision_end_token_id}

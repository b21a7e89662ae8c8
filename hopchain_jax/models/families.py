"""Model families as a registry: a config.json `model_type` -> what differs between families in the shared
layers (models/vision.py, models/config.py, models/checkpoint.py, rl/flops.py read these flags instead of
comparing names), its default image processor and its Hugging Face names. An unknown model_type is refused by
name (`family`). To add a family: register a ModelFamily here; layers a family needs and no flag describes get a
new flag (docs/extending.md).
"""
from __future__ import annotations

import dataclasses

from hopchain_jax.models.image_processor import QWEN2_5_VL, QWEN3_VL, ImageProcessorConfig


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One family.

    model_type / architecture: config.json's `model_type` and `architectures` entry.
    image_processor: the processor settings a checkpoint without preprocessor_config.json gets.
    processor_class: the processor class transformers pairs with it (``processor_class`` of the hub's
      preprocessor_config.json, written by image_processor.save_preprocessor_config).
    hub_layout: "flat" (`visual.*` and `model.*` keys, Qwen2.5-VL's hub checkpoints) or "nested"
      (`model.visual.*`, `model.language_model.*`: transformers 5 and Qwen3-VL); both load either way.
    Vision tower: vision_norm "rms" | "layer"; vision_mlp "gated" (SwiGLU, 3 matmuls) | "plain" (fc1, act,
      fc2); merger "mlp" (ln_q RMSNorm -> mlp.0 -> GELU -> mlp.2) | "fc" (LayerNorm -> linear_fc1 -> GELU ->
      linear_fc2); patch_embed_bias; window_attention (windowed blocks besides fullatt_block_indexes);
      learned_pos_embed (a bilinearly interpolated position table); deepstack (features of some tower
      layers merged and added to early LM layers); vision_act: the tower's default activation.
    Text config defaults (config.json may override): mrope_section, mrope_interleaved; qk_norm (RMSNorm on q
      and k per head); attention_bias_in_config: q/k/v/o biases follow `attention_bias` (else q/k/v biases on,
      o bias off).
    config.json as written (QwenVLConfig.to_hf): vision_model_type (vision_config.model_type);
      vision_rope_in_config (vision_config.rope_parameters).
    """

    model_type: str
    architecture: str
    image_processor: ImageProcessorConfig
    processor_class: str
    hub_layout: str
    vision_norm: str
    vision_mlp: str
    merger: str
    patch_embed_bias: bool
    window_attention: bool
    learned_pos_embed: bool
    deepstack: bool
    vision_act: str
    mrope_section: tuple[int, int, int]
    mrope_interleaved: bool
    qk_norm: bool
    attention_bias_in_config: bool
    vision_model_type: str
    vision_rope_in_config: bool


FAMILIES: dict[str, ModelFamily] = {}


def register_family(fam: ModelFamily) -> ModelFamily:
    if fam.model_type in FAMILIES:
        raise ValueError(f"a model family {fam.model_type!r} is registered already")
    FAMILIES[fam.model_type] = fam
    return fam


def family(model_type: str) -> ModelFamily:
    """The registered family of a config.json model_type; ValueError naming the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)} "
                         "(models/families.py registers them)")
    return FAMILIES[model_type]


register_family(ModelFamily(
    model_type="qwen2_5_vl", architecture="Qwen2_5_VLForConditionalGeneration", image_processor=QWEN2_5_VL,
    processor_class="Qwen2_5_VLProcessor",
    hub_layout="flat", vision_norm="rms", vision_mlp="gated", merger="mlp", patch_embed_bias=False,
    window_attention=True, learned_pos_embed=False, deepstack=False, vision_act="silu", mrope_section=(16, 24, 24),
    mrope_interleaved=False, qk_norm=False, attention_bias_in_config=False, vision_model_type="qwen2_5_vl",
    vision_rope_in_config=False))
register_family(ModelFamily(
    model_type="qwen3_vl", architecture="Qwen3VLForConditionalGeneration", image_processor=QWEN3_VL,
    processor_class="Qwen3VLProcessor",
    hub_layout="nested", vision_norm="layer", vision_mlp="plain", merger="fc", patch_embed_bias=True,
    window_attention=False, learned_pos_embed=True, deepstack=True, vision_act="gelu_pytorch_tanh",
    mrope_section=(24, 20, 20), mrope_interleaved=True, qk_norm=True, attention_bias_in_config=True,
    vision_model_type="qwen3_vl_vision", vision_rope_in_config=True))

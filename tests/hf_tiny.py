"""Tiny random Qwen2.5-VL / Qwen3-VL (and SAM3) checkpoints made with transformers (CPU torch) for tests.

The tiny vocabulary (256) sets its own special ids (SPEC §5): bos 1, eos 2, pad 0, image 250, video 251,
vision start 252, vision end 253.
"""
from __future__ import annotations

import string

import numpy as np

IMAGE, VIDEO, VSTART, VEND = 250, 251, 252, 253


def tiny_hf_config(arch: str, tie: bool = False):
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig
    text = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                pad_token_id=0, tie_word_embeddings=tie)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
               tie_word_embeddings=tie)
    if arch == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                      in_chans=3)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True,
                               "rope_theta": 10000.0}
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1], in_channels=3)
    return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


def tiny_hf_model(arch: str, seed: int = 0, tie: bool = False):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    cls = Qwen2_5_VLForConditionalGeneration if arch == "qwen2_5_vl" else Qwen3VLForConditionalGeneration
    model = cls(tiny_hf_config(arch, tie)).eval()
    with torch.no_grad():  # larger random weights than the default init, so differences show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def random_patches(grid_thw, patch_dim: int, seed: int = 0) -> np.ndarray:
    n = int(np.prod(np.asarray(grid_thw), axis=1).sum())
    return np.random.default_rng(seed).normal(size=(n, patch_dim)).astype(np.float32)


def image_prompt(grid, text_before=(5, 6, 7), text_after=(8, 9, 10, 11), merge: int = 2) -> list[int]:
    n = int(np.prod(grid)) // merge ** 2
    return [1, *text_before, VSTART, *([IMAGE] * n), VEND, *text_after]


def hf_model_from_config(config, seed: int = 0):
    """A transformers model with random weights for one of our QwenVLConfig presets."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration)
    hf = config.to_hf()
    torch.manual_seed(seed)
    if config.arch == "qwen2_5_vl":
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**hf))
    else:
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**hf))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


# ------------------------------------------------------------------ tiny SAM3 (transformers Sam3Model)
SAM3_IMAGE_SIZE = 112  # 8 x 8 patches of 14 px
SAM3_QUERIES = 8


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer
    chars = string.ascii_lowercase + string.digits
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_sam3_config(vocab_size: int):
    from transformers import Sam3Config
    from transformers.models.sam3.configuration_sam3 import (
        Sam3DETRDecoderConfig, Sam3DETREncoderConfig, Sam3GeometryEncoderConfig, Sam3MaskDecoderConfig,
        Sam3VisionConfig, Sam3ViTConfig)
    grid = SAM3_IMAGE_SIZE // 14
    backbone = Sam3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             image_size=SAM3_IMAGE_SIZE, patch_size=14, window_size=4, global_attn_indexes=[1],
                             pretrain_image_size=SAM3_IMAGE_SIZE)
    vision = Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=32, scale_factors=[4.0, 2.0, 1.0, 0.5],
                              backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2])
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, projection_dim=32,
                num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=32, hidden_act="gelu",
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    small = dict(hidden_size=32, num_layers=1, num_attention_heads=4, intermediate_size=64)
    return Sam3Config(vision_config=vision, text_config=text,
                      geometry_encoder_config=Sam3GeometryEncoderConfig(**small),
                      detr_encoder_config=Sam3DETREncoderConfig(**small),
                      detr_decoder_config=Sam3DETRDecoderConfig(num_queries=SAM3_QUERIES, **small),
                      mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2))


def save_tiny_sam3(path, seed: int = 0):
    """Save a tiny random SAM3 checkpoint with its tokenizer (no preprocessor_config.json) at `path`."""
    import torch
    from transformers import Sam3Model
    tok = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config(vocab_size=len(tok.get_vocab()) + 2)).eval()
    with torch.no_grad():  # larger random weights than the default init: masks and scores then differ more
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

"""Model presets: the public Qwen-VL shapes, and tiny ones for tests and CPU runs.

    from hopchain_jax.configs.models import PRESETS
    config = PRESETS["qwen2_5_vl_3b"]()          # a QwenVLConfig; random init is fine for benchmarks

Real checkpoints carry their own config.json (`QwenVLConfig.from_pretrained_dir`); these presets exist
for benchmarks at the real shapes without downloading weights, and for tests.
"""
from __future__ import annotations

from hopchain_jax.models.config import QwenVLConfig, TextConfig, VisionConfig

QWEN_VOCAB = 151936  # 151,643 BPE tokens + specials, padded (SPEC §5)


def tiny(arch: str = "qwen2_5_vl", vocab_size: int = QWEN_VOCAB) -> QwenVLConfig:
    """A few-layer model with the real vocabulary and special ids, so the real tokenizer drives it."""
    qwen3 = arch == "qwen3_vl"
    text = TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                      mrope_section=(2, 3, 3), mrope_interleaved=qwen3, qkv_bias=not qwen3, qk_norm=qwen3,
                      max_position_embeddings=4096)
    vision = VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          patch_size=16 if qwen3 else 14, hidden_act="gelu_pytorch_tanh" if qwen3 else "silu",
                          window_size=56, fullatt_block_indexes=(1,), num_position_embeddings=64,
                          deepstack_visual_indexes=(0,) if qwen3 else ())
    return QwenVLConfig(arch=arch, text=text, vision=vision)


def _qwen2_5_vl_vision(out_hidden_size: int) -> VisionConfig:
    """The vision tower every Qwen2.5-VL size shares; only its output width follows the LM."""
    return VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                        out_hidden_size=out_hidden_size, patch_size=14, window_size=112,
                        fullatt_block_indexes=(7, 15, 23, 31))


def qwen2_5_vl_3b() -> QwenVLConfig:
    return QwenVLConfig(
        arch="qwen2_5_vl", tie_word_embeddings=True,
        text=TextConfig(vocab_size=QWEN_VOCAB, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                        num_attention_heads=16, num_key_value_heads=2, head_dim=128, rms_norm_eps=1e-6,
                        rope_theta=1e6, mrope_section=(16, 24, 24)),
        vision=_qwen2_5_vl_vision(out_hidden_size=2048))


def qwen2_5_vl_7b() -> QwenVLConfig:
    return QwenVLConfig(
        arch="qwen2_5_vl", tie_word_embeddings=False,
        text=TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
                        rope_theta=1e6, mrope_section=(16, 24, 24)),
        vision=_qwen2_5_vl_vision(out_hidden_size=3584))


def qwen3_vl_8b() -> QwenVLConfig:
    return QwenVLConfig(
        arch="qwen3_vl", tie_word_embeddings=False,
        text=TextConfig(vocab_size=QWEN_VOCAB, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                        rope_theta=5e6, mrope_section=(24, 20, 20), mrope_interleaved=True, qkv_bias=False,
                        qk_norm=True, max_position_embeddings=262144),
        vision=VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                            patch_size=16, hidden_act="gelu_pytorch_tanh", num_position_embeddings=2304,
                            deepstack_visual_indexes=(8, 16, 24)))


PRESETS = {"tiny": tiny, "tiny_qwen3": lambda: tiny("qwen3_vl"), "qwen2_5_vl_3b": qwen2_5_vl_3b,
           "qwen2_5_vl_7b": qwen2_5_vl_7b, "qwen3_vl_8b": qwen3_vl_8b}

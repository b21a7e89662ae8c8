"""Model presets the pilots try besides configs/models.py's (registered into its PRESETS on import).

small: a 4-layer, 128-wide LM with a 4-layer, 64-wide vision tower (full attention at layers 1 and 3)."""
from hopchain_jax.configs import models as _M
from hopchain_jax.models.config import QwenVLConfig, TextConfig, VisionConfig


def small() -> QwenVLConfig:
    t = _M.tiny()
    text = TextConfig(vocab_size=t.text.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=16, rope_theta=10000.0,
                      mrope_section=(2, 3, 3), qkv_bias=True, max_position_embeddings=4096)
    vision = VisionConfig(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                          patch_size=14, hidden_act="silu", window_size=56, fullatt_block_indexes=(1, 3))
    return QwenVLConfig(arch="qwen2_5_vl", text=text, vision=vision)


_M.PRESETS["small"] = small

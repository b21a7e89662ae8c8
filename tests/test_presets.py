"""Model presets have the public checkpoints' exact parameter counts."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from hopchain_jax.configs.models import PRESETS
from hopchain_jax.models.config import QwenVLConfig
from hopchain_jax.models.qwen_vl import QwenVL

# Parameter counts of the public Hugging Face checkpoints (model cards / safetensors index totals / 2 bytes).
PUBLIC = {"qwen2_5_vl_3b": 3_754_622_976, "qwen2_5_vl_7b": 8_292_166_656, "qwen3_vl_8b": 8_767_123_696}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_preset_parameter_count(name):
    config = PRESETS[name]()
    model = nnx.eval_shape(lambda: QwenVL(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == PUBLIC[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_config_json_round_trip(name):
    config = PRESETS[name]()
    back = QwenVLConfig.from_hf(config.to_hf())
    assert back == config

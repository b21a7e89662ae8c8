"""Synthesis presets (typed SynthConfig); the definitions live in hopchain_jax.synth.presets.

    from hopchain_jax.configs.synth import PRESETS, learnable_config
    from hopchain_jax.synth.pipeline import run_synthesis
    run_synthesis("data/learnable", learnable_config(seed=0, num_images=480))   # or PRESETS["learnable"]

  default    the paper's world: 3-6 hop chains with half/single variants over busy scenes
  learnable  2-5 large objects on 448 x 448, 1-hop ("single") and 2-hop ("half") questions, answers 1..5
             balanced per variant; for a tiny VLM trained from scratch (evaluate variants half + single)
"""
from hopchain_jax.synth.presets import DEFAULT, LEARNABLE, LEARNABLE_SCENE, LEARNABLE_WORLD, PRESETS, learnable_config, preset

__all__ = ["DEFAULT", "LEARNABLE", "LEARNABLE_SCENE", "LEARNABLE_WORLD", "PRESETS", "learnable_config", "preset"]

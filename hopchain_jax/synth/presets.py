"""Named synthesis presets (typed SynthConfig), for `run_synthesis(root, config)` and the CLI.

  default    the paper's world: 12-22 objects on varied canvases, 3-6 hop chains with their half and
             single variants (composer.py)
  learnable  a world a tiny VLM trained from random init can learn from (learnable.py): 2-5 large,
             upright, non-overlapping objects of 1-3 categories on a 448 x 448 canvas without clutter
             (downscales well to 112-160 px), 1-hop ("single") and 2-hop ("half") questions whose
             answers are 1..5, balanced per variant (no answer above ~25-30% of a shard's records)

    from hopchain_jax.synth.presets import learnable_config
    from hopchain_jax.synth.pipeline import run_synthesis
    run_synthesis("data/learnable", learnable_config(seed=0, num_images=480))

The learnable world has no "full" records: evaluate and train on variants half and single.
"""
from __future__ import annotations

import dataclasses

from hopchain_jax.synth.learnable import LearnableConfig
from hopchain_jax.synth.pipeline import SynthConfig
from hopchain_jax.world.scene import SceneConfig

# Plain, low-contrast backdrops: the objects are the only things worth looking at.
LEARNABLE_SCENE = SceneConfig(
    resolutions=((448, 448),), backgrounds=("paper", "fabric", "sky"), min_objects=2, max_objects=5,
    min_categories=1, max_categories=3, max_instances=4, angle_scale=0.25, p_overlap=0.0, clutter=(0, 0),
    palette_size=(2, 4))
LEARNABLE_WORLD = LearnableConfig()


def learnable_config(seed: int = 0, num_images: int = 240, images_per_shard: int = 48, **learnable) -> SynthConfig:
    """The learnable-world SynthConfig; keyword arguments override LearnableConfig fields
    (e.g. answer_range=(1, 4), singles_per_image=3)."""
    return SynthConfig(seed=seed, num_images=num_images, images_per_shard=images_per_shard, scene=LEARNABLE_SCENE,
                       chains="learnable", learnable=dataclasses.replace(LEARNABLE_WORLD, **learnable))


DEFAULT = SynthConfig()
LEARNABLE = learnable_config()
PRESETS: dict[str, SynthConfig] = {"default": DEFAULT, "learnable": LEARNABLE}


def preset(name: str, seed: int = 0, num_images: int | None = None, images_per_shard: int | None = None) -> SynthConfig:
    """PRESETS[name] with the run's seed and size (None: the preset's)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthesis preset {name!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[name]
    return dataclasses.replace(base, seed=seed, num_images=base.num_images if num_images is None else num_images,
                               images_per_shard=base.images_per_shard if images_per_shard is None else images_per_shard)

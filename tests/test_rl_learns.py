"""Issue 27 item 8: the RL loop makes a policy better on held-out data (a small version of
benchmarks/learning.py: the learnable world, the real Trainer, SAPO, its held-out image split).

The start replaces the benchmark's SFT phase (minutes on CPU) by an engineered policy that answers every
question with one digit 0-9, uniformly (the residual stream carries a constant on feature 0 and the LM head
maps it to the ten digit tokens). The learnable world's answers lie in 1..5 (and sums up to 10), so the
held-out reward starts near 10% and rises only if the updates move probability towards answers that were
rewarded, on images never trained on: in the check, 8.9% -> 21.0% after 4 steps. Checked to fail: with the
advantages' sign flipped (trainer.group_advantages negated) the held-out reward stays at 8.9% -> 8.8% and
the assertion fails. What it checks is the loop's direction (rollouts -> rewards -> advantages -> SAPO ->
update -> a better policy on images never trained on); what the policy learns here is where the answers
lie, not to read the image (benchmarks/learning.py measures that, with its blind baselines).
"""
import jax
import numpy as np
import pytest

from hopchain_jax.infer.engine import Request, SamplingParams
from hopchain_jax.rl import trainer as trainer_module
from hopchain_jax.rl.config import TrainConfig
from hopchain_jax.rl.reward import reward

SAMPLES = 64


def _uniform_digit_policy(params, digits: list[int], gain: float = 100.0, logit: float = 12.0):
    """Weights whose next token is one of `digits`, uniformly, whatever the prompt (tests/test_train.py's
    _bias_towards, spread over ten tokens): every embedding carries 1 on feature 0, the final norm passes only
    that feature, with weight `gain`, and LM-head row 0 maps it to the digits (about `logit` * sqrt(D); 0
    elsewhere). The gain makes the digits' logits move ~gain times faster per unit of weight change than
    the rest of the network, so a small learning rate moves the answer distribution in a few steps while the
    engineered structure stays intact."""
    def edit(path, x):
        key = jax.tree_util.keystr(path)
        if key.startswith("['language_model']['embed_tokens']"):
            return jax.device_put(x.at[:, 0].set(1.0), x.sharding)
        if key.startswith("['language_model']['norm']"):
            return jax.device_put(x.at[1:].set(0.0).at[0].set(gain), x.sharding)
        if key.startswith("['lm_head']"):
            return jax.device_put(x.at[0, :].set(0.0).at[0, np.asarray(digits)].set(logit / gain), x.sharding)
        return x
    return jax.tree_util.tree_map_with_path(edit, params)


def _held_out_reward(t) -> float:
    """Mean reward of SAMPLES sampled answers (temperature 1) per held-out prompt, with the current weights."""
    t.engine.update_weights(t.updater.model())
    outs = t.engine.generate([Request(p["prompt_ids"], p["pixel_values"], p["image_grid_thw"]) for p in t.eval_prompts],
                             SamplingParams(temperature=1.0, max_new_tokens=1, n=SAMPLES, seed=123))
    t.engine.release_weights()
    return float(np.mean([reward(o.text or "", t.eval_prompts[o.prompt_index]["answer"]) for o in outs]))


def _train(tmp_path, flip: bool = False) -> tuple[float, float, list[dict]]:
    cfg = TrainConfig(name="learns", mode="rl", synth_preset="learnable", synth_images=16, prompts_per_step=4,
                      group_size=8, minibatches=2, max_new_tokens=1, zero_reward_truncated=False, steps=4,
                      lr=1e-3, warmup_steps=1, save_every=100, max_pixels=112 * 112, pad_to_tokens=256,
                      pad_to_patches=64, eval_every=4, eval_items=16, eval_variants=("half", "single"),
                      heldout_fraction=0.3, remat="none", freeze_vision=True, out_dir=str(tmp_path / "run"))
    t = trainer_module.Trainer(cfg, progress=False)
    digits = [t.tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    assert len(set(digits)) == 10
    t.updater.params = _uniform_digit_policy(t.updater.params, digits)
    before = _held_out_reward(t)
    if flip:
        real = trainer_module.group_advantages
        trainer_module.group_advantages = lambda *a, **k: (lambda adv, zv: (-adv, zv))(*real(*a, **k))
    try:
        history = t.train()
    finally:
        if flip:
            trainer_module.group_advantages = real
    after = _held_out_reward(t)
    t.close()
    return before, after, history


@pytest.mark.slow
def test_held_out_reward_rises_under_sapo(tmp_path):
    before, after, history = _train(tmp_path)
    assert 0.04 < before < 0.2, before          # ten digits, about one right
    assert all(np.isfinite(h["loss"]) for h in history)
    assert after > before + 0.05, (before, after, [h["reward_mean"] for h in history])

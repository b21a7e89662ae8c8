"""The policy-loss registry (rl/losses.py): every registered loss against its float64 reference written from
its paper (value and gradient, fresh random inputs), settings by config, refusals by name, and one update."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hopchain_jax.rl.config import TrainConfig
from hopchain_jax.rl.losses import LOSSES, get_loss, resolve_settings
from hopchain_jax.rl.reward import group_advantages


def _inputs(seed, b=6, t=12, spread=0.3):
    """Off-policy log-probs (ratios within ~exp(+-3 spread)), ragged masks with one empty response, -inf
    outside the mask, advantages of both signs."""
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 0.5, (b, t))
    logp = old + rng.normal(0.0, spread, (b, t))
    mask = (np.arange(t)[None, :] < rng.integers(1, t + 1, (b, 1))).astype(np.float64)
    mask[2] = 0.0
    logp = np.where(mask > 0, logp, -np.inf)
    adv = rng.normal(0.0, 1.0, b)
    return logp, old, adv, mask


def _settings(name, seed):
    """Defaults, and for the clipped losses clip ranges that the random ratios actually cross."""
    s = resolve_settings(name, {})
    rng = np.random.default_rng(seed)
    if "clip_low" in s and name != "gspo":
        s.update(clip_low=float(rng.uniform(0.05, 0.2)), clip_high=float(rng.uniform(0.1, 0.3)))
    if "max_tokens" in s:
        s["max_tokens"] = 16.0
    if "tau_pos" in s:
        s.update(tau_pos=float(rng.uniform(0.5, 2.0)), tau_neg=float(rng.uniform(0.5, 2.0)))
    return s


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_loss_matches_its_float64_reference_in_value_and_gradient(name, seed):
    loss = get_loss(name)
    logp, old, adv, mask = _inputs(seed, spread=0.3 if name != "gspo" else 0.002)
    s = _settings(name, seed)

    def ours(lp):
        return loss.loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
                         jnp.asarray(mask, jnp.float32), s)

    value, stats = ours(jnp.asarray(logp, jnp.float32))
    want = loss.reference(logp, old, adv, mask, s)
    assert np.isfinite(float(value)) and float(value) == pytest.approx(want, rel=2e-5, abs=1e-6)
    assert all(np.isfinite(float(v)) for v in stats.values())
    grad = np.asarray(jax.grad(lambda lp: ours(lp)[0])(jnp.asarray(np.where(mask > 0, logp, 0.0), jnp.float32)))
    # central differences of the float64 reference at every valid token; padding gets no gradient
    eps = 1e-6
    base = np.where(mask > 0, logp, 0.0)
    fd = np.zeros_like(base)
    for i, j in zip(*np.nonzero(mask)):
        up, down = base.copy(), base.copy()
        up[i, j] += eps
        down[i, j] -= eps
        fd[i, j] = (loss.reference(up, old, adv, mask, s) - loss.reference(down, old, adv, mask, s)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=2e-6)
    assert np.all(grad[mask == 0] == 0)
    if name != "sapo":   # the clipped losses: the random ranges cut some tokens/sequences, not all
        assert 0.0 <= float(stats["clip_fraction"]) <= 1.0


def test_clipped_losses_stop_the_gradient_outside_the_trust_region():
    """A token far above 1 + clip_high with A > 0 (or below 1 - clip_low with A < 0) gets no gradient in
    GRPO / Dr. GRPO; GSPO clips the whole sequence."""
    old = np.full((2, 3), -1.0)
    logp = old + np.array([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]])
    adv, mask = np.array([1.0, -1.0]), np.ones((2, 3))
    for name in ("grpo", "dr_grpo"):
        s = resolve_settings(name, {"max_tokens": 3} if name == "dr_grpo" else {})
        g = jax.grad(lambda lp: get_loss(name).loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), s)[0])(
            jnp.asarray(logp))
        g = np.asarray(g)
        assert g[0, 0] == 0 and g[1, 0] == 0 and np.all(g[:, 1:] != 0)
    s = resolve_settings("gspo", {})
    g = np.asarray(jax.grad(lambda lp: get_loss("gspo").loss(lp, jnp.asarray(old), jnp.asarray(adv),
                                                             jnp.asarray(mask), s)[0])(jnp.asarray(logp)))
    assert np.all(g == 0)


def test_loss_settings_from_config_and_refusals_by_name():
    assert TrainConfig().loss == "sapo" and TrainConfig().loss_config() == {"tau_pos": 1.0, "tau_neg": 1.05}
    cfg = TrainConfig(loss="dr_grpo", loss_settings={"clip_high": 0.28}, max_new_tokens=48)
    assert cfg.loss_config() == {"clip_low": 0.2, "clip_high": 0.28, "max_tokens": 48.0}
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    # a config written before the registry (SAPO's temperatures as fields) loads, non-defaults kept
    old = {k: v for k, v in TrainConfig().to_json().items() if k not in ("loss", "loss_settings")}
    assert TrainConfig.from_json({**old, "tau_pos": 1.0, "tau_neg": 1.05}) == TrainConfig()
    assert TrainConfig.from_json({**old, "tau_neg": 2.0}).loss_config() == {"tau_pos": 1.0, "tau_neg": 2.0}
    with pytest.raises(ValueError, match=r"unknown loss 'ppo'.*'dr_grpo', 'grpo', 'gspo', 'sapo'"):
        TrainConfig(loss="ppo")
    with pytest.raises(ValueError, match=r"loss 'grpo' has no setting \['tau_pos'\]"):
        TrainConfig(loss="grpo", loss_settings=(("tau_pos", 1.0),))
    with pytest.raises(ValueError, match="implements the 'sapo' loss only"):
        TrainConfig(loss="gspo", head_impl="fused_forward")


def test_dr_grpo_advantages_are_not_divided_by_the_group_std():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    scaled, _ = group_advantages(rewards)
    plain, zero = group_advantages(rewards, scale=get_loss("dr_grpo").std_advantages)
    np.testing.assert_allclose(plain, [[0.75, -0.25, -0.25, -0.25], [0, 0, 0, 0]])
    assert abs(scaled[0, 0]) > 1 and zero.tolist() == [False, True]
    assert get_loss("sapo").std_advantages and get_loss("grpo").std_advantages and get_loss("gspo").std_advantages

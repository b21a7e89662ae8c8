"""Policy-gradient losses as a registry: TrainConfig.loss names one, TrainConfig.loss_settings overrides its
settings. To add a loss, write its JAX function and a float64 reference from its paper, and register both
(`register_loss`); tests/test_losses.py then checks every registered loss against its reference.

Every loss takes, for B sampled responses padded to T tokens,
  logp, old_logp  float32 [B, T]  log-probs of the sampled tokens under the current / sampling policy
  advantages      float32 [B]     one per response (rl/reward.group_advantages; `std_advantages` says
                                  whether the group's std divides it)
  mask            float32 [B, T]  1 on response tokens (the loss positions), 0 elsewhere (where logp
                                  may be anything, -inf included)
  settings        dict            the loss's settings (defaults below, TrainConfig.loss_settings on top)
and returns (loss: float32 scalar to minimise, stats: dict of float32 scalars, logged per step). A
response without valid tokens contributes 0. Log-ratios are clamped to +-20 before exp (as SAPO's kernel
does), so a far off-policy token gives a large but finite value.

Registered (r = exp(logp - old_logp) per token, A the response's advantage, |o| its valid tokens):
  sapo     SAPO (arXiv 2511.20347, SPEC §4): soft gate sigma(tau (r - 1)) 4 / tau, tau = tau_pos if A > 0
           else tau_neg; mean over a response's tokens, then over responses. The default; the only loss the
           fused LM head (head_impl="fused_forward") implements.
  grpo     GRPO (DeepSeekMath, arXiv 2402.03300): PPO's clipped surrogate min(r A, clip(r, 1 - clip_low,
           1 + clip_high) A), mean over tokens, then over responses (clip_high > clip_low is DAPO's
           clip-higher).
  dr_grpo  Dr. GRPO (arXiv 2503.20783): the same surrogate, summed over all tokens and divided by the
           constant B * max_tokens (no per-response length normalisation; max_tokens 0 = the run's
           max_new_tokens), with advantages not divided by the group's std.
  gspo     GSPO (arXiv 2507.18071): one sequence-level ratio s = exp(mean over the response's tokens of
           (logp - old_logp)), clipped surrogate min(s A, clip(s, 1 - clip_low, 1 + clip_high) A) per
           response (clip 3e-4 / 4e-4 as in the paper), mean over responses.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from jax import lax

LOG_RATIO_CLAMP = 20.0


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
    """One registered loss. loss: the JAX function (module docstring); reference: the same objective in
    float64 numpy, written from the paper (the test oracle: (logp, old_logp, advantages, mask, settings) ->
    loss); settings: names and defaults; std_advantages: whether advantages are divided by the group's std;
    fused_head: whether head_impl="fused_forward" implements it; source: where the formula comes from."""

    name: str
    loss: Callable
    reference: Callable
    settings: Mapping[str, float]
    std_advantages: bool = True
    fused_head: bool = False
    source: str = ""


LOSSES: dict[str, PolicyLoss] = {}


def register_loss(loss: PolicyLoss) -> PolicyLoss:
    if loss.name in LOSSES:
        raise ValueError(f"a loss named {loss.name!r} is registered already")
    LOSSES[loss.name] = dataclasses.replace(loss, settings=MappingProxyType(dict(loss.settings)))
    return LOSSES[loss.name]


def get_loss(name: str) -> PolicyLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: TrainConfig.loss takes one of {sorted(LOSSES)} (rl/losses.py; "
                         "register_loss adds one)")
    return LOSSES[name]


def resolve_settings(name: str, overrides) -> dict[str, float]:
    """The loss's defaults with `overrides` ((key, value) pairs or a dict) on top; an unknown key is refused."""
    loss = get_loss(name)
    given = dict(overrides)
    unknown = sorted(set(given) - set(loss.settings))
    if unknown:
        raise ValueError(f"loss {name!r} has no setting {unknown}; its settings are {dict(loss.settings)} "
                         "(TrainConfig.loss_settings)")
    return {**loss.settings, **{k: float(v) for k, v in given.items()}}


# -- shared pieces -------------------------------------------------------------------------------------
def _log_ratio(logp, old_logp, mask):
    valid = mask > 0
    return valid, jnp.where(valid, jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), 0.0)


def _clipped(ratio, adv, low, high):
    """PPO's surrogate min(r A, clip(r) A) and whether the clipped branch is the active one."""
    plain, clipped = ratio * adv, jnp.clip(ratio, 1.0 - low, 1.0 + high) * adv
    return jnp.minimum(plain, clipped), clipped < plain


def _token_mean(x, valid):
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _np_ratio(logp, old_logp, mask):
    valid = np.asarray(mask) > 0
    lr = np.where(valid, np.asarray(logp, np.float64) - np.asarray(old_logp, np.float64), 0.0)
    return valid, lr


# -- SAPO ------------------------------------------------------------------------------------------------
def _sapo(logp, old_logp, advantages, mask, s):
    from hopchain_jax.kernels.sapo_loss import sapo_loss_and_stats
    return sapo_loss_and_stats(logp, old_logp, advantages, mask, s["tau_pos"], s["tau_neg"], impl="chunked")


def _sapo_reference(logp, old_logp, advantages, mask, s):
    valid, lr = _np_ratio(logp, old_logp, mask)
    a = np.asarray(advantages, np.float64)[:, None]
    tau = np.where(a > 0, s["tau_pos"], s["tau_neg"])
    gate = 1.0 / (1.0 + np.exp(-tau * (np.exp(lr) - 1.0))) * 4.0 / tau
    per_seq = np.where(valid, gate * a, 0.0).sum(-1) / np.maximum(valid.sum(-1), 1)
    return -per_seq.mean()


# -- GRPO and Dr. GRPO -------------------------------------------------------------------------------------
def _grpo_parts(logp, old_logp, advantages, mask, s):
    valid, lr = _log_ratio(logp, old_logp, mask)
    ratio = jnp.exp(lr)
    surrogate, clipped = _clipped(ratio, advantages[:, None], s["clip_low"], s["clip_high"])
    stats = {"ratio_mean": lax.stop_gradient(_token_mean(ratio, valid)),
             "clip_fraction": lax.stop_gradient(_token_mean(clipped.astype(jnp.float32), valid)),
             "n_valid_tokens": jnp.sum(valid).astype(jnp.float32)}
    return valid, jnp.where(valid, surrogate, 0.0), stats


def _grpo(logp, old_logp, advantages, mask, s):
    valid, surrogate, stats = _grpo_parts(logp, old_logp, advantages, mask, s)
    per_seq = jnp.sum(surrogate, -1) / jnp.maximum(jnp.sum(valid, -1), 1)
    loss = -jnp.mean(per_seq)
    return loss, dict(stats, loss=lax.stop_gradient(loss))


def _dr_grpo(logp, old_logp, advantages, mask, s):
    _, surrogate, stats = _grpo_parts(logp, old_logp, advantages, mask, s)
    loss = -jnp.sum(surrogate) / (logp.shape[0] * s["max_tokens"])
    return loss, dict(stats, loss=lax.stop_gradient(loss))


def _np_surrogate(logp, old_logp, advantages, mask, s):
    valid, lr = _np_ratio(logp, old_logp, mask)
    r, a = np.exp(lr), np.asarray(advantages, np.float64)[:, None]
    return valid, np.where(valid, np.minimum(r * a, np.clip(r, 1 - s["clip_low"], 1 + s["clip_high"]) * a), 0.0)


def _grpo_reference(logp, old_logp, advantages, mask, s):
    valid, sur = _np_surrogate(logp, old_logp, advantages, mask, s)
    return -(sur.sum(-1) / np.maximum(valid.sum(-1), 1)).mean()


def _dr_grpo_reference(logp, old_logp, advantages, mask, s):
    _, sur = _np_surrogate(logp, old_logp, advantages, mask, s)
    return -sur.sum() / (sur.shape[0] * s["max_tokens"])


# -- GSPO ------------------------------------------------------------------------------------------------
def _gspo(logp, old_logp, advantages, mask, s):
    valid, lr = _log_ratio(logp, old_logp, mask)
    n = jnp.maximum(jnp.sum(valid, -1), 1)
    seq_ratio = jnp.exp(jnp.clip(jnp.sum(lr, -1) / n, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    surrogate, clipped = _clipped(seq_ratio, advantages, s["clip_low"], s["clip_high"])
    has = jnp.sum(valid, -1) > 0
    loss = -jnp.mean(jnp.where(has, surrogate, 0.0))
    seqs = jnp.maximum(jnp.sum(has), 1)
    return loss, {"loss": lax.stop_gradient(loss),
                  "ratio_mean": lax.stop_gradient(jnp.sum(jnp.where(has, seq_ratio, 0.0)) / seqs),
                  "clip_fraction": lax.stop_gradient(jnp.sum(has & clipped) / seqs),
                  "n_valid_tokens": jnp.sum(valid).astype(jnp.float32)}


def _gspo_reference(logp, old_logp, advantages, mask, s):
    valid, lr = _np_ratio(logp, old_logp, mask)
    n = valid.sum(-1)
    ratio = np.exp(lr.sum(-1) / np.maximum(n, 1))
    a = np.asarray(advantages, np.float64)
    sur = np.minimum(ratio * a, np.clip(ratio, 1 - s["clip_low"], 1 + s["clip_high"]) * a)
    return -np.where(n > 0, sur, 0.0).mean()


register_loss(PolicyLoss("sapo", _sapo, _sapo_reference, {"tau_pos": 1.0, "tau_neg": 1.05}, fused_head=True,
                         source="SAPO, arXiv 2511.20347 (SPEC §4)"))
register_loss(PolicyLoss("grpo", _grpo, _grpo_reference, {"clip_low": 0.2, "clip_high": 0.2},
                         source="GRPO, DeepSeekMath, arXiv 2402.03300"))
register_loss(PolicyLoss("dr_grpo", _dr_grpo, _dr_grpo_reference, {"clip_low": 0.2, "clip_high": 0.2,
                                                                   "max_tokens": 0.0},
                         std_advantages=False, source="Dr. GRPO, arXiv 2503.20783"))
register_loss(PolicyLoss("gspo", _gspo, _gspo_reference, {"clip_low": 3e-4, "clip_high": 4e-4},
                         source="GSPO, arXiv 2507.18071"))

"""SAPO loss (SPEC §4) with a custom VJP, its gate statistics, and a fused entry from hidden states.

For logp / old_logp / mask [B, T] and advantages [B]:

    lr    = clip(logp - old_logp, -20, 20)               (valid tokens only; 0 elsewhere)
    r     = exp(lr)
    tau   = tau_pos if A > 0 else tau_neg                 (defaults 1.0 / 1.05)
    sigma = sigmoid(tau (r - 1));  f(r) = sigma * 4 / tau
    loss  = -mean_b( sum_t valid * f(r) * A_b / max(n_valid_b, 1) )     ("seq-mean-token-mean")

A sequence without valid tokens contributes 0 (never NaN), and invalid positions may hold any value,
including -inf/NaN log-probs. The gradient (custom VJP) per valid token is
``d loss / d logp = -A * 4 sigma (1 - sigma) * r / (n_valid * B)`` -- exactly the plain policy
gradient ``-A / (n_valid * B)`` on-policy (r = 1) -- and 0 where the log-ratio is clamped (|lr| > 20),
matching autodiff of the clamp. Cotangents for old_logp (= -d/dlogp) and advantages are returned too.

Implementations (``impl``, see :mod:`kernels.dispatch`): ``"reference"`` (autodiff of the textbook
formula in :mod:`kernels.reference`), ``"chunked"`` (XLA with the custom VJP; there is nothing to
chunk, the name keeps the dispatch uniform) and ``"pallas"`` / ``"pallas_interpret"`` (a Pallas
kernel computes the per-token gate ``f A`` and gradient weight; the [B]-sized reductions stay in
XLA). On an accelerator ``"auto"`` uses the XLA custom VJP: this loss is elementwise and XLA fuses
it into one kernel already, so a Pallas kernel buys nothing there; the Pallas version exists to keep
the same contract testable across backends.

``sapo_loss_fused(h, w, targets, old_logp, advantages, mask)`` computes logp with
:func:`kernels.logprob.fused_logprob_entropy` and feeds the SAPO gradient straight in as the
log-prob cotangent: one backward pass (the vocabulary-chunk recompute) yields dh and dw, and the
entropy -- returned only as a statistic -- has a symbolic-zero cotangent, so its term is skipped
in that pass (a frozen LM head likewise skips the dw matmul).

``batch_axis``: when the batch (sequences) is sharded over a ``shard_map`` mesh axis, pass its name;
the mean over sequences is then taken over the whole global batch.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from hopchain_jax.kernels.dispatch import resolve_impl
from hopchain_jax.kernels.logprob import (LogprobConfig, _compiler_params, _pad_axis, _round_up,
                                          fused_logprob_entropy)
from hopchain_jax.kernels.manual_axes import out_struct, vary
from hopchain_jax.kernels.reference import (SAPO_LOG_RATIO_CLAMP, sapo_loss_reference, sapo_token_terms)

__all__ = ["SapoConfig", "sapo_loss", "sapo_loss_and_stats", "sapo_stats", "sapo_loss_fused",
           "sapo_loss_reference"]


@dataclasses.dataclass(frozen=True)
class SapoConfig:
    """Tiles of the Pallas SAPO kernel (powers of two)."""
    block_b: int = 8
    block_t: int = 256
    num_warps: int = 4
    num_stages: int = 1


@dataclasses.dataclass(frozen=True)
class _SapoSpec:
    kind: str  # "chunked" (XLA) | "pallas"
    interpret: bool
    tau_pos: float
    tau_neg: float
    config: SapoConfig
    batch_axis: object = None


# ----------------------------------------------------------------------------------------------
# Per-token terms: fa = valid * f(r) * A, gw = valid * inside_clamp * 4 sigma (1 - sigma) * r
# ----------------------------------------------------------------------------------------------

def _token_terms_xla(logp, old_logp, adv, mask, tau_pos, tau_neg):
    valid, lr_raw, r, sig, tau = sapo_token_terms(logp, old_logp, adv, mask, tau_pos, tau_neg)
    a = adv.astype(jnp.float32)[:, None]
    inside = jnp.abs(lr_raw) <= SAPO_LOG_RATIO_CLAMP
    fa = jnp.where(valid, sig * (4.0 / tau) * a, 0.0)
    f = jnp.where(valid, sig * (4.0 / tau), 0.0)
    gw = jnp.where(valid & inside, 4.0 * sig * (1.0 - sig) * r, 0.0)
    return fa, f, gw


def _sapo_kernel(lp_ref, old_ref, m_ref, a_ref, fa_ref, f_ref, gw_ref, *, tau_pos, tau_neg, clamp):
    valid = m_ref[...] > 0
    lr = jnp.where(valid, lp_ref[...].astype(jnp.float32) - old_ref[...].astype(jnp.float32), 0.0)
    inside = (lr >= -clamp) & (lr <= clamp)
    r = jnp.exp(jnp.minimum(jnp.maximum(lr, -clamp), clamp))
    a = a_ref[...][:, None]
    tau = jnp.where(a > 0, tau_pos, tau_neg)
    # x = tau (r - 1) >= -tau, so exp(-x) cannot overflow: the plain logistic form is stable here.
    sig = 1.0 / (1.0 + jnp.exp(-tau * (r - 1.0)))
    f = sig * 4.0 / tau
    fa_ref[...] = jnp.where(valid, f * a, 0.0)
    f_ref[...] = jnp.where(valid, f, 0.0)
    gw_ref[...] = jnp.where(valid & inside, 4.0 * sig * (1.0 - sig) * r, 0.0)


def _token_terms_pallas(logp, old_logp, adv, mask, spec: _SapoSpec):
    b, t = logp.shape
    cfg = spec.config
    bb, bt = cfg.block_b, cfg.block_t
    b_p, t_p = _round_up(b, bb), _round_up(t, bt)
    pad2 = lambda x: _pad_axis(_pad_axis(x, 0, b_p), 1, t_p)  # noqa: E731
    lp, old = pad2(logp.astype(jnp.float32)), pad2(old_logp.astype(jnp.float32))
    m = pad2((mask > 0).astype(jnp.float32))
    a = _pad_axis(adv.astype(jnp.float32), 0, b_p)
    tile = pl.BlockSpec((bb, bt), lambda i, j: (i, j))
    kernel = functools.partial(_sapo_kernel, tau_pos=float(spec.tau_pos), tau_neg=float(spec.tau_neg),
                               clamp=float(SAPO_LOG_RATIO_CLAMP))
    cp = _compiler_params(cfg.num_warps, cfg.num_stages, spec.interpret)
    out = out_struct((b_p, t_p), jnp.float32, lp)
    fa, f, gw = pl.pallas_call(
        kernel, out_shape=(out, out, out), grid=(b_p // bb, t_p // bt),
        in_specs=[tile, tile, tile, pl.BlockSpec((bb,), lambda i, j: (i,))],
        out_specs=(tile, tile, tile), interpret=spec.interpret, compiler_params=cp,
        name="sapo_token_terms",
    )(lp, old, m, a)
    return fa[:b, :t], f[:b, :t], gw[:b, :t]


def _batch_sum(x, axis_name):
    return x if axis_name is None else lax.psum(x, axis_name)


def _sapo_forward(logp, old_logp, adv, mask, spec: _SapoSpec):
    if spec.kind == "pallas":
        fa, f, gw = _token_terms_pallas(logp, old_logp, adv, mask, spec)
    else:
        fa, f, gw = _token_terms_xla(logp, old_logp, adv, mask, spec.tau_pos, spec.tau_neg)
    n = jnp.maximum(jnp.sum(mask > 0, axis=-1).astype(jnp.float32), 1.0)
    b_tot = _batch_sum(jnp.float32(logp.shape[0]), spec.batch_axis)
    loss = -_batch_sum(jnp.sum(jnp.sum(fa, axis=-1) / n), spec.batch_axis) / b_tot
    scale = 1.0 / (n * b_tot)                                    # [B]
    coef = -adv.astype(jnp.float32)[:, None] * gw * scale[:, None]  # d loss / d logp
    dadv = -jnp.sum(f, axis=-1) * scale                          # d loss / d A (tau held fixed)
    return loss, (coef, dadv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sapo(logp, old_logp, adv, mask, spec):
    return _sapo_forward(logp, old_logp, adv, mask, spec)[0]


def _sapo_fwd(logp, old_logp, adv, mask, spec):
    loss, (coef, dadv) = _sapo_forward(logp, old_logp, adv, mask, spec)
    return loss, (coef, dadv, logp, old_logp, adv, mask)


def _sapo_bwd(spec, res, g):
    coef, dadv, logp, old_logp, adv, mask = res
    if spec.batch_axis is not None and spec.batch_axis not in vary(coef):
        # shard_map(check_vma=False): a replicated output's cotangent arrives split over the axis.
        g = lax.psum(g, spec.batch_axis)
    d = g * coef
    zero_mask = (jnp.zeros_like(mask) if jnp.issubdtype(mask.dtype, jnp.floating)
                 else None)
    return (d.astype(logp.dtype), (-d).astype(old_logp.dtype), (g * dadv).astype(adv.dtype), zero_mask)


_sapo.defvjp(_sapo_fwd, _sapo_bwd)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def _resolve_sapo(impl, interpret):
    kind, interp = resolve_impl(impl, interpret)
    if impl == "auto" and not interp and kind == "pallas":
        kind = "chunked"  # elementwise: XLA's fusion is as good as a kernel (see module docstring)
    if kind == "mosaic":
        kind = "chunked"  # no Mosaic GPU version of this elementwise loss: XLA fuses it
    return kind, interp


def _check(logp, old_logp, advantages, mask):
    if logp.ndim != 2 or logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp, old_logp, mask must all be [B, T]: {logp.shape}, {old_logp.shape}, "
                         f"{mask.shape}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B]={logp.shape[:1]}, got {advantages.shape}")


def sapo_loss(logp, old_logp, advantages, mask, tau_pos: float = 1.0, tau_neg: float = 1.05, *,
              impl: str = "auto", interpret: bool | None = None, config: SapoConfig | None = None,
              batch_axis=None):
    """Scalar SAPO loss (seq-mean-token-mean), differentiable w.r.t. logp (custom VJP)."""
    _check(logp, old_logp, advantages, mask)
    kind, interp = _resolve_sapo(impl, interpret)
    if kind == "reference":
        if batch_axis is not None:
            raise ValueError("batch_axis needs impl='chunked' or a Pallas impl")
        return sapo_loss_reference(logp, old_logp, advantages, mask, tau_pos, tau_neg)
    spec = _SapoSpec(kind, interp, float(tau_pos), float(tau_neg), config or SapoConfig(), batch_axis)
    return _sapo(logp, old_logp, advantages, mask, spec)


def sapo_stats(logp, old_logp, advantages, mask, tau_pos: float = 1.0, tau_neg: float = 1.05, *,
               batch_axis=None):
    """Gate statistics a trainer logs (no gradient). Token means are over valid tokens.

    gate_weight_mean   mean of 4 sigma (1 - sigma) (= 1 on-policy; the per-token gradient weight
                       relative to the plain policy gradient, before the factor r)
    off_policy_frac    fraction of tokens with |r - 1| > 0.2
    ratio_mean         mean r;  log_ratio_abs_max: max |logp - old_logp| before the clamp
    clamped_frac       fraction of tokens whose |log-ratio| exceeded the clamp (20)
    n_valid_tokens, empty_seqs (no valid token), zero_adv_seqs (A == 0: no signal), num_seqs,
    pos_adv_seqs, neg_adv_seqs
    """
    logp, old_logp, advantages, mask = (lax.stop_gradient(x) for x in (logp, old_logp, advantages, mask))
    valid, lr_raw, r, sig, _ = sapo_token_terms(logp, old_logp, advantages, mask, tau_pos, tau_neg)
    s = functools.partial(_batch_sum, axis_name=batch_axis)
    vf = valid.astype(jnp.float32)
    n_tok = s(jnp.sum(vf))
    denom = jnp.maximum(n_tok, 1.0)
    n_seq = jnp.sum(valid, axis=-1)
    abs_lr = jnp.where(valid, jnp.abs(lr_raw), 0.0)
    lr_max = jnp.max(abs_lr)
    if batch_axis is not None:
        lr_max = lax.pmax(lr_max, batch_axis)
    a = advantages.astype(jnp.float32)
    return {
        "gate_weight_mean": s(jnp.sum(vf * 4.0 * sig * (1.0 - sig))) / denom,
        "off_policy_frac": s(jnp.sum(vf * (jnp.abs(r - 1.0) > 0.2))) / denom,
        "ratio_mean": s(jnp.sum(vf * r)) / denom,
        "log_ratio_abs_max": lr_max,
        "clamped_frac": s(jnp.sum(vf * (abs_lr > SAPO_LOG_RATIO_CLAMP))) / denom,
        "n_valid_tokens": n_tok,
        "empty_seqs": s(jnp.sum(n_seq == 0).astype(jnp.float32)),
        "zero_adv_seqs": s(jnp.sum(a == 0).astype(jnp.float32)),
        "pos_adv_seqs": s(jnp.sum(a > 0).astype(jnp.float32)),
        "neg_adv_seqs": s(jnp.sum(a < 0).astype(jnp.float32)),
        "num_seqs": s(jnp.float32(a.shape[0])),
    }


def sapo_loss_and_stats(logp, old_logp, advantages, mask, tau_pos: float = 1.0,
                        tau_neg: float = 1.05, **kwargs):
    """(loss, stats): use with ``jax.value_and_grad(..., has_aux=True)``. See :func:`sapo_stats`."""
    loss = sapo_loss(logp, old_logp, advantages, mask, tau_pos, tau_neg, **kwargs)
    stats = sapo_stats(logp, old_logp, advantages, mask, tau_pos, tau_neg,
                       batch_axis=kwargs.get("batch_axis"))
    stats["loss"] = lax.stop_gradient(loss)
    return loss, stats


def sapo_loss_fused(h, w, targets, old_logp, advantages, mask, tau_pos: float = 1.0,
                    tau_neg: float = 1.05, *, impl: str = "auto", interpret: bool | None = None,
                    config: LogprobConfig | None = None, vocab_axis=None, batch_axis=None,
                    with_stats: bool = False):
    """SAPO loss straight from hidden states h [B, T, D] (or [B*T, D]) and the LM head w [D, V].

    targets / old_logp / mask are [B, T]; advantages [B]. The log-probs come from
    :func:`kernels.logprob.fused_logprob_entropy` (``impl``/``interpret``/``config``/``vocab_axis``
    as there); the SAPO part uses the XLA custom VJP (the reference when impl="reference").
    Gradients w.r.t. h and w come from one backward pass of the fused log-prob, with the SAPO
    per-token gradient as its log-prob cotangent and the entropy term skipped.

    Returns the scalar loss, or (loss, stats) with ``with_stats=True``: the :func:`sapo_stats`
    entries plus ``entropy_mean`` and ``logp_mean`` over valid tokens.
    """
    b, t = targets.shape
    hb = h.reshape(b * t, h.shape[-1])
    logp, ent = fused_logprob_entropy(hb, w, targets.reshape(-1), impl=impl, interpret=interpret,
                                      config=config, vocab_axis=vocab_axis)
    logp, ent = logp.reshape(b, t), ent.reshape(b, t)
    sapo_impl = "reference" if impl == "reference" else "chunked"
    loss = sapo_loss(logp, old_logp, advantages, mask, tau_pos, tau_neg, impl=sapo_impl,
                     batch_axis=batch_axis)
    if not with_stats:
        return loss
    stats = sapo_stats(logp, old_logp, advantages, mask, tau_pos, tau_neg, batch_axis=batch_axis)
    vf = (mask > 0).astype(jnp.float32)
    denom = jnp.maximum(stats["n_valid_tokens"], 1.0)
    s = functools.partial(_batch_sum, axis_name=batch_axis)
    stats["entropy_mean"] = s(jnp.sum(vf * lax.stop_gradient(ent))) / denom
    stats["logp_mean"] = s(jnp.sum(jnp.where(vf > 0, lax.stop_gradient(logp), 0.0))) / denom
    stats["loss"] = lax.stop_gradient(loss)
    return loss, stats

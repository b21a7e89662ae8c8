"""Sharded, jit-compiled parameter updates: SAPO (RL), cross-entropy (SFT), and scoring.

Parameters and optimizer state live on the mesh with the same rules as inference
(models/sharding.py); every step is `jax.jit` with explicit out_shardings equal to the inputs', so
nothing moves between steps. A NaN/inf guard keeps the previous parameters and optimizer state when a
step's loss or gradient norm is not finite (the step is counted as skipped and logged).

Log-probs come from the fused kernel (kernels/logprob.py) on hidden states divided by the sampling
temperature, so the trainer scores exactly the distribution the sampler drew from (SPEC §4).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hopchain_jax.models.qwen_vl import QwenVL, is_vision_param
from hopchain_jax.models.sharding import activation_sharding, path_str
from hopchain_jax.rl.config import TrainConfig
from kernels.logprob import fused_logprob_entropy
from kernels.sapo_loss import sapo_loss_and_stats, sapo_loss_fused


def kernel_impl(requested: str) -> str:
    """"auto" on CPU means the chunked XLA kernel (the reference would materialise [N, V] logits)."""
    if requested == "auto" and jax.default_backend() == "cpu":
        return "chunked"
    return requested


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from lr / (warmup + 1) (the first step already learns), then cosine decay to
    lr * min_lr_ratio at the last optimizer step."""
    total = max(cfg.total_optimizer_steps, cfg.warmup_steps + 1)
    if cfg.warmup_steps == 0:
        return optax.cosine_decay_schedule(cfg.lr, total, cfg.min_lr_ratio)
    return optax.warmup_cosine_decay_schedule(cfg.lr / (cfg.warmup_steps + 1), cfg.lr, cfg.warmup_steps, total,
                                              cfg.lr * cfg.min_lr_ratio)


def trainable_labels(params: Any, freeze_vision: bool) -> Any:
    def label(path, _):
        return "frozen" if freeze_vision and is_vision_param(path_str(path)) else "train"
    return jax.tree_util.tree_map_with_path(label, params)


class Updater:
    def __init__(self, model: QwenVL, cfg: TrainConfig, mesh: Mesh):
        self.cfg, self.mesh = cfg, mesh
        self.graphdef, params = nnx.split(model)
        self.impl = kernel_impl(cfg.kernel_impl)
        adamw = optax.adamw(lr_schedule(cfg), b1=0.9, b2=0.999, weight_decay=cfg.weight_decay)
        self.tx = optax.multi_transform(
            {"train": optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw), "frozen": optax.set_to_zero()},
            trainable_labels(params, cfg.freeze_vision))
        self.param_shardings = jax.tree.map(lambda x: x.sharding, params)
        self.params = params
        opt_state = jax.jit(self.tx.init)(params)
        replicated = NamedSharding(mesh, P())
        # moments follow their parameters' sharding; scalars (step counts) are replicated on the mesh
        self.opt_shardings = jax.tree.map(
            lambda x: x.sharding if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh else replicated,
            opt_state)
        self.opt_state = jax.device_put(opt_state, self.opt_shardings)
        # A copy: the step functions donate self.params, which would free a shared reference.
        self.ref_params = jax.tree.map(jnp.copy, params) if cfg.kl_coef > 0 else None
        state_out = (self.param_shardings, self.opt_shardings, replicated)
        self._rl_step = jax.jit(self._rl_step_impl, donate_argnums=(0, 1), out_shardings=state_out)
        self._sft_step = jax.jit(self._sft_step_impl, donate_argnums=(0, 1), out_shardings=state_out)
        self._score = jax.jit(self._score_impl)

    def model(self) -> QwenVL:
        """The current weights as a model (no copy): the sampler reads these arrays directly."""
        return nnx.merge(self.graphdef, self.params)

    # -- device placement of a packed batch --------------------------------------------------------------
    def put_batch(self, arrays: dict) -> dict:
        out = {}
        for k, v in arrays.items():
            if k == "vision":
                out[k] = None if v is None else {n: jax.device_put(a, activation_sharding("vision", a.shape, self.mesh))
                                                  for n, a in v.items()}
            elif k == "position_ids":
                out[k] = jax.device_put(v, activation_sharding("positions", v.shape, self.mesh))
            else:
                out[k] = jax.device_put(v, activation_sharding("tokens", v.shape, self.mesh))
        return out

    # -- pieces ------------------------------------------------------------------------------------------
    def _hidden(self, params, batch):
        model = nnx.merge(self.graphdef, params)
        features = model.encode_images(batch["vision"]) if batch["vision"] is not None else None
        out = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], image_features=features,
                    image_index=batch["image_index"], return_logits=False)
        return out.hidden / self.cfg.temperature, model.head_weight()

    def _logprobs(self, params, batch):
        h, w = self._hidden(params, batch)
        n, t, d = h.shape
        logp, ent = fused_logprob_entropy(h.reshape(n * t, d), w.astype(h.dtype), batch["targets"].reshape(-1),
                                          impl=self.impl)
        return logp.reshape(n, t), ent.reshape(n, t)

    def _score_impl(self, params, batch):
        logp, ent = self._logprobs(params, batch)
        mask = batch["loss_mask"]
        return jnp.where(mask, logp, 0.0), jnp.where(mask, ent, 0.0)

    def _apply(self, params, opt_state, loss, grads, metrics):
        updates, new_opt = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        gnorm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        metrics = dict(metrics, loss=loss, grad_norm=gnorm, skipped=1.0 - ok.astype(jnp.float32))
        return keep(new_params, params), keep(new_opt, opt_state), metrics

    def _rl_step_impl(self, params, opt_state, batch, old_logp, advantages, ref_logp):
        cfg = self.cfg

        def loss_fn(p):
            mask = batch["loss_mask"]
            if ref_logp is None:
                h, w = self._hidden(p, batch)
                return sapo_loss_fused(h, w.astype(h.dtype), batch["targets"], old_logp, advantages,
                                       mask.astype(jnp.float32), cfg.tau_pos, cfg.tau_neg,
                                       impl=self.impl, with_stats=True)
            # With KL, one forward serves both terms: the SAPO loss and k3 read the same log-probs.
            logp, ent = self._logprobs(p, batch)
            loss, stats = sapo_loss_and_stats(logp, old_logp, advantages, mask.astype(jnp.float32),
                                              cfg.tau_pos, cfg.tau_neg, impl="chunked")
            n = jnp.maximum(jnp.sum(mask), 1)
            d = jnp.where(mask, ref_logp - logp, 0.0)
            kl = jnp.sum(jnp.exp(d) - d - 1.0) / n
            stats = dict(stats, kl=kl, entropy_mean=jnp.sum(jnp.where(mask, lax.stop_gradient(ent), 0.0)) / n,
                         logp_mean=jnp.sum(jnp.where(mask, lax.stop_gradient(logp), 0.0)) / n)
            return loss + cfg.kl_coef * kl, stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return self._apply(params, opt_state, loss, grads, stats)

    def _sft_step_impl(self, params, opt_state, batch):
        def loss_fn(p):
            logp, ent = self._logprobs(p, batch)
            mask = batch["loss_mask"].astype(jnp.float32)
            n = jnp.maximum(jnp.sum(mask), 1.0)
            return -jnp.sum(logp * mask) / n, {"entropy_mean": jnp.sum(ent * mask) / n, "n_valid_tokens": n}

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return self._apply(params, opt_state, loss, grads, stats)

    # -- public --------------------------------------------------------------------------------------------
    def score(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """Trainer-side log-probs and entropies [N, T] of the batch's targets (0 outside loss_mask)."""
        logp, ent = self._score(self.params, batch)
        return logp, ent

    def ref_score(self, batch: dict):
        return None if self.ref_params is None else self._score(self.ref_params, batch)[0]

    def rl_step(self, batch: dict, old_logp, advantages, ref_logp=None) -> dict:
        adv = np.asarray(advantages, np.float32)
        adv = jax.device_put(adv, activation_sharding("rows", adv.shape, self.mesh))
        self.params, self.opt_state, metrics = self._rl_step(self.params, self.opt_state, batch, old_logp, adv,
                                                             ref_logp)
        return metrics

    def sft_step(self, batch: dict) -> dict:
        self.params, self.opt_state, metrics = self._sft_step(self.params, self.opt_state, batch)
        return metrics

    def learning_rate(self, step: int) -> float:
        return float(lr_schedule(self.cfg)(step))

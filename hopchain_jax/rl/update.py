"""Sharded, jit-compiled parameter updates: the policy loss TrainConfig.loss names (RL; SAPO by default,
rl/losses.py), cross-entropy (SFT), and scoring.

Parameters and optimizer state live on the mesh with the same rules as inference
(models/sharding.py: FSDP over "fsdp", tensor parallelism over "tensor"); every step is `jax.jit` with
explicit out_shardings equal to the inputs', so nothing moves between steps. Weights are float32
masters (the compute runs in the model's dtype, bfloat16 for the presets), gradients are accumulated
over micro-batches, and layers are rematerialised by TrainConfig.remat. A NaN/inf guard keeps the previous parameters and optimizer state when a
step's loss or gradient norm is not finite (the step is counted as skipped and logged).

Log-probs come from the fused kernel (kernels/logprob.py) on hidden states divided by the sampling
temperature, so the trainer scores exactly the distribution the sampler drew from (SPEC §4).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hopchain_jax.models.qwen_vl import QwenVL, trainable_filter
from hopchain_jax.models.sharding import LOGICAL_TO_MESH, activation_sharding, param_sharding, path_str
from hopchain_jax.rl.config import TrainConfig
from hopchain_jax.kernels.fused_head import ce_loss_fused_forward, sapo_loss_fused_forward
from hopchain_jax.kernels.logprob import fused_logprob_entropy, sharded_fused_logprob_entropy
from hopchain_jax.rl.losses import get_loss


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


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on lr_schedule(cfg)."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(lr_schedule(cfg), b1=0.9, b2=0.999, weight_decay=cfg.weight_decay))


def opt_state_shardings(tx: optax.GradientTransformation, params, mesh: Mesh):
    """Shardings of tx's state for `params`: each moment by its parameter's rule (the paths of optax's state end
    in the parameter's path), scalars (step counts) replicated."""
    replicated = NamedSharding(mesh, P())
    return jax.tree_util.tree_map_with_path(
        lambda p, x: param_sharding(path_str(p), x.shape, mesh) if x.ndim else replicated,
        jax.eval_shape(tx.init, params))


def guarded_apply(tx: optax.GradientTransformation, params, opt_state, loss, grads, metrics: dict):
    """One optimizer update, kept only when the loss and the gradient norm are finite (else the previous
    parameters and state stay); metrics gain loss, grad_norm and skipped (1.0 for a skipped step)."""
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    gnorm = optax.tree.norm(grads)   # over the trainable parameters only
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    metrics = dict(metrics, loss=loss, grad_norm=gnorm, skipped=1.0 - ok.astype(jnp.float32))
    return keep(new_params, params), keep(new_opt, opt_state), metrics


def stack_micro(arrays: dict) -> dict:
    """A packed batch (rl.sequences) as micro-batches: arrays with a leading [K] axis stay as they are,
    a single batch ([N, T] tokens) becomes K = 1."""
    if arrays["input_ids"].ndim == 3:
        return arrays
    return {k: None if v is None else ({n: a[None] for n, a in v.items()} if isinstance(v, dict) else v[None])
            for k, v in arrays.items()}


class Updater:
    """Parameters, optimizer state and the jitted steps of one training run.

    Master weights are the model's parameters as given (float32 for the presets; the forward casts to
    the model's compute dtype). Only trainable parameters (TrainConfig.freeze_vision) are differentiated,
    clipped and updated; the frozen ones are constants of the step (no backward, no optimizer state).
    A step's batch holds K micro-batches ([K, N, T] tokens, rl.sequences.pack_micro): gradients are
    accumulated over them in float32 by a lax.scan, so the compiled step's activation memory is that of
    one micro-batch, then one optimizer update is applied.
    """

    def __init__(self, model: QwenVL, cfg: TrainConfig, mesh: Mesh):
        self.cfg, self.mesh = cfg, mesh
        self.graphdef, self.params, self.frozen = nnx.split(model, trainable_filter(freeze_vision=cfg.freeze_vision),
                                                            ...)
        self.impl = kernel_impl(cfg.kernel_impl)
        self.tx = make_optimizer(cfg)
        replicated = NamedSharding(mesh, P())
        self.param_shardings = jax.tree.map(lambda x: x.sharding, self.params)
        # Optimizer state is created in its shardings (opt_state_shardings).
        opt_abstract = jax.eval_shape(self.tx.init, self.params)
        self.opt_shardings = opt_state_shardings(self.tx, self.params, mesh)
        # An abstract model (ShapeDtypeStructs with shardings, e.g. benchmarks/memory_fit.py) gets an
        # abstract optimizer state: the steps can then be lowered and compiled without allocating.
        self.abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(self.params))
        if self.abstract:
            self.opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                          opt_abstract, self.opt_shardings)
        else:
            self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(self.params)
        # A copy: the step functions donate self.params, which would free a shared reference.
        copy = (lambda x: x) if self.abstract else jnp.copy
        self.ref_params = jax.tree.map(copy, self.params) if cfg.kl_coef > 0 else None
        state_out = (self.param_shardings, self.opt_shardings, replicated)
        self._rl_step = jax.jit(self._rl_step_impl, donate_argnums=(0, 1), out_shardings=state_out)
        self._sft_step = jax.jit(self._sft_step_impl, donate_argnums=(0, 1), out_shardings=state_out)
        self._score = jax.jit(self._score_impl)

    def model(self) -> QwenVL:
        """The current weights as a model (no copy): the sampler reads these arrays directly."""
        return nnx.merge(self.graphdef, self.params, self.frozen)

    def state(self) -> nnx.State:
        """All parameters (trainable and frozen) as one nnx.State."""
        return nnx.state(self.model())

    # -- device placement of a packed batch --------------------------------------------------------------
    def put_batch(self, arrays: dict) -> dict:
        """Place a packed batch (one, or K stacked micro-batches) on the mesh: rows over the batch axes,
        image patches over the batch axes too."""
        out = {}
        for k, v in stack_micro(arrays).items():
            if k == "vision":
                out[k] = None if v is None else {n: self._put(a, "micro_vision") for n, a in v.items()}
            else:
                out[k] = None if v is None else self._put(v, "micro_positions" if k == "position_ids" else "micro_tokens")
        return out

    def _put(self, x, kind):
        return jax.device_put(x, activation_sharding(kind, np.shape(x), self.mesh))

    # -- pieces ------------------------------------------------------------------------------------------
    def _hidden(self, params, frozen, batch):
        """Final hidden states [N, T, D] / temperature (compute dtype) and the LM head [D, V]."""
        model = nnx.merge(self.graphdef, params, frozen)
        remat = self.cfg.remat
        features = model.encode_images(batch["vision"], remat=remat) if batch["vision"] is not None else None
        out = model(batch["input_ids"], batch["position_ids"], batch["attention_mask"], image_features=features,
                    image_index=batch["image_index"], return_logits=False, remat=remat)
        return out.hidden / jnp.asarray(self.cfg.temperature, out.hidden.dtype), model.head_weight()

    def _logprobs(self, params, frozen, batch):
        """Log-probs and entropies [N, T] of the targets (0 outside the loss positions when the batch has
        loss_cols: the head then runs on those columns only, rl.sequences). On a multi-device mesh the LM-head kernel runs
        under shard_map (tokens over the batch axes, the vocabulary over "tensor" when it divides):
        pallas_call is not partitioned by GSPMD, and the chunked path would otherwise be replicated."""
        h, w = self._hidden(params, frozen, batch)
        n, t, d = h.shape
        targets, cols = batch["targets"], batch.get("loss_cols")
        if cols is not None:   # only the loss positions need logits: [N, R] of them instead of [N, T]
            h = jnp.take_along_axis(h, cols[..., None], axis=1)
            targets = jnp.take_along_axis(targets, cols, axis=1)
        r = h.shape[1]
        h, targets = h.reshape(n * r, d), targets.reshape(-1)
        if self.mesh.size == 1:
            logp, ent = fused_logprob_entropy(h, w, targets, impl=self.impl)
        else:
            logp, ent = sharded_fused_logprob_entropy(h, w, targets, self.mesh, **self._head_layout(w),
                                                      impl=self.impl)
        logp, ent = logp.reshape(n, r), ent.reshape(n, r)
        if cols is None:
            return logp, ent
        valid = jnp.take_along_axis(batch["loss_mask"], cols, axis=1)   # the padding columns point at T - 1
        rows = jnp.arange(n)[:, None]
        back = lambda x: jnp.zeros((n, t), x.dtype).at[rows, cols].add(jnp.where(valid, x, 0))   # noqa: E731
        return back(logp), back(ent)

    def _fused_head_kwargs(self, w) -> dict:
        """kernels/fused_head.py's options (TrainConfig.head_impl="fused_forward"): the chunking of
        TrainConfig.head_* and the layout of _logprobs -- tokens over the batch axes, the vocabulary over
        "tensor" when it divides."""
        cfg = self.cfg
        kw = dict(chunk_tokens=cfg.head_chunk_tokens or None,
                  chunk_vocab={0: None, -1: w.shape[1]}.get(cfg.head_chunk_vocab, cfg.head_chunk_vocab),
                  dw_accum_dtype=None if cfg.head_dw_accum == "auto" else cfg.head_dw_accum)
        if self.mesh.size == 1:
            return kw
        return dict(kw, mesh=self.mesh, **self._head_layout(w))

    def _head_layout(self, w) -> dict:
        """The LM head's shard_map layout by the sharding rules (models/sharding.LOGICAL_TO_MESH): tokens over
        the "batch" mesh axes, the vocabulary over the "vocab" axis when that axis has several devices and
        divides the vocabulary (else whole on each device)."""
        vocab = LOGICAL_TO_MESH["vocab"]
        split = self.mesh.shape[vocab] > 1 and w.shape[1] % self.mesh.shape[vocab] == 0
        return {"token_axis": LOGICAL_TO_MESH["batch"], "vocab_axis": vocab if split else None}

    def _score_impl(self, params, frozen, batch):
        def one(mb):
            logp, ent = self._logprobs(params, frozen, mb)
            mask = mb["loss_mask"]
            return jnp.where(mask, logp, 0.0), jnp.where(mask, ent, 0.0)
        logp, ent = jax.lax.map(one, batch)
        return logp.reshape(-1, logp.shape[-1]), ent.reshape(-1, ent.shape[-1])

    def _accumulate(self, loss_fn, params, frozen, batch, *per_row):
        """Mean loss, metrics and float32 gradients over the K micro-batches of `batch`.

        loss_fn(params, frozen, micro_batch, *per_row_slices) -> (loss, stats); per_row arrays are
        [K * N, ...] in micro-batch order and are split [K, N, ...] here."""
        k = batch["input_ids"].shape[0]
        per_row = [None if x is None else x.reshape((k, -1) + x.shape[1:]) for x in per_row]
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

        def micro(acc, xs):
            (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, *xs)
            return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g), (loss, stats)

        grads, (losses, stats) = jax.lax.scan(micro, zeros, (batch, *per_row))
        grads = jax.tree.map(lambda g: g / k, grads)
        return jnp.mean(losses), jax.tree.map(jnp.mean, stats), grads

    def _apply(self, params, opt_state, loss, grads, metrics):
        return guarded_apply(self.tx, params, opt_state, loss, grads, metrics)

    def _rl_loss(self, params, frozen, batch, old_logp, advantages, ref_logp):
        """The policy loss TrainConfig.loss names (rl/losses.py) on the batch, + the KL term (kl_coef)."""
        cfg = self.cfg
        mask = batch["loss_mask"]
        settings = cfg.loss_config()
        if cfg.head_impl == "fused_forward":   # SAPO only, ref_logp None: TrainConfig refuses anything else here
            h, w = self._hidden(params, frozen, batch)
            loss, stats = sapo_loss_fused_forward(h, w, batch["targets"], old_logp, advantages, mask,
                                                  settings["tau_pos"], settings["tau_neg"], **self._fused_head_kwargs(w))
            stats.pop("logp"), stats.pop("entropy")
            return loss, stats
        logp, ent = self._logprobs(params, frozen, batch)
        loss, stats = get_loss(cfg.loss).loss(logp, old_logp, advantages, mask.astype(jnp.float32), settings)
        n = jnp.maximum(jnp.sum(mask), 1)
        stats = dict(stats, entropy_mean=jnp.sum(jnp.where(mask, lax.stop_gradient(ent), 0.0)) / n,
                     logp_mean=jnp.sum(jnp.where(mask, lax.stop_gradient(logp), 0.0)) / n)
        if ref_logp is None:
            return loss, stats
        # k3 KL to the reference policy from the same log-probs (one forward serves both terms)
        d = jnp.where(mask, ref_logp - logp, 0.0)
        kl = jnp.sum(jnp.exp(d) - d - 1.0) / n
        return loss + cfg.kl_coef * kl, dict(stats, kl=kl)

    def _rl_step_impl(self, params, opt_state, frozen, batch, old_logp, advantages, ref_logp):
        loss, stats, grads = self._accumulate(self._rl_loss, params, frozen, batch, old_logp, advantages, ref_logp)
        return self._apply(params, opt_state, loss, grads, stats)

    def _sft_loss(self, params, frozen, batch):
        if self.cfg.head_impl == "fused_forward":
            h, w = self._hidden(params, frozen, batch)
            loss, stats = ce_loss_fused_forward(h, w, batch["targets"], batch["loss_mask"],
                                                **self._fused_head_kwargs(w))
            return loss, {"entropy_mean": stats["entropy_mean"], "n_valid_tokens": stats["n_valid_tokens"]}
        logp, ent = self._logprobs(params, frozen, batch)
        mask = batch["loss_mask"].astype(jnp.float32)
        n = jnp.maximum(jnp.sum(mask), 1.0)
        return -jnp.sum(logp * mask) / n, {"entropy_mean": jnp.sum(ent * mask) / n, "n_valid_tokens": n}

    def _sft_step_impl(self, params, opt_state, frozen, batch):
        loss, stats, grads = self._accumulate(self._sft_loss, params, frozen, batch)
        return self._apply(params, opt_state, loss, grads, stats)

    # -- public --------------------------------------------------------------------------------------------
    def score(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """Trainer-side log-probs and entropies [K * N, T] of the batch's targets (0 outside loss_mask)."""
        return self._score(self.params, self.frozen, batch)

    def ref_score(self, batch: dict):
        return None if self.ref_params is None else self._score(self.ref_params, self.frozen, batch)[0]

    def rl_step(self, batch: dict, old_logp, advantages, ref_logp=None) -> dict:
        """One optimizer step over the batch's micro-batches. old_logp / ref_logp [K * N, T], advantages
        [K * N] in the row order of `score`."""
        adv = np.asarray(advantages, np.float32)
        adv = jax.device_put(adv, activation_sharding("rows", adv.shape, self.mesh))
        self.params, self.opt_state, metrics = self._rl_step(self.params, self.opt_state, self.frozen, batch,
                                                             old_logp, adv, ref_logp)
        return metrics

    def sft_step(self, batch: dict) -> dict:
        self.params, self.opt_state, metrics = self._sft_step(self.params, self.opt_state, self.frozen, batch)
        return metrics

    def learning_rate(self, step: int) -> float:
        return float(lr_schedule(self.cfg)(step))

"""Batched generation with a KV cache: prefill and chunked decode under jit, sharded over a mesh.

    engine = InferenceEngine(model, tokenizer, mesh=make_mesh())
    outs = engine.generate([Request(prompt_ids, pixel_values, image_grid_thw)], SamplingParams(n=8))

Shapes are bucketed so a new batch or prompt length rarely recompiles: rows are padded to the next
batch bucket, prompts (left-padded) to the next multiple of `length_bucket`, and the cache length to
prompt bucket + the next multiple of `decode_chunk` covering max_new_tokens. Each distinct image is
encoded once (vision tower, jit, patch count bucketed) and its features are shared by the n samples
of its prompt. Decoding runs `decode_chunk` steps per device call (lax.scan); between chunks the host
checks stop strings and stops early once every row is done.

Log-probs returned are those of the sampled token under the temperature-scaled model distribution
(before top-k / top-p truncation), log_softmax(logits / T); greedy (T = 0) uses T = 1. Trainers
recomputing old log-probs must use the same temperature (SPEC §4).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from hopchain_jax.models.qwen_vl import KVCache, QwenVL
from hopchain_jax.models.rope import rope_index
from hopchain_jax.models.sharding import activation_sharding, shard_model, to_host
from hopchain_jax.models.vision import fill_image_index, image_tokens, pack_images

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off; n samples per prompt (the RL group)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid SamplingParams {self}")


@dataclasses.dataclass
class Request:
    """One prompt: token ids with <|image_pad|> already expanded, its images' patches and grids."""

    prompt_ids: Sequence[int]
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None
    max_new_tokens: int | None = None  # overrides SamplingParams.max_new_tokens for this prompt


@dataclasses.dataclass
class Completion:
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "eos" | "stop" | "length"
    text: str | None = None


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float):
    """logits f32 [B, V] -> (tokens int32 [B], log-probs f32 [B]). Static sampling settings."""
    scaled = logits / (temperature if temperature > 0 else 1.0)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    if temperature == 0:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        masked = scaled
        if top_k > 0:
            kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
            masked = jnp.where(scaled < kth, -jnp.inf, masked)
        if top_p < 1.0:
            sorted_logits = jnp.sort(masked, axis=-1)[:, ::-1]
            probs = jax.nn.softmax(sorted_logits, axis=-1)
            before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each sorted token
            cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
            masked = jnp.where(masked < cutoff, -jnp.inf, masked)
        tokens = jax.random.categorical(key, masked, axis=-1)
    tokens = tokens.astype(jnp.int32)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnums=(1,))
def _cast_floats(tree, dtype):
    """Floating leaves cast to `dtype` (elementwise: each output keeps its input's sharding)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class InferenceEngine:
    def __init__(self, model: QwenVL, tokenizer=None, mesh: Mesh | None = None, *, length_bucket: int = 64,
                 decode_chunk: int = 16, batch_buckets: Sequence[int] = BATCH_BUCKETS):
        self.config = model.config
        self.tokenizer = tokenizer
        self.mesh = mesh
        if mesh is not None:
            shard_model(model, mesh)   # no-op for arrays already on the mesh (e.g. the trainer's)
        self.dtype = model.dtype
        self.update_weights(model)
        self.length_bucket, self.decode_chunk, self.batch_buckets = length_bucket, decode_chunk, tuple(batch_buckets)
        self.pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        self.eos_ids = np.asarray(self.config.eos_ids or (-1,), np.int32)

    def update_weights(self, model: QwenVL) -> None:
        """Use new weights (e.g. the trainer's, already placed on the same mesh): as they are when stored
        in the compute dtype, else as a compute-dtype copy (bf16 rollouts from float32 master weights),
        made on device in the same shardings."""
        self.graphdef, state = nnx.split(model)
        dtype = self.dtype
        if any(jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype for x in jax.tree.leaves(state)):
            if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state)):   # abstract model
                state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                    x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=x.sharding), state)
            else:
                state = _cast_floats(state, dtype)
        self.state = state

    # -- placement -------------------------------------------------------------------------------
    def _put(self, x, kind: str):
        if self.mesh is None:
            return jnp.asarray(x)
        x = x if isinstance(x, jax.Array) else np.asarray(x)   # one host->device transfer, sharded
        return jax.device_put(x, activation_sharding(kind, x.shape, self.mesh))

    def _empty_cache(self, batch: int, length: int) -> KVCache:
        """A zeroed cache created directly in its sharding (never whole on one device)."""
        if self.mesh is None:
            return KVCache.empty(self.config, batch, length, self.dtype)
        t = self.config.text
        shape = (t.num_hidden_layers, batch, length, t.num_key_value_heads, t.head_dim)
        kv = activation_sharding("kv_cache", shape, self.mesh)
        return KVCache(jnp.zeros(shape, self.dtype, device=kv), jnp.zeros(shape, self.dtype, device=kv),
                       jnp.zeros((batch, length), bool,
                                 device=activation_sharding("cache_valid", (batch, length), self.mesh)))

    # -- jitted pieces -----------------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0,))
    def _encode(self, state, vision):
        model = nnx.merge(self.graphdef, state)
        return model.encode_images(vision)

    @functools.partial(jax.jit, static_argnums=(0, 9, 10, 11), donate_argnums=(7,))
    def _prefill(self, state, ids, pos, mask, features, image_index, cache, key, temperature, top_k, top_p):
        model = nnx.merge(self.graphdef, state)
        last = jnp.full((ids.shape[0],), ids.shape[1] - 1, jnp.int32)
        out = model(ids, pos, mask, cache=cache, cache_index=0, image_features=features, image_index=image_index,
                    logits_at=last)
        tokens, logp = sample_tokens(out.logits, key, temperature, top_k, top_p)
        return tokens, logp, out.cache

    @functools.partial(jax.jit, static_argnums=(0, 9, 10, 11, 12), donate_argnums=(2,))
    def _decode(self, state, cache, tokens, positions, start, done, remaining, key, temperature, top_k, top_p, steps):
        model = nnx.merge(self.graphdef, state)
        eos = jnp.asarray(self.eos_ids)

        def step(carry, i):
            cache, tokens, positions, done, remaining = carry
            pos3 = jnp.broadcast_to(positions[None, :, None], (3,) + positions.shape + (1,))
            out = model(tokens[:, None], pos3, jnp.ones_like(tokens[:, None], bool), cache=cache,
                        cache_index=start + i, logits_at=jnp.zeros_like(tokens))
            new, logp = sample_tokens(out.logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
            new = jnp.where(done, self.pad_id, new)
            remaining = remaining - jnp.where(done, 0, 1)
            done = done | jnp.isin(new, eos) | (remaining <= 0)
            return (out.cache, new, positions + 1, done, remaining), (new, logp)

        (cache, tokens, positions, done, remaining), (toks, logps) = jax.lax.scan(
            step, (cache, tokens, positions, done, remaining), jnp.arange(steps))
        return cache, tokens, positions, done, remaining, toks.T, logps.T

    # -- host side ---------------------------------------------------------------------------------
    def _encode_images(self, requests: Sequence[Request]):
        """Encode every image once; returns (features or None, per-request first feature row)."""
        vis, starts = pack_images([(r.pixel_values, r.image_grid_thw) if r.image_grid_thw is not None else None
                                   for r in requests], self.config)
        if vis is None:
            return None, starts
        return self._encode(self.state, {k: self._put(v, "vision") for k, v in vis.arrays().items()}), starts

    def generate(self, requests: Sequence[Request], params: SamplingParams = SamplingParams()) -> list[Completion]:
        if not requests:
            return []
        for i, r in enumerate(requests):
            n_img_tokens = int(np.sum(np.asarray(r.prompt_ids) == self.config.image_token_id))
            need = 0 if r.image_grid_thw is None else image_tokens(r.image_grid_thw, self.config)
            if n_img_tokens != need:
                raise ValueError(f"request {i}: {n_img_tokens} <|image_pad|> tokens but its images give {need} "
                                 "features; expand the image tokens with the same image_grid_thw (tokenizer."
                                 "expand_image_tokens) and the same processor settings")
        features, feat_start = self._encode_images(requests)
        rows = [(i, j) for i in range(len(requests)) for j in range(params.n)]
        b = _bucket(len(rows), self.batch_buckets)
        longest = max(len(r.prompt_ids) for r in requests)
        t = -(-longest // self.length_bucket) * self.length_bucket
        max_new = [requests[i].max_new_tokens or params.max_new_tokens for i, _ in rows]
        new_bucket = -(-max(max_new) // self.decode_chunk) * self.decode_chunk
        ids = np.full((b, t), self.pad_id, np.int32)
        mask = np.zeros((b, t), bool)
        for row, (i, _) in enumerate(rows):
            p = np.asarray(requests[i].prompt_ids, np.int32)
            ids[row, t - len(p):], mask[row, t - len(p):] = p, True
        image_index = fill_image_index(ids, [feat_start[i] for i, _ in rows], self.config)
        mask[len(rows):, -1] = True  # padding rows: one dummy real token keeps their softmax finite
        grids = [np.asarray(requests[i].image_grid_thw).reshape(-1, 3) for i, _ in rows
                 if requests[i].image_grid_thw is not None]
        pos, deltas = rope_index(ids, mask, np.concatenate(grids) if grids else None, self.config)
        lengths = mask.sum(1)
        remaining = np.zeros(b, np.int32)
        remaining[:len(rows)] = np.asarray(max_new) - 1
        cache = self._empty_cache(b, t + new_bucket)
        key = jax.random.PRNGKey(params.seed)
        samp = (float(params.temperature), int(params.top_k), float(params.top_p))
        tok, logp, cache = self._prefill(self.state, self._put(ids, "tokens"), self._put(pos, "positions"),
                                         self._put(mask, "tokens"), features, self._put(image_index, "tokens"),
                                         cache, jax.random.fold_in(key, 0), *samp)
        tok, logp = to_host(tok), to_host(logp)
        out_tokens = [[int(tok[r])] for r in range(b)]
        out_logps = [[float(logp[r])] for r in range(b)]
        finished_by_stop = np.zeros(b, bool)
        done = np.isin(tok, self.eos_ids) | (remaining <= 0)
        done[len(rows):] = True
        if params.stop and self.tokenizer is not None:
            for r in range(len(rows)):
                if not done[r] and self._hit_stop(out_tokens[r], params.stop):
                    done[r] = finished_by_stop[r] = True
        positions = (lengths + deltas).astype(np.int32)
        state = (cache, jnp.asarray(tok), jnp.asarray(positions), jnp.asarray(done), jnp.asarray(remaining))
        start = t
        chunk = 0
        while not done.all() and start < t + new_bucket:
            steps = min(self.decode_chunk, t + new_bucket - start)
            chunk += 1
            cache, tok_d, pos_d, done_d, rem_d, toks, logps = self._decode(
                self.state, state[0], state[1], state[2], jnp.int32(start), state[3], state[4],
                jax.random.fold_in(key, chunk), *samp, steps)
            toks, logps, was_done = to_host(toks), to_host(logps), done.copy()
            done = to_host(done_d).copy()
            check_stop = bool(params.stop) and self.tokenizer is not None
            for r in range(len(rows)):
                if was_done[r]:
                    continue
                for s in range(steps):
                    out_tokens[r].append(int(toks[r, s]))
                    out_logps[r].append(float(logps[r, s]))
                    if toks[r, s] in self.eos_ids or len(out_tokens[r]) >= max_new[r]:
                        break
                    if check_stop and self._hit_stop(out_tokens[r], params.stop):
                        done[r] = finished_by_stop[r] = True
                        break
            state = (cache, tok_d, pos_d, jnp.asarray(done), rem_d)
            start += steps
        return [self._completion(rows[r], out_tokens[r], out_logps[r], max_new[r], params, finished_by_stop[r])
                for r in range(len(rows))]

    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        text = self.tokenizer.decode(tokens[-64:], skip_special_tokens=False)
        return any(s in text for s in stop)

    def _completion(self, row, tokens, logps, max_new, params, by_stop) -> Completion:
        reason = "length"
        if tokens and tokens[-1] in self.eos_ids:
            reason = "eos"
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode([t for t in tokens if t not in self.eos_ids], skip_special_tokens=False)
            if params.stop:
                cut = min((text.find(s) for s in params.stop if s in text), default=-1)
                if cut >= 0 or by_stop:
                    reason = "stop"
                    text = text[:cut] if cut >= 0 else text
        return Completion(row[0], row[1], tokens[:max_new], logps[:max_new], reason, text)

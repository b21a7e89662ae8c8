"""Batched generation over a pool of decode slots (continuous batching), jit-compiled, sharded over a mesh.

    engine = InferenceEngine(model, tokenizer, mesh=make_mesh(), max_slots=256)
    outs = engine.generate([Request(prompt_ids, pixel_values, image_grid_thw)], SamplingParams(n=8))
    engine.last_stats.wasted_fraction

How a call runs (the host loop in generate(); scheduler.py holds the bookkeeping):
  1. Admission. The sequences (n samples per prompt) wait in a queue, longest token limit first. Free
     slots are filled between decode chunks: the prompts being admitted are prefilled together, each
     prompt ONCE for all of its admitted samples (prefix sharing), at its own length: rows are
     right-padded to the next multiple of `length_bucket` and the prefill attends within that length,
     not over the cache. Their images are encoded once per prefill. The prompt's KV is then copied
     into each sample's slot and each sample draws its own first token. A prefill takes at most
     `prefill_tokens` padded tokens (bounded memory); admission repeats until the pool is full.
  2. Decode. `decode_chunk` steps per device call (lax.scan). Every slot sits at its own cache position
     (a per-row write index); attention reads only the first R cache slots, R the smallest cache-length
     bucket holding every active row through the chunk. Sequences end on EOS, their own token limit or a
     stop string (checked on the host between chunks); their slots are refilled before the next chunk.
  3. Drain. Once nobody waits, the pool is compacted to fewer rows when its active rows fit in half of
     it (rows move only within their device's shard of the batch).
Shapes come from a few buckets (pool rows, cache length, read length, prefill rows x prompt length), so
a run compiles a handful of programs and then reuses them.

Weights: the engine decodes with the model's weights cast to its compute dtype (a bf16 copy of float32
master weights) and, with `rollout_mesh`, resharded for decoding: e.g. make_mesh(data=-1) replicates
them on every device (no all-gather inside the decode loop; the batch is split over all devices), and
make_mesh(data=2, tensor=4) is tensor-parallel within groups of 4. Without it the engine reads the
weights in the layout they have (the trainer's FSDP shards, gathered at every decode step).

Sampling settings are per prompt: a Request may carry its own SamplingParams (temperature, top-k, top-p,
n, seed, stop, token limit) in place of the call's, and one call mixes them freely -- the settings are
per-row values of the decode program, not compiled into it, so a new temperature compiles nothing.
Log-probs returned are those of the sampled token under the temperature-scaled model distribution
(before top-k / top-p truncation), log_softmax(logits / T); greedy (T = 0) uses T = 1. Trainers
recomputing old log-probs must use the same temperature (SPEC §4). Randomness is per sequence
(sampling.row_keys): a seed gives the same samples whatever the pool size or schedule. A prompt under
the call's settings draws from the call's seed and its index in the call; a prompt with its own
settings draws from its own seed and a hash of its prompt, so its samples do not depend on the rest of
the call (what a server caching per request needs).
"""
from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hopchain_jax.infer.sampling import (SamplerWork, SamplingParams, row_keys, sample_tokens, seed_key,
                                         suppress_ids, vocab_sharded_draw)
from hopchain_jax.infer.scheduler import (AdmissionQueue, GenerateStats, SampleState, SlotPool, bucket,
                                          check_admission, length_bucket)
from hopchain_jax.models.qwen_vl import KVCache, QwenVL, cache_bits_dtype
from hopchain_jax.models.rope import rope_index
from hopchain_jax.models.sharding import (LOGICAL_TO_MESH, activation_sharding, shard_model, state_shardings,
                                          to_host)
from hopchain_jax.models.vision import fill_image_index, image_tokens, pack_images

__all__ = ["InferenceEngine", "Request", "Completion", "SamplingParams", "sample_tokens", "BATCH_BUCKETS"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# per-slot decode state: last token, its M-RoPE position and cache slot, tokens still allowed, done; the
# sampling settings; what the slot's keys derive from (seed words, stream, sample) and tokens so far
ROW_FIELDS = {"token": np.int32, "position": np.int32, "write": np.int32, "remaining": np.int32, "done": bool,
              "temperature": np.float32, "top_k": np.int32, "top_p": np.float32,
              "seed_hi": np.uint32, "seed_lo": np.uint32, "stream": np.int32, "sample": np.int32,
              "count": np.int32}


@dataclasses.dataclass
class Request:
    """One prompt: token ids with <|image_pad|> already expanded, its images' patches and grids."""

    prompt_ids: Sequence[int]
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None
    max_new_tokens: int | None = None  # overrides SamplingParams.max_new_tokens for this prompt
    params: SamplingParams | None = None  # this prompt's own settings (and seed) instead of the call's


@dataclasses.dataclass
class Completion:
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "eos" | "stop" | "length"
    text: str | None = None


def _empty_rows(n: int) -> dict[str, np.ndarray]:
    """Per-slot decode state (ROW_FIELDS) of n free slots, host copy."""
    rows = {k: np.zeros(n, dtype) for k, dtype in ROW_FIELDS.items()}
    rows["done"][:] = True
    return rows


@dataclasses.dataclass(frozen=True)
class _Prompt:
    """How one prompt of a call samples: its settings, seed words and key stream."""

    params: SamplingParams
    seed: tuple[int, int]
    stream: int

    def row(self) -> dict:
        return {"temperature": self.params.temperature, "top_k": self.params.top_k, "top_p": self.params.top_p,
                "seed_hi": self.seed[0], "seed_lo": self.seed[1], "stream": self.stream}


def _request_stream(r: Request) -> int:
    """A key stream for a request with its own seed: a hash of its prompt tokens and image patches."""
    h = zlib.crc32(np.asarray(r.prompt_ids, np.int64).tobytes())
    if r.pixel_values is not None:
        h = zlib.crc32(np.ascontiguousarray(r.pixel_values).tobytes(), h)
    return h & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class _CallSettings:
    """How a generate call samples. prompts: each prompt's _Prompt, in request order; work: what their
    settings need of the sampler (static); first_seq: index of each prompt's sample 0 in the call's
    sequence list (prompt-major, then sample)."""

    prompts: tuple[_Prompt, ...]
    work: SamplerWork
    first_seq: np.ndarray


def _call_settings(requests: Sequence[Request], params: SamplingParams) -> _CallSettings:
    seeds: dict[int, tuple[int, int]] = {}
    out = []
    for i, r in enumerate(requests):
        own = r.params
        if own is not None and not isinstance(own, SamplingParams):
            raise ValueError(f"request {i}: params must be a SamplingParams or None, got {type(own).__name__}")
        p = own or params
        if p.seed not in seeds:
            seeds[p.seed] = seed_key(p.seed)
        out.append(_Prompt(p, seeds[p.seed], i if own is None else _request_stream(r)))
    work = SamplerWork.of(*zip(*[(q.params.temperature, q.params.top_k, q.params.top_p) for q in out]))
    return _CallSettings(tuple(out), work, np.cumsum([0] + [q.params.n for q in out]))


def _cast(tree, dtype):
    """Floating leaves cast to `dtype`."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


# elementwise, so each output keeps its input's sharding
_cast_floats = jax.jit(_cast, static_argnums=(1,))


class InferenceEngine:
    """mesh: the mesh the model's weights live on (None: one device). rollout_mesh: decode on these
    devices in this layout instead (same devices; the weights are resharded once per update_weights).
    max_slots: decode slots in the pool (KV cache rows). length_bucket: prompt-length granularity of a
    prefill. kv_bucket: base of the cache-length buckets (cache and read lengths are kv_bucket x 1, 2, 3,
    4, 6, 8, ...). decode_chunk: decode steps per device call. prefill_tokens: padded prompt tokens per
    prefill call. admission: "longest_first" or "fifo". suppressed_ids: token ids never generated (their
    logits are -inf before sampling and the greedy argmax, for every request); default: the model's vision
    placeholder and boundary ids (config.vision_token_ids), which a response must not hold."""

    def __init__(self, model: QwenVL, tokenizer=None, mesh: Mesh | None = None, *, rollout_mesh: Mesh | None = None,
                 max_slots: int = 256, length_bucket: int = 64, kv_bucket: int = 256, decode_chunk: int = 16,
                 prefill_tokens: int = 16384, batch_buckets: Sequence[int] = BATCH_BUCKETS,
                 admission: str = "longest_first", suppressed_ids: Sequence[int] | None = None):
        if rollout_mesh is not None:
            if mesh is None:
                raise ValueError("rollout_mesh needs the mesh the weights live on (mesh=...)")
            if sorted(d.id for d in rollout_mesh.devices.flat) != sorted(d.id for d in mesh.devices.flat):
                raise ValueError("rollout_mesh must hold the same devices as mesh (make_mesh(...) with the "
                                 "same device list)")
        if min(max_slots, length_bucket, kv_bucket, decode_chunk, prefill_tokens) < 1:
            raise ValueError("max_slots, length_bucket, kv_bucket, decode_chunk and prefill_tokens must be >= 1")
        check_admission(admission)
        self.config = model.config
        self.tokenizer = tokenizer
        self.suppressed_ids = tuple(sorted({int(i) for i in (model.config.vision_token_ids if suppressed_ids is None
                                                              else suppressed_ids)}))
        if mesh is not None:
            shard_model(model, mesh)   # no-op for arrays already on the mesh (e.g. the trainer's)
        self.mesh = rollout_mesh if rollout_mesh is not None else mesh
        # logits split over the vocabulary (a tensor-parallel decode layout): the draw as one shard_map
        # with 3 small collectives, not the ~20 the compiler makes of the plain draw
        vocab_axis = LOGICAL_TO_MESH["vocab"]
        self._draw = "inverse_cdf" if self.mesh is None or self.mesh.shape[vocab_axis] == 1 else \
            vocab_sharded_draw(self.mesh, LOGICAL_TO_MESH["batch"], vocab_axis)
        self.dtype = model.dtype
        self.max_slots, self.length_bucket, self.kv_bucket = int(max_slots), int(length_bucket), int(kv_bucket)
        self.decode_chunk, self.prefill_tokens = int(decode_chunk), int(prefill_tokens)
        self.batch_buckets, self.admission = tuple(batch_buckets), admission
        self.pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        self.eos_ids = np.asarray(self.config.eos_ids or (-1,), np.int32)
        self.last_stats = GenerateStats()
        self._to_rollout = None
        self.update_weights(model)

    # -- weights ---------------------------------------------------------------------------------------
    def update_weights(self, model: QwenVL) -> None:
        """Use new weights (e.g. the trainer's, on the same devices): as they are when stored in the
        compute dtype and already in the decode layout, else as a compute-dtype copy in the decode
        layout (rollout_mesh's shardings, or the weights' own), made on device."""
        self.graphdef, state = nnx.split(model)
        dtype, leaves = self.dtype, jax.tree.leaves(state)
        target = None if self.mesh is None else state_shardings(state, self.mesh)
        recast = any(jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype for x in leaves)
        moved = target is not None and not all(
            isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == self.mesh
            and x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(leaves, jax.tree.leaves(target)))
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):   # abstract model (benchmarks/memory_fit)
            shardings = target if moved else jax.tree.map(lambda x: x.sharding, state)
            state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(
                x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=s), state, shardings)
        elif moved:   # one jitted cast + reshard into the decode layout
            if self._to_rollout is None:
                self._to_rollout = jax.jit(functools.partial(_cast, dtype=dtype), out_shardings=target)
            state = self._to_rollout(state)
        elif recast:
            state = _cast_floats(state, dtype)
        self.state = state

    def release_weights(self) -> None:
        """Drop the engine's reference to its weights (the rollout copy is freed unless someone else holds
        it); update_weights brings them back."""
        self.state = None

    # -- placement -------------------------------------------------------------------------------------
    def _put(self, x, kind: str):
        if self.mesh is None:
            return jnp.asarray(x)
        x = x if isinstance(x, jax.Array) else np.asarray(x)   # one host->device transfer, sharded
        return jax.device_put(x, activation_sharding(kind, x.shape, self.mesh))

    def _kv_shape(self, rows: int, length: int) -> tuple[int, ...]:
        t = self.config.text
        return (t.num_hidden_layers, rows, length, t.num_key_value_heads, t.head_dim)

    def _cache_specs(self, rows: int, length: int) -> tuple[P, P]:
        """PartitionSpecs of a cache's k/v and of its valid mask (rules "kv_cache", "cache_valid");
        unsharded (P()) without a mesh."""
        if self.mesh is None:
            return P(None, None), P(None, None)
        return (activation_sharding("kv_cache", self._kv_shape(rows, length), self.mesh).spec,
                activation_sharding("cache_valid", (rows, length), self.mesh).spec)

    def batch_shards(self, rows: int) -> int:
        """How many blocks the cache's batch dimension is split into on the mesh (1: replicated)."""
        axes = self._cache_specs(rows, self.kv_bucket)[0][1]
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else axes)
        return int(np.prod([self.mesh.shape[a] for a in axes]))

    def _empty_cache(self, batch: int, length: int) -> KVCache:
        """A zeroed cache created directly in its sharding (never whole on one device)."""
        if self.mesh is None:
            return KVCache.empty(self.config, batch, length, self.dtype)
        shape, bits = self._kv_shape(batch, length), cache_bits_dtype(self.dtype)
        kv, valid = (NamedSharding(self.mesh, spec) for spec in self._cache_specs(batch, length))
        return KVCache(jnp.zeros(shape, bits, device=kv), jnp.zeros(shape, bits, device=kv),
                       jnp.zeros((batch, length), bool, device=valid))

    def _per_shard(self, table: np.ndarray, rows: int):
        """int32 [shards, k] placed so each batch shard of a `rows`-row cache holds its own row."""
        if self.mesh is None:
            return jnp.asarray(table)
        return jax.device_put(table, NamedSharding(self.mesh, P(self._cache_specs(rows, self.kv_bucket)[0][1])))

    def _shard_local(self, fn, in_specs, out_specs):
        """fn on each device's own blocks (shard_map over the mesh); plain fn without a mesh."""
        if self.mesh is None:
            return fn
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    # -- jitted programs --------------------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0,))
    def _encode(self, state, vision):
        model = nnx.merge(self.graphdef, state)
        return model.encode_images(vision)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _prefill(self, state, ids, pos, mask, features, image_index, last):
        """Prompt rows [m, T] (right-padded) -> (logits at each row's last token [m, V], KV [L, m, T])."""
        model = nnx.merge(self.graphdef, state)
        m, t = ids.shape
        cache = KVCache.empty(self.config, m, t, self.dtype)
        if self.mesh is not None:
            kv, valid = (NamedSharding(self.mesh, s) for s in self._cache_specs(m, t))
            cache = KVCache(jax.lax.with_sharding_constraint(cache.k, kv),
                            jax.lax.with_sharding_constraint(cache.v, kv),
                            jax.lax.with_sharding_constraint(cache.valid, valid))
        out = model(ids, pos, mask, cache=cache, cache_index=0, image_features=features, image_index=image_index,
                    logits_at=last)
        return out.logits, out.cache

    @functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
    def _insert(self, pool: KVCache, pre: KVCache, slots, src) -> KVCache:
        """Copy prefilled prompt rows into decode slots: on each batch shard, local slot slots[s, i] takes
        prompt row src[s, i] of `pre` (gathered whole on every device first: at most prefill_tokens
        tokens); slots past the shard's rows are padding and dropped. The slot's cache row is reset: the
        prompt's T slots valid, the rest not."""
        rows, length = pool.valid.shape
        m, t = pre.valid.shape
        kv_spec, valid_spec = self._cache_specs(rows, length)
        pre_kv, pre_valid = self._cache_specs(m, t)
        gather = pre_kv[1]

        def local(k, v, valid, pk, pv, pvalid, slots, src):
            if gather is not None:
                pk, pv = (jax.lax.all_gather(x, gather, axis=1, tiled=True) for x in (pk, pv))
                pvalid = jax.lax.all_gather(pvalid, gather, axis=0, tiled=True)
            slots, src = slots[0], src[0]
            k = k.at[:, slots, :t].set(pk[:, src], mode="drop")
            v = v.at[:, slots, :t].set(pv[:, src], mode="drop")
            row = jnp.zeros((src.shape[0], valid.shape[1]), bool).at[:, :t].set(pvalid[src])
            return k, v, valid.at[slots].set(row, mode="drop")

        table = P(kv_spec[1])
        k, v, valid = self._shard_local(local, (kv_spec, kv_spec, valid_spec, pre_kv, pre_kv, pre_valid, table, table),
                                        (kv_spec, kv_spec, valid_spec))(pool.k, pool.v, pool.valid, pre.k, pre.v,
                                                                        pre.valid, slots, src)
        return KVCache(k, v, valid)

    @functools.partial(jax.jit, static_argnums=(0,))   # a new, smaller buffer: nothing to donate into
    def _compact(self, pool: KVCache, keep) -> KVCache:
        """A smaller pool: new local slot i of each batch shard is old local slot keep[s, i] (no row
        leaves its device)."""
        rows, length = pool.valid.shape
        new_rows = keep.shape[0] * keep.shape[1]
        kv_spec, valid_spec = self._cache_specs(rows, length)
        new_kv, new_valid = self._cache_specs(new_rows, length)

        def local(k, v, valid, keep):
            keep = keep[0]
            return k[:, keep], v[:, keep], valid[keep]

        k, v, valid = self._shard_local(local, (kv_spec, kv_spec, valid_spec, P(kv_spec[1])),
                                        (new_kv, new_kv, new_valid))(pool.k, pool.v, pool.valid, keep)
        return KVCache(k, v, valid)

    @staticmethod
    def _keys(r: dict, count) -> jax.Array:
        """Keys [B, 2] of token `count` [B] of each row of a ROW_FIELDS dict."""
        return row_keys(jnp.stack([r["seed_hi"], r["seed_lo"]], axis=-1), r["stream"], r["sample"], count)

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _first_tokens(self, logits, src, r, work: SamplerWork):
        """Each admitted sequence's first token from its prompt row's last logits (logits[src]); r: the
        sequences' sampling fields of ROW_FIELDS, each [k]; work: what the call's settings need."""
        return sample_tokens(suppress_ids(logits[src], self.suppressed_ids), self._keys(r, jnp.zeros_like(src)),
                             r["temperature"], r["top_k"], r["top_p"], work=work, draw=self._draw)

    @functools.partial(jax.jit, static_argnums=(0, 4, 5, 6), donate_argnums=(2,))
    def _decode(self, state, cache, rows, steps, read, work: SamplerWork):
        """`steps` decode steps of every slot. rows: the per-slot state (ROW_FIELDS, each [B]); a done
        slot computes but neither advances nor marks its cache writes valid. Attention reads cache
        slots [0, read). work: what the call's sampling settings need (one value per generate call, so
        a call compiles no more programs than before as its rows drain).
        Returns (cache, rows, tokens [B, steps], log-probs [B, steps])."""
        model = nnx.merge(self.graphdef, state)
        eos = jnp.asarray(self.eos_ids)

        def step(carry, _):
            cache, r = carry
            active = ~r["done"]
            pos3 = jnp.broadcast_to(r["position"][None, :, None], (3,) + r["position"].shape + (1,))
            out = model(r["token"][:, None], pos3, active[:, None], cache=cache, cache_index=r["write"],
                        logits_at=jnp.zeros_like(r["token"]), cache_read=read)
            new, logp = sample_tokens(suppress_ids(out.logits, self.suppressed_ids), self._keys(r, r["count"]),
                                      r["temperature"], r["top_k"], r["top_p"], work=work, draw=self._draw)
            new = jnp.where(active, new, self.pad_id)
            inc = active.astype(jnp.int32)
            remaining = r["remaining"] - inc
            r = dict(r, token=jnp.where(active, new, r["token"]), position=r["position"] + inc,
                     write=r["write"] + inc, remaining=remaining, count=r["count"] + inc,
                     done=r["done"] | (active & (jnp.isin(new, eos) | (remaining <= 0))))
            return (out.cache, r), (new, logp)

        (cache, rows), (toks, logps) = jax.lax.scan(step, (cache, rows), None, length=steps)
        return cache, rows, toks.T, logps.T

    # -- host side -------------------------------------------------------------------------------------
    def _encode_images(self, requests: Sequence[Request]):
        """Encode every image once; returns (features or None, per-request first feature row)."""
        vis, starts = pack_images([(r.pixel_values, r.image_grid_thw) if r.image_grid_thw is not None else None
                                   for r in requests], self.config)
        if vis is None:
            return None, starts
        return self._encode(self.state, {k: self._put(v, "vision") for k, v in vis.arrays().items()}), starts

    def _check(self, requests: Sequence[Request]) -> None:
        for i, r in enumerate(requests):
            n_img_tokens = int(np.sum(np.asarray(r.prompt_ids) == self.config.image_token_id))
            need = 0 if r.image_grid_thw is None else image_tokens(r.image_grid_thw, self.config)
            if n_img_tokens != need:
                raise ValueError(f"request {i}: {n_img_tokens} <|image_pad|> tokens but its images give {need} "
                                 "features; expand the image tokens with the same image_grid_thw (tokenizer."
                                 "expand_image_tokens) and the same processor settings")
            if len(r.prompt_ids) == 0:
                raise ValueError(f"request {i}: empty prompt_ids")

    def prefill_rows(self, prompt_len: int) -> int:
        """Prompt rows per prefill call for prompts padded to prompt_len: the largest batch bucket within
        prefill_tokens (at least 1)."""
        t = -(-prompt_len // self.length_bucket) * self.length_bucket
        fits = [b for b in self.batch_buckets if b * t <= self.prefill_tokens]
        return max(fits) if fits else 1

    def _prefill_prompts(self, requests: Sequence[Request], stats: GenerateStats):
        """Prefill these prompts together (one row each): (logits [m', V], KV of [m', T], prompt lengths,
        M-RoPE position of each prompt's next token)."""
        m = len(requests)
        rows = bucket(m, self.batch_buckets)
        lengths = np.asarray([len(r.prompt_ids) for r in requests], np.int32)
        t = -(-int(lengths.max()) // self.length_bucket) * self.length_bucket
        ids = np.full((rows, t), self.pad_id, np.int32)
        mask = np.zeros((rows, t), bool)
        for i, r in enumerate(requests):
            ids[i, :lengths[i]], mask[i, :lengths[i]] = np.asarray(r.prompt_ids, np.int32), True
        mask[m:, 0] = True   # padding rows: one dummy real token keeps their softmax finite
        features, starts = self._encode_images(requests)
        image_index = fill_image_index(ids, list(starts) + [0] * (rows - m), self.config)
        grids = [np.asarray(r.image_grid_thw).reshape(-1, 3) for r in requests if r.image_grid_thw is not None]
        pos, deltas = rope_index(ids, mask, np.concatenate(grids) if grids else None, self.config)
        last = np.zeros(rows, np.int32)
        last[:m] = lengths - 1
        logits, pre = self._prefill(self.state, self._put(ids, "tokens"), self._put(pos, "positions"),
                                    self._put(mask, "tokens"), features, self._put(image_index, "tokens"),
                                    self._put(last, "rows"))
        stats.prefill_calls += 1
        stats.prefill_rows += m
        stats.prefill_tokens += int(lengths.sum())
        stats.prefill_padded_tokens += rows * t
        return logits, pre, lengths, lengths + deltas[:m]

    def _slot_tables(self, pool: SlotPool, slots: Sequence[int], src: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per batch shard, (local slot, source row) pairs padded to a common bucketed width; padding slots
        point past the shard (dropped)."""
        per = pool.per_shard
        by_shard = [[] for _ in range(pool.shards)]
        for slot, s in zip(slots, src):
            by_shard[slot // per].append((slot % per, s))
        width = bucket(max(len(x) for x in by_shard), self.batch_buckets)
        local = np.full((pool.shards, width), per, np.int32)
        rows = np.zeros((pool.shards, width), np.int32)
        for shard, pairs in enumerate(by_shard):
            for i, (slot, s) in enumerate(pairs):
                local[shard, i], rows[shard, i] = slot, s
        return local, rows

    def _admit(self, cache, pool, rows, queue, seqs, requests, call, stats):
        """Fill free slots from the queue; sequences that end on their first token give their slot back at
        once, so this runs until the pool is full or nobody waits. The admitted prompts are prefilled
        shortest first, as many per call as fit in prefill_tokens at the call's longest prompt."""
        while len(queue) and pool.free_count():
            groups = sorted(queue.take(pool.free_count()), key=lambda g: len(requests[g[0]].prompt_ids))
            chunk = []
            for group in groups:
                if chunk and len(chunk) + 1 > self.prefill_rows(len(requests[group[0]].prompt_ids)):
                    cache = self._admit_chunk(cache, pool, rows, chunk, seqs, requests, call, stats)
                    chunk = []
                chunk.append(group)
            cache = self._admit_chunk(cache, pool, rows, chunk, seqs, requests, call, stats)
        return cache

    def _admit_chunk(self, cache, pool, rows, chunk, seqs, requests, call, stats):
        """Prefill the chunk's prompts, copy their KV into a slot per admitted sample, draw the first tokens.
        chunk: (prompt index, samples admitted now) pairs; call: the call's settings."""
        logits, pre, lengths, next_pos = self._prefill_prompts([requests[p] for p, _ in chunk], stats)
        seq_ids, src = [], []
        for row, (prompt, samples) in enumerate(chunk):
            for sample in samples:
                seq_ids.append(int(call.first_seq[prompt]) + sample)
                src.append(row)
        slots = pool.assign(seq_ids)
        local, local_src = self._slot_tables(pool, slots, src)
        cache = self._insert(cache, pre, self._per_shard(local, pool.rows), self._per_shard(local_src, pool.rows))
        k = bucket(len(slots), self.batch_buckets)
        first = _empty_rows(k)   # padding rows: greedy on row 0's logits, discarded
        for j, seq_id in enumerate(seq_ids):
            for name, value in (*call.prompts[seqs[seq_id].prompt].row().items(), ("sample", seqs[seq_id].sample)):
                first[name][j] = value
        sampling = {name: self._put(first[name], "rows") for name in
                    ("temperature", "top_k", "top_p", "seed_hi", "seed_lo", "stream", "sample")}
        tok, logp = self._first_tokens(logits, self._put(np.asarray(src + [0] * (k - len(src)), np.int32), "rows"),
                                       sampling, call.work)
        tok, logp = to_host((tok, logp))
        for j, (slot, seq_id, row) in enumerate(zip(slots, seq_ids, src)):
            seq = seqs[seq_id]
            self._append(seq, int(tok[j]), float(logp[j]), call.prompts[seq.prompt].params.stop)
            stats.first_tokens += 1
            if seq.finish is not None:
                pool.release(slot)
                rows["done"][slot] = True
                continue
            for name, value in (("token", tok[j]), ("position", next_pos[row]), ("write", lengths[row]),
                                ("remaining", seq.max_new - 1), ("done", False), ("sample", seq.sample),
                                ("count", 1), *call.prompts[seq.prompt].row().items()):
                rows[name][slot] = value
        return cache

    def _append(self, seq: SampleState, token: int, logprob: float, stop: tuple[str, ...]) -> None:
        """Add one token to a running sequence and decide whether it ends here (stop: its stop strings)."""
        seq.tokens.append(token)
        seq.logprobs.append(logprob)
        if token in self.eos_ids:
            seq.finish = "eos"
        elif len(seq.tokens) >= seq.max_new:
            seq.finish = "length"
        elif stop and self.tokenizer is not None and self._hit_stop(seq.tokens, stop):
            seq.finish = "stop"

    def _decode_chunk(self, cache, pool, rows, seqs, call, stats):
        active = pool.active_slots()
        steps = self.decode_chunk
        reach = int(np.max(rows["write"][active] + np.minimum(steps, rows["remaining"][active])))
        read = min(cache.valid.shape[1], length_bucket(reach, self.kv_bucket))
        device_rows = {name: self._put(rows[name], "rows") for name in ROW_FIELDS}
        cache, new_rows, toks, logps = self._decode(self.state, cache, device_rows, steps, read, call.work)
        toks, logps, new_rows = to_host((toks, logps, new_rows))   # one transfer of the chunk's results
        for slot in active:
            seq = seqs[pool.seq[slot]]
            for s in range(steps):
                self._append(seq, int(toks[slot, s]), float(logps[slot, s]), call.prompts[seq.prompt].params.stop)
                stats.useful_tokens += 1
                if seq.finish is not None:
                    break
            if seq.finish is not None:
                pool.release(slot)
                new_rows["done"][slot] = True
        rows.update(new_rows)
        stats.decode_chunks += 1
        stats.decode_steps += steps
        stats.row_steps += pool.rows * steps
        stats.read_lengths[read] = stats.read_lengths.get(read, 0) + 1
        return cache

    def _maybe_compact(self, cache, pool, rows, stats):
        keep = pool.compaction_plan(self.batch_buckets)
        if keep is None:
            return cache, rows
        old_rows = pool.rows
        cache = self._compact(cache, self._per_shard(keep, old_rows))
        old = pool.compact(keep)
        rows = {name: x[old] for name, x in rows.items()}
        rows["done"][pool.seq == -1] = True
        stats.compactions += 1
        return cache, rows

    def generate(self, requests: Sequence[Request], params: SamplingParams = SamplingParams()) -> list[Completion]:
        """Completions for every (prompt, sample), in that order; engine.last_stats says what it cost.
        params: the settings of every request that carries none of its own (Request.params)."""
        t0 = time.perf_counter()
        if not requests:
            return []
        if self.state is None:
            raise RuntimeError("the engine's weights were released; call update_weights(model) first")
        self._check(requests)
        call = _call_settings(requests, params)
        max_new = [r.max_new_tokens or p.params.max_new_tokens for r, p in zip(requests, call.prompts)]
        ns = [p.params.n for p in call.prompts]
        seqs = [SampleState(i, j, max_new[i]) for i in range(len(requests)) for j in range(ns[i])]
        queue = AdmissionQueue(max_new, ns, self.admission)
        longest_prompt = max(len(r.prompt_ids) for r in requests)
        length = max(length_bucket(max(len(r.prompt_ids) + m for r, m in zip(requests, max_new)), self.kv_bucket),
                     -(-longest_prompt // self.length_bucket) * self.length_bucket)
        n_rows = bucket(min(len(seqs), self.max_slots), self.batch_buckets)
        pool = SlotPool(n_rows, self.batch_shards(n_rows))
        stats = GenerateStats(prompts=len(requests), sequences=len(seqs), pool_rows=n_rows, cache_len=length)
        cache = self._empty_cache(n_rows, length)
        rows = _empty_rows(n_rows)
        while True:
            cache = self._admit(cache, pool, rows, queue, seqs, requests, call, stats)
            if not len(pool.active_slots()):
                break
            if not len(queue):
                cache, rows = self._maybe_compact(cache, pool, rows, stats)
            cache = self._decode_chunk(cache, pool, rows, seqs, call, stats)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return [self._completion(s, call.prompts[s.prompt].params.stop) for s in seqs]

    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        text = self.tokenizer.decode(tokens[-64:], skip_special_tokens=False)
        return any(s in text for s in stop)

    def _completion(self, seq: SampleState, stop: tuple[str, ...]) -> Completion:
        tokens, reason = seq.tokens, seq.finish
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode([t for t in tokens if t not in self.eos_ids], skip_special_tokens=False)
            if stop:
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    reason, text = "stop", text[:cut]
        return Completion(seq.prompt, seq.sample, tokens, seq.logprobs, reason, text)

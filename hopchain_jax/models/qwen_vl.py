"""Qwen2.5-VL and Qwen3-VL (dense) in Flax NNX: vision tower + decoder LM with M-RoPE.

    model = QwenVL(config, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    out = model(input_ids, position_ids, attention_mask, vision=vision_arrays)   # logits [B, T, V]

Decoder layers and vision blocks are stacked ([L, ...] parameters, models/stack.py) and run by
lax.scan; attention masks are per-token segment/position ids (models/attention.py), never [T, T].

Inputs
  input_ids       int32 [B, T]
  position_ids    int32 [3, B, T]   from rope.rope_index (host side)
  attention_mask  bool  [B, T]      True = real token (padding may sit anywhere, usually on the left)
  vision          dict of the tower's arrays (vision.prepare_vision_inputs(...).arrays()) or None;
                  its merged tokens replace the <|image_pad|> embeddings in row-major order
  cache           optional KVCache; tokens are written at slots [cache_index, cache_index + T) (a scalar
                  cache_index: the same slots in every row, e.g. a prefill), or, for one token per row
                  (T = 1), at each row's own slot cache_index[b] (int32 [B]: rows at different lengths, as
                  the engine's decode slots are); cache_read = R reads only slots [0, R) (the filled part)
  image_features / image_index   precomputed encode_images output and the feature row of each image
                  token (the engine encodes each distinct image once and shares it across samples)
Outputs: ModelOutput(logits [B, T, V] float32 | None, hidden [B, T, D], cache).

Freezing: `trainable_filter(freeze_vision=..., freeze_language=...)` returns the nnx filter of the
parameters an optimizer should update, so the vision tower and the LM can be frozen independently.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hopchain_jax.models.config import QwenVLConfig, TextConfig
from hopchain_jax.models.attention import attention
from hopchain_jax.models.layers import GatedMLP, Linear, RMSNorm, apply_rope, init_normal
from hopchain_jax.models.rope import mrope_cos_sin
from hopchain_jax.models.stack import scan, stack
from hopchain_jax.models.vision import VisionTower


def cache_bits_dtype(dtype) -> jnp.dtype:
    """The unsigned integer type a KV cache of `dtype` values is stored as (same width)."""
    return jnp.dtype({1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[jnp.dtype(dtype).itemsize])


def to_cache_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, cache_bits_dtype(x.dtype))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-layer keys and values: k, v [L, B, S, KV, head_dim]; `valid` bool [B, S] marks filled, real slots.

    k and v hold the raw bits of the compute-dtype values (uint16 for bfloat16; TextAttention bitcasts
    on write and read, which costs nothing): per-row writes are then integer scatters, which XLA updates
    in place on every backend (the CPU compiler upcasts a bfloat16 scatter to float32, copying the
    whole cache twice)."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array

    @classmethod
    def empty(cls, config: QwenVLConfig, batch: int, length: int, dtype) -> "KVCache":
        t = config.text
        shape = (t.num_hidden_layers, batch, length, t.num_key_value_heads, t.head_dim)
        bits = cache_bits_dtype(dtype)
        return cls(jnp.zeros(shape, bits), jnp.zeros(shape, bits), jnp.zeros((batch, length), bool))


def write_token_rows(cache: jax.Array, update: jax.Array, layer, slots: jax.Array) -> jax.Array:
    """cache [L, B, S, KV, D] with update [B, KV, D] written at (layer, b, slots[b]) for every row b.

    A scatter whose batch dimension is declared as such (operand_batching_dims), so it partitions along
    a batch-sharded cache with no collective and updates the donated buffer in place; out-of-range
    slots are dropped."""
    if update.dtype.itemsize != cache.dtype.itemsize:
        raise ValueError(f"cache of {cache.dtype} cannot hold {update.dtype} values")
    update = jax.lax.bitcast_convert_type(update, cache.dtype) if update.dtype != cache.dtype else update
    index = jnp.stack([jnp.broadcast_to(jnp.asarray(layer, jnp.int32), slots.shape), slots.astype(jnp.int32)], 1)
    dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(1, 2), inserted_window_dims=(0, 2),
                                           scatter_dims_to_operand_dims=(0, 2), operand_batching_dims=(1,),
                                           scatter_indices_batching_dims=(0,))
    return jax.lax.scatter(cache, index, update, dims, indices_are_sorted=True,
                           unique_indices=True, mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


def write_valid_rows(valid: jax.Array, update: jax.Array, slots: jax.Array) -> jax.Array:
    """valid bool [B, S] with update [B] written at (b, slots[b]); the batched scatter of write_token_rows."""
    dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(1,),
                                           scatter_dims_to_operand_dims=(1,), operand_batching_dims=(0,),
                                           scatter_indices_batching_dims=(0,))
    return jax.lax.scatter(valid, slots.astype(jnp.int32)[:, None], update.astype(valid.dtype), dims,
                           indices_are_sorted=True, unique_indices=True,
                           mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


@dataclasses.dataclass
class ModelOutput:
    logits: jax.Array | None
    hidden: jax.Array
    cache: KVCache | None


class TextAttention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, h * d, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Linear(cfg.hidden_size, kv * d, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.v_proj = Linear(cfg.hidden_size, kv * d, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.o_proj = Linear(h * d, cfg.hidden_size, bias=cfg.o_bias, dtype=dtype, rngs=rngs)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype)
            self.k_norm = RMSNorm(d, eps=cfg.rms_norm_eps, dtype=dtype)
        self.qk_norm = cfg.qk_norm
        self.h, self.kv, self.d = h, kv, d

    def __call__(self, x, cos, sin, mask: "AttentionMask", kv_cache=None, impl: str = "flash"):
        """x [B, T, D]. kv_cache: None, or (k, v [L, B, S, KV, hd], layer index, first slot, read) — this
        layer's keys/values are written in place at slots [first, first + T) of its layer (first a
        scalar), or at slot first[b] of each row b (first int32 [B], T = 1); attention then reads the
        layer's first `read` slots (None: all S)."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.h, self.d)
        k = self.k_proj(x).reshape(b, t, self.kv, self.d)
        v = self.v_proj(x).reshape(b, t, self.kv, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            # The whole [L, B, S, KV, D] cache travels through the layers and each layer writes its
            # slots in place (a dynamic_update_slice or a per-row scatter on the donated buffer):
            # slicing per layer and re-stacking would copy the entire cache at every decode step.
            ck, cv, layer, first, read = kv_cache
            if jnp.ndim(first) == 0:
                at = (layer, 0, first, 0, 0)
                ck = jax.lax.dynamic_update_slice(ck, to_cache_bits(k)[None], at)
                cv = jax.lax.dynamic_update_slice(cv, to_cache_bits(v)[None], at)
            else:
                if t != 1:
                    raise ValueError(f"per-row cache slots take one token per row, got {t}")
                ck, cv = write_token_rows(ck, k[:, 0], layer, first), write_token_rows(cv, v[:, 0], layer, first)
            read = ck.shape[2] if read is None else read
            window = (1, b, read, self.kv, self.d)
            k = jax.lax.bitcast_convert_type(jax.lax.dynamic_slice(ck, (layer, 0, 0, 0, 0), window)[0], q.dtype)
            v = jax.lax.bitcast_convert_type(jax.lax.dynamic_slice(cv, (layer, 0, 0, 0, 0), window)[0], q.dtype)
            kv_cache = (ck, cv, layer, first, read)
        # one query per row (decode): a single key block, no loop over blocks
        block_k = k.shape[1] if t == 1 else 512
        out = attention(q, k, v, q_segment=mask.q_segment, kv_segment=mask.kv_segment, q_pos=mask.q_pos,
                        kv_pos=mask.kv_pos, causal=True, impl=impl, block_k=block_k)
        return self.o_proj(out.reshape(b, t, self.h * self.d)), kv_cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AttentionMask:
    """Causal mask of the decoder as per-token ids (models/attention.py): segment -1 = padding.
    q_segment, q_pos int32 [B, T]; kv_segment, kv_pos int32 [B, S] (S = T without a cache, else the
    cache slots read). Queries sit at cache slots first_slot + t (first_slot a scalar or int32 [B])."""

    q_segment: jax.Array
    kv_segment: jax.Array
    q_pos: jax.Array
    kv_pos: jax.Array

    @classmethod
    def build(cls, attention_mask: jax.Array, cache_valid: jax.Array | None = None, first_slot=0) -> "AttentionMask":
        b, t = attention_mask.shape
        q_seg = jnp.where(attention_mask, 0, -1).astype(jnp.int32)
        first = jnp.asarray(first_slot, jnp.int32)
        q_pos = jnp.broadcast_to((first[:, None] if first.ndim else first) + jnp.arange(t, dtype=jnp.int32), (b, t))
        if cache_valid is None:
            return cls(q_seg, q_seg, q_pos, q_pos)
        s = cache_valid.shape[1]
        kv_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        return cls(q_seg, jnp.where(cache_valid, 0, -1).astype(jnp.int32), q_pos, kv_pos)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = TextAttention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, act="silu", bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv_cache=None, impl: str = "flash"):
        a, kv_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, impl)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv_cache


class TextModel(nnx.Module):
    """embed_tokens [V, D]; layers: one stacked DecoderLayer (parameters [L, ...], run by lax.scan)."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Param(init_normal()(rngs.params(), (cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = stack(lambda r: DecoderLayer(cfg, dtype=dtype, rngs=r), cfg.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)

    def decode(self, x, cos, sin, mask: AttentionMask, deepstack: list[jax.Array], kv=None, first_slot=0, *,
               read: int | None = None, remat: str = "none", impl: str = "flash"):
        """The decoder stack: x [B, T, D] -> (final-normed hidden [B, T, D], (k, v) cache or None).
        first_slot / read: where the cache is written and how much of it is read (TextAttention).

        Deepstack features (Qwen3-VL) are added after the first len(deepstack) layers; those layers
        run as their own scan with the features as its xs, the rest as one scan."""
        n_deep = len(deepstack)

        def body(layer, carry, extra):
            x, kv, i = carry
            cache = None if kv is None else (*kv, i, first_slot, read)
            x, cache = layer(x, cos, sin, mask, cache, impl)
            if extra is not None:
                x = x + extra
            return (x, None if cache is None else cache[:2], i + 1), None

        carry = (x, kv, jnp.int32(0))
        if n_deep:
            carry, _ = scan(self.layers, body, carry, jnp.stack(deepstack), remat=remat, stop=n_deep)
        carry, _ = scan(self.layers, body, carry, None, remat=remat, start=n_deep)
        x, kv, _ = carry
        return self.norm(x), kv


class QwenVL(nnx.Module):
    """Parameters are stored in `param_dtype` (the optimizer's master weights, float32 for training);
    activations and matmuls run in `dtype` (bfloat16 on accelerators). Logits are float32."""

    def __init__(self, config: QwenVLConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs,
                 attention_impl: str = "flash"):
        param_dtype = dtype if param_dtype is None else param_dtype
        self.config = config
        self.compute_dtype = jnp.dtype(dtype)
        self.attention_impl = attention_impl
        self.visual = VisionTower(config, dtype=param_dtype, rngs=rngs)
        self.language_model = TextModel(config.text, dtype=param_dtype, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else Linear(
            config.text.hidden_size, config.text.vocab_size, bias=False, dtype=param_dtype, rngs=rngs)

    @property
    def dtype(self):
        """Compute dtype (activations, KV cache)."""
        return self.compute_dtype

    @property
    def param_dtype(self):
        return self.language_model.embed_tokens[...].dtype

    def head_weight(self) -> jax.Array:
        """LM head as [D, V] in the compute dtype (the tied embedding transposed when tie_word_embeddings)."""
        if self.lm_head is None:
            return self.language_model.embed_tokens[...].T.astype(self.compute_dtype)
        return self.lm_head.kernel[...].astype(self.compute_dtype)

    def encode_images(self, vision: dict[str, jax.Array], *, remat: str = "none") -> tuple[jax.Array, list[jax.Array]]:
        """Vision tower: merged image tokens [M, D] and deepstack features (Qwen3-VL) in token order."""
        return self.visual(vision, dtype=self.compute_dtype, remat=remat, impl=self.attention_impl)

    def embed(self, input_ids: jax.Array, vision: dict[str, jax.Array] | None = None,
              image_features: tuple[jax.Array, list[jax.Array]] | None = None,
              image_index: jax.Array | None = None):
        """Token embeddings with image features scattered in; returns (embeds, deepstack per layer).

        image_features: precomputed encode_images output (lets several rows share one image's features);
        image_index int [B, T]: which feature row each <|image_pad|> takes (default: row-major order).
        """
        x = self.language_model.embed_tokens[...][input_ids].astype(self.compute_dtype)
        if image_features is None and vision is None:
            return x, []
        tokens, deepstack = image_features if image_features is not None else self.encode_images(vision)
        image_mask = input_ids == self.config.image_token_id
        if image_index is None:
            image_index = (jnp.cumsum(image_mask.reshape(-1)) - 1).reshape(image_mask.shape)
        order = jnp.clip(image_index, 0, tokens.shape[0] - 1)
        x = jnp.where(image_mask[..., None], tokens[order].astype(x.dtype), x)
        deepstack = [jnp.where(image_mask[..., None], f[order].astype(x.dtype), 0) for f in deepstack]
        return x, deepstack

    def __call__(self, input_ids: jax.Array, position_ids: jax.Array, attention_mask: jax.Array,
                 vision: dict[str, jax.Array] | None = None, cache: KVCache | None = None,
                 cache_index: jax.Array | int | None = None, return_logits: bool = True,
                 image_features: tuple[jax.Array, list[jax.Array]] | None = None,
                 image_index: jax.Array | None = None, logits_at: jax.Array | None = None,
                 remat: str = "none", cache_read: int | None = None) -> ModelOutput:
        """logits_at int [B]: compute logits only at these positions (logits [B, V]); default all [B, T, V].
        remat: the layers' rematerialisation policy (models.stack.REMAT) when differentiated.
        cache_read (static): attention reads cache slots [0, cache_read) only; every query's keys must
        lie there (the engine picks it from the rows' lengths). Default: the whole cache."""
        x, deepstack = self.embed(input_ids, vision, image_features, image_index)
        cos, sin = mrope_cos_sin(position_ids, self.config, x.dtype)
        attention_mask = attention_mask.astype(bool)
        valid = None
        if cache is not None:
            if jnp.ndim(cache_index) == 0:
                valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, attention_mask, cache_index, axis=1)
            else:
                valid = write_valid_rows(cache.valid, attention_mask[:, 0], cache_index)
        read_valid = valid if valid is None or cache_read is None else valid[:, :cache_read]
        mask = AttentionMask.build(attention_mask, read_valid, 0 if cache is None else cache_index)
        kv = (cache.k, cache.v) if cache is not None else None
        hidden, kv = self.language_model.decode(x, cos, sin, mask, deepstack, kv, cache_index, read=cache_read,
                                                remat=remat, impl=self.attention_impl)
        new_cache = KVCache(*kv, valid) if cache is not None else None
        logits = None
        if return_logits:
            h = hidden if logits_at is None else jnp.take_along_axis(hidden, logits_at[:, None, None], axis=1)[:, 0]
            logits = jnp.dot(h, self.head_weight(), preferred_element_type=jnp.float32)
        return ModelOutput(logits, hidden, new_cache)


def init_sharded(config: QwenVLConfig, *, dtype=jnp.float32, param_dtype=None, mesh=None, seed: int = 0,
                 attention_impl: str = "flash") -> "QwenVL":
    """A randomly initialised model created under jit (no host copy), placed by the sharding rules."""
    from hopchain_jax.models.sharding import state_shardings

    def make():
        return QwenVL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed), attention_impl=attention_impl)
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    out = None if mesh is None else state_shardings(abstract, mesh)   # each shard made where it lives
    lowered = jax.jit(lambda: nnx.state(make()), out_shardings=out).lower()
    # On a CPU, LLVM's default -O2 spends ~60% of this program's compile time (a threefry + erf_inv loop
    # per parameter: 8.8 s for the tiny model on 8 devices) for no faster run; -O1 compiles it in 3.7 s.
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    state = lowered.compile(compiler_options=options)()
    return nnx.merge(graphdef, state)


VISION_PREFIX = "visual"  # parameters under this top-level attribute form the vision tower


def is_vision_param(path: str) -> bool:
    """True for a "/"-joined parameter path (models.sharding.path_str) inside the vision tower."""
    return path.split("/", 1)[0] == VISION_PREFIX


def trainable_filter(freeze_vision: bool = False, freeze_language: bool = False) -> Any:
    """nnx filter selecting the parameters to train (vision tower and LM freezable independently)."""
    parts = []
    if not freeze_vision:
        parts.append(nnx.All(nnx.Param, nnx.PathContains(VISION_PREFIX)))
    if not freeze_language:
        parts.append(nnx.All(nnx.Param, nnx.Not(nnx.PathContains(VISION_PREFIX))))
    return nnx.Any(*parts) if parts else nnx.Nothing

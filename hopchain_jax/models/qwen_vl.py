"""Qwen2.5-VL and Qwen3-VL (dense) in Flax NNX: vision tower + decoder LM with M-RoPE.

    model = QwenVL(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = model(input_ids, position_ids, attention_mask, vision=vision_arrays)   # logits [B, T, V]

Inputs
  input_ids       int32 [B, T]
  position_ids    int32 [3, B, T]   from rope.rope_index (host side)
  attention_mask  bool  [B, T]      True = real token (padding may sit anywhere, usually on the left)
  vision          dict of the tower's arrays (vision.prepare_vision_inputs(...).arrays()) or None;
                  its merged tokens replace the <|image_pad|> embeddings in row-major order
  cache           optional KVCache; tokens are written at slots [cache_index, cache_index + T)
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
from hopchain_jax.models.layers import GatedMLP, Linear, RMSNorm, apply_rope, attention, init_normal
from hopchain_jax.models.rope import mrope_cos_sin
from hopchain_jax.models.vision import VisionTower


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-layer keys and values: k, v [L, B, S, KV, head_dim]; `valid` bool [B, S] marks filled, real slots."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array

    @classmethod
    def empty(cls, config: QwenVLConfig, batch: int, length: int, dtype) -> "KVCache":
        t = config.text
        shape = (t.num_hidden_layers, batch, length, t.num_key_value_heads, t.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool))


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

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.h, self.d)
        k = self.k_proj(x).reshape(b, t, self.kv, self.d)
        v = self.v_proj(x).reshape(b, t, self.kv, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if layer_cache is not None:
            # The whole [L, B, S, KV, D] cache travels through the layers and each layer writes its
            # slot in place (one dynamic_update_slice on the donated buffer): slicing per layer
            # and re-stacking would copy the entire cache at every decode step.
            ck, cv, layer = layer_cache
            at = (layer, 0, cache_index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], at)
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], at)
            k, v, layer_cache = ck[layer].astype(q.dtype), cv[layer].astype(q.dtype), (ck, cv, layer)
        out = attention(q, k, v, mask)
        return self.o_proj(out.reshape(b, t, self.h * self.d)), layer_cache


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = TextAttention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, act="silu", bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None):
        a, layer_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache, cache_index)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), layer_cache


class TextModel(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Param(init_normal()(rngs.params(), (cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)


class QwenVL(nnx.Module):
    def __init__(self, config: QwenVLConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.visual = VisionTower(config, dtype=dtype, rngs=rngs)
        self.language_model = TextModel(config.text, dtype=dtype, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else Linear(
            config.text.hidden_size, config.text.vocab_size, bias=False, dtype=dtype, rngs=rngs)

    @property
    def dtype(self):
        return self.language_model.embed_tokens[...].dtype

    def head_weight(self) -> jax.Array:
        """LM head as [D, V] (the tied embedding transposed when tie_word_embeddings)."""
        if self.lm_head is None:
            return self.language_model.embed_tokens[...].T
        return self.lm_head.kernel[...]

    def encode_images(self, vision: dict[str, jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
        """Vision tower: merged image tokens [M, D] and deepstack features (Qwen3-VL) in token order."""
        return self.visual(vision)

    def embed(self, input_ids: jax.Array, vision: dict[str, jax.Array] | None = None,
              image_features: tuple[jax.Array, list[jax.Array]] | None = None,
              image_index: jax.Array | None = None):
        """Token embeddings with image features scattered in; returns (embeds, deepstack per layer).

        image_features: precomputed encode_images output (lets several rows share one image's features);
        image_index int [B, T]: which feature row each <|image_pad|> takes (default: row-major order).
        """
        x = self.language_model.embed_tokens[...][input_ids]
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
                 image_index: jax.Array | None = None, logits_at: jax.Array | None = None) -> ModelOutput:
        """logits_at int [B]: compute logits only at these positions (logits [B, V]); default all [B, T, V]."""
        x, deepstack = self.embed(input_ids, vision, image_features, image_index)
        cos, sin = mrope_cos_sin(position_ids, self.config, x.dtype)
        b, t = input_ids.shape
        attention_mask = attention_mask.astype(bool)
        if cache is None:
            causal = jnp.tril(jnp.ones((t, t), bool))
            mask = causal[None] & attention_mask[:, None, :]
        else:
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, attention_mask, cache_index, axis=1)
            slots = jnp.arange(valid.shape[1])
            causal = slots[None, :] <= (cache_index + jnp.arange(t))[:, None]
            mask = causal[None] & valid[:, None, :]
        kv = (cache.k, cache.v) if cache is not None else None
        for i, layer in enumerate(self.language_model.layers):
            x, layer_cache = layer(x, cos, sin, mask, None if kv is None else (*kv, i), cache_index)
            if layer_cache is not None:
                kv = layer_cache[:2]
            if i < len(deepstack):
                x = x + deepstack[i]
        hidden = self.language_model.norm(x)
        new_cache = KVCache(*kv, valid) if cache is not None else None
        logits = None
        if return_logits:
            h = hidden if logits_at is None else jnp.take_along_axis(hidden, logits_at[:, None, None], axis=1)[:, 0]
            logits = jnp.dot(h, self.head_weight().astype(hidden.dtype), preferred_element_type=jnp.float32)
        return ModelOutput(logits, hidden, new_cache)


def init_sharded(config: QwenVLConfig, *, dtype=jnp.float32, mesh=None, seed: int = 0) -> "QwenVL":
    """A randomly initialised model created under jit (no host copy), placed by the sharding rules."""
    from hopchain_jax.models.sharding import state_shardings
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: QwenVL(config, dtype=dtype, rngs=nnx.Rngs(seed))))
    out = None if mesh is None else state_shardings(abstract, mesh)   # each shard made where it lives
    state = jax.jit(lambda: nnx.state(QwenVL(config, dtype=dtype, rngs=nnx.Rngs(seed))), out_shardings=out)()
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

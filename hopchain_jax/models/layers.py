"""Building blocks shared by the vision tower and the language model (Flax NNX).

Conventions: activations are [..., features]; Linear kernels are stored [in, out] (Hugging Face
stores [out, in]; checkpoint I/O transposes). Norms compute in float32 and cast back, as transformers
does, so float32 parity is exact up to summation order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def init_normal(std: float = 0.02):
    return nnx.initializers.normal(std)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias). kernel: [in, out]."""

    def __init__(self, din: int, dout: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(init_normal()(rngs.params(), (din, dout), dtype))
        self.bias = nnx.Param(jnp.zeros((dout,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class GatedMLP(nnx.Module):
    """down(act(gate(x)) * up(x)) — SwiGLU in the LM, with biases in the 2.5-VL vision tower."""

    def __init__(self, dim: int, hidden: int, *, act: str, bias: bool, dtype, rngs: nnx.Rngs):
        self.gate_proj = Linear(dim, hidden, bias=bias, dtype=dtype, rngs=rngs)
        self.up_proj = Linear(dim, hidden, bias=bias, dtype=dtype, rngs=rngs)
        self.down_proj = Linear(hidden, dim, bias=bias, dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [..., heads, head_dim]; cos/sin broadcastable to x without the heads axis ([..., head_dim])."""
    cos, sin = cos[..., None, :], sin[..., None, :]
    return x * cos + rotate_half(x) * sin

"""Layer stacks: n identical modules stored as one module whose parameters have a leading layer axis
[n, ...], run by `jax.lax.scan` (one compiled layer body, whatever the depth) under a remat policy.

    layers = stack(lambda rngs: DecoderLayer(cfg, dtype=dtype, rngs=rngs), n, rngs)
    carry, ys = scan(layers, body, carry, xs, remat="full")     # body(layer, carry, x) -> (carry, y)

Remat policies (REMAT): "none" keeps every intermediate for the backward; "full" keeps only each
layer's input (recomputes the layer in the backward: least memory); "dots" keeps matmul outputs;
"dots_no_batch" keeps matmul outputs without batch dimensions (weights-like), as MaxText names them.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def stack(make: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs) -> nnx.Module:
    """n modules built by `make`, each from its own split of `rngs`, as one stacked module."""
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def build(r):
        return make(r)
    return build(rngs)


def depth(layers: nnx.Module) -> int:
    return int(jax.tree.leaves(nnx.state(layers))[0].shape[0])


def scan(layers: nnx.Module, body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]], carry: Any, xs: Any = None,
         *, remat: str = "none", start: int = 0, stop: int | None = None) -> tuple[Any, Any]:
    """Run body(layer_i, carry, xs_i) for layers start..stop-1 of the stack; returns (carry, stacked ys).

    xs: a pytree with leading axis stop - start (or None). The layer's parameters arrive as the scanned
    slice of the stack, so the compiled program holds one layer body.
    """
    if remat not in REMAT:
        raise ValueError(f"remat must be one of {sorted(REMAT)}, got {remat!r}")
    graphdef, state = nnx.split(layers)
    stop = depth(layers) if stop is None else stop
    if (start, stop) != (0, depth(layers)):
        state = jax.tree.map(lambda a: a[start:stop], state)

    def step(c, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    if remat != "none":
        step = jax.checkpoint(step, policy=REMAT[remat], prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs))

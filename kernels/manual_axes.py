"""shard_map manual-axis ("varying") bookkeeping shared by the kernels, tolerant of the JAX version.

Under ``shard_map(check_vma=True)`` every value carries the set of mesh axes it varies over.
JAX 0.10/0.11 expose it as ``typeof(x).manual_axis_type.varying`` (older: ``typeof(x).vma``). The
custom VJPs use these helpers to cast inputs to a common set, to give ``pallas_call`` /
``plgpu.kernel`` outputs the right type, and to psum cotangents back to their primal's type.
"""
from __future__ import annotations

import jax
from jax import lax


def vary(x) -> frozenset:
    """Mesh axes ``x`` varies over (empty outside shard_map)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None and hasattr(mat, "varying"):
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", None) or ())


def cast_varying(x, axes):
    """``x`` marked as varying over ``axes`` as well (None passes through)."""
    if x is None:
        return None
    missing = tuple(sorted(frozenset(axes) - vary(x)))
    if not missing:
        return x
    if hasattr(lax, "pcast"):
        return lax.pcast(x, missing, to="varying")
    return lax.pvary(x, missing)  # pragma: no cover - older JAX


def union_vary(*xs) -> frozenset:
    """Union of the varying axes of the non-None ``xs``."""
    out = frozenset()
    for x in xs:
        if x is not None:
            out |= vary(x)
    return out


def psum_to(ct, primal):
    """Sum a cotangent over the mesh axes where it varies but its primal input does not."""
    extra = tuple(sorted(vary(ct) - vary(primal)))
    return lax.psum(ct, extra) if extra else ct


def out_struct(shape, dtype, like):
    """ShapeDtypeStruct for a kernel output carrying the manual-axis type of ``like``."""
    aval = jax.typeof(like)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None and not getattr(mat, "empty", True):
        try:
            return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)
        except TypeError:  # pragma: no cover - keyword renamed in another JAX version
            return jax.ShapeDtypeStruct(shape, dtype, vma=frozenset(mat.varying))
    vma = getattr(aval, "vma", None)
    if vma:  # pragma: no cover - older JAX
        return jax.ShapeDtypeStruct(shape, dtype, vma=vma)
    return jax.ShapeDtypeStruct(shape, dtype)

"""Declarative sharding: one table of rules for every parameter and activation, used by inference and
training alike.

A mesh has axes (data, fsdp, tensor). Each parameter path matches the first rule whose regex finds it;
the rule names a logical axis per array dimension, and LOGICAL_TO_MESH maps logical axes to mesh axes.
A dimension that the mesh axis does not divide is replicated instead (so tiny test models and odd
head counts still shard what they can). Activations use ACTIVATION_RULES the same way.

Stacked layers: the decoder layers and the vision blocks are stored as one stack per parameter with a
leading layer axis ([L, ...], scanned by the model); a rule's axes describe one layer, and the leading
"layers" axis (never sharded) is prepended for parameters under STACKED_PATH.

Paths are "/"-joined keys of the parameter tree, as `path_str` makes them from any pytree path of an
nnx.State or of optimizer state holding such trees (the Variable's own `.value` attribute is dropped).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_TO_MESH: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vision_embed": "fsdp",
    "length": None,
    "cache_heads": "tensor",
    "layers": None,
    "patches": ("data", "fsdp"),
}

# A parameter under one of these containers has a leading layer axis (models/qwen_vl.py stacks them).
STACKED_PATH = re.compile(r"(^|/)(language_model/layers|visual/blocks)/")

# (regex on the "/"-joined parameter path, logical axes per dimension). First match wins.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"language_model/embed_tokens$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"self_attn/(q_proj|k_proj|v_proj)/kernel$", ("embed", "heads")),
    (r"self_attn/(q_proj|k_proj|v_proj)/bias$", ("heads",)),
    (r"self_attn/o_proj/kernel$", ("heads", "embed")),
    (r"language_model/.*mlp/(gate_proj|up_proj)/kernel$", ("embed", "mlp")),
    (r"language_model/.*mlp/down_proj/kernel$", ("mlp", "embed")),
    # the tower's MLP width (3420 in Qwen2.5-VL) does not split 8 ways: shard down_proj's output instead
    (r"visual/.*mlp/down_proj/kernel$", (None, "vision_embed")),
    (r"visual/.*/kernel$", ("vision_embed", None)),
    (r"visual/pos_embed$", (None, "vision_embed")),
    (r".*", ()),  # norms, biases, everything else: replicated
)

ACTIVATION_RULES: dict[str, tuple[str | None, ...]] = {
    "tokens": ("batch", "length"),            # input_ids, attention_mask [B, T]
    "rows": ("batch",),                       # per-sequence values, e.g. advantages [B]
    "positions": (None, "batch", "length"),   # position_ids [3, B, T]
    "kv_cache": (None, "batch", "length", "cache_heads", None),  # [L, B, S, KV, D]
    "cache_valid": ("batch", "length"),
    "logits": ("batch", "length", "vocab"),
    "vision": ("patches",),                   # packed patches [P, ...] of all images: over the batch axes
    # micro-batches stacked for gradient accumulation: a leading [K] axis (never sharded)
    "micro_tokens": (None, "batch", "length"),
    "micro_rows": (None, "batch"),
    "micro_positions": (None, None, "batch", "length"),
    "micro_vision": (None, "patches"),
}


def parse_mesh_shape(text: str | None, flag: str = "--mesh") -> tuple[int, int, int] | None:
    """"data,fsdp,tensor" device counts from a command-line flag (-1: the remaining devices); None when
    the flag was not given. A bad value raises ValueError naming the flag and the expected form."""
    if text is None:
        return None
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(n == 0 or n < -1 for n in shape):
        raise ValueError(f"{flag} {text!r}: give three device counts data,fsdp,tensor "
                         f"(e.g. 1,8,1; -1 = the rest, as in {flag}=-1,1,1)")
    return shape


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; -1 takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("make_mesh: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"make_mesh: {len(devices)} devices do not divide into {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"make_mesh: mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def spec_for(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for an array of `shape` with logical axes; indivisible dimensions are replicated."""
    out = []
    for i, dim in enumerate(shape):
        axes = LOGICAL_TO_MESH.get(logical[i]) if i < len(logical) and logical[i] else None
        out.append(axes if axes is not None and dim % _axis_size(mesh, axes) == 0 else None)
    return P(*out)


def param_logical_axes(path: str, ndim: int | None = None) -> tuple[str | None, ...]:
    """Logical axes of the parameter at `path` (a stacked layer parameter gets a leading "layers")."""
    axes: tuple[str | None, ...] = ()
    for pattern, rule in PARAM_RULES:
        if re.search(pattern, path):
            axes = rule
            break
    if STACKED_PATH.search(path):
        axes = ("layers",) + (axes if axes else (None,) * max((ndim or 1) - 1, 0))
    return axes


def path_str(path: Sequence[Any]) -> str:
    """"/"-joined keys of a pytree path; the trailing `.value` of an nnx Variable is not part of it."""
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey):
            if p.name == "value":
                continue
            parts.append(p.name)
        else:
            parts.append(str(getattr(p, "key", getattr(p, "idx", p))))
    return "/".join(parts)


def param_sharding(path: str, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, spec_for(param_logical_axes(path, len(shape)), shape, mesh))


def activation_sharding(kind: str, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, spec_for(ACTIVATION_RULES[kind], shape, mesh))


def state_shardings(state: nnx.State, mesh: Mesh) -> Any:
    """A pytree of NamedShardings matching an nnx state (of arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: param_sharding(path_str(p), x.shape, mesh), state)


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place every parameter of `model` by the rules (in place) and return it. Parameters already on
    `mesh` stay where they are (e.g. a trainer's arrays handed to the engine)."""
    state = nnx.state(model)
    on_mesh = all(isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh
                  for x in jax.tree.leaves(state))
    if not on_mesh:
        nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    return model


def sharded_fraction(tree: Any) -> tuple[int, int]:
    """(bytes of arrays split over more than one device, total bytes) of a pytree of jax.Arrays."""
    split = total = 0
    for x in jax.tree.leaves(tree):
        if not isinstance(x, jax.Array):
            continue
        total += x.nbytes
        if not x.sharding.is_fully_replicated:
            split += x.nbytes
    return split, total


def per_device_bytes(tree: Any) -> dict[jax.Device, int]:
    """Bytes each device holds of a pytree of jax.Arrays (its addressable shards)."""
    out: dict[jax.Device, int] = {}
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            for shard in x.addressable_shards:
                out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def _identity(xs):
    return xs


def to_host(x):
    """numpy copy of a device array, or of every array in a pytree (fetched in one batched transfer);
    globally sharded multi-process arrays are all-gathered first, all of them in one program (every
    process must call it)."""
    leaves, treedef = jax.tree.flatten(x)
    split = [i for i, a in enumerate(leaves) if isinstance(a, jax.Array) and not a.is_fully_addressable]
    if not split:
        return jax.tree.map(np.array, jax.device_get(x))
    if all(isinstance(leaves[i].sharding, NamedSharding) for i in split):
        replicated = tuple(leaves[i].sharding.update(spec=P()) for i in split)
        whole = jax.jit(_identity, out_shardings=replicated)(tuple(leaves[i] for i in split))
        gathered = [np.asarray(a.addressable_data(0)) for a in whole]
    else:
        from jax.experimental import multihost_utils
        gathered = [np.array(multihost_utils.process_allgather(leaves[i], tiled=True)) for i in split]
    rest = sorted(set(range(len(leaves))) - set(split))
    out = list(leaves)
    for i, a in zip(split + rest, gathered + list(jax.device_get([leaves[i] for i in rest]))):
        out[i] = np.array(a)
    return jax.tree.unflatten(treedef, out)

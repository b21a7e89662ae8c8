"""Hugging Face checkpoints: load into (sharded) NNX models one tensor at a time, and save back.

Only safetensors are read — parsed here from the file header and memory-mapped, so nothing is
unpickled, bfloat16 needs no torch, and each tensor is read straight into its (sharded) device array
without a full host copy of the model. Single files and sharded `model.safetensors.index.json`
checkpoints are accepted, in both key layouts:
  Qwen2.5-VL hub layout   visual.*, model.layers.*, model.embed_tokens.*, model.norm.*, lm_head.*
  transformers-5 layout   model.visual.*, model.language_model.*, lm_head.*
`save_pretrained` writes the layout of the architecture's official checkpoints (the first for 2.5-VL,
the second for Qwen3-VL) plus config.json, so transformers and vLLM load a model trained here; given the
image processor settings and sampling defaults, also preprocessor_config.json and generation_config.json.

Our decoder layers and vision blocks are stacked ([L, ...] per parameter, models/stack.py); the
checkpoint keeps one tensor per layer (`model.layers.{i}.…`, `visual.blocks.{i}.…`). Loading builds
each device's shard of a stacked parameter from just the layers and rows that shard holds.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import tqdm
from flax import nnx
from jax.sharding import Mesh

from hopchain_jax.models.config import QwenVLConfig
from hopchain_jax.models.image_processor import ImageProcessorConfig, save_preprocessor_config
from hopchain_jax.models.qwen_vl import QwenVL
from hopchain_jax.models.sharding import STACKED_PATH, param_sharding, path_str, to_host

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
SAFETENSORS_NAMES = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}   # numpy dtype -> header name


class SafetensorsFile:
    """Memory-mapped safetensors file: `.keys()`, `.get(name) -> np.ndarray` (a view, no copy)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100_000_000:
                raise ValueError(f"{self.path}: not a safetensors file (header length {n})")
            self.header = json.loads(f.read(n))
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.header.pop("__metadata__", None)
        self._base = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(self._mm, dtype=SAFETENSORS_DTYPES[info["dtype"]],
                            count=int(np.prod(info["shape"], dtype=np.int64)), offset=self._base + start)
        if arr.nbytes != end - start:
            raise ValueError(f"{self.path}: tensor {name} has inconsistent offsets")
        return arr.reshape(info["shape"])


def open_checkpoint(path: str | os.PathLike) -> dict[str, SafetensorsFile]:
    """Tensor name -> the file that holds it, for a checkpoint directory."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {f: SafetensorsFile(path / f) for f in sorted(set(weight_map.values()))}
        return {name: files[f] for name, f in weight_map.items()}
    singles = sorted(path.glob("*.safetensors"))
    if not singles:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        hint = " (found .bin/.pt files: convert them to safetensors first; pickles are never loaded)" if any(
            n.endswith((".bin", ".pt", ".pth")) for n in found) else ""
        raise FileNotFoundError(f"{path} holds no *.safetensors weights{hint}")
    out = {}
    for f in singles:
        st = SafetensorsFile(f)
        out.update({k: st for k in st.keys()})
    return out


# -- key mapping ---------------------------------------------------------------------------------------
def canonical_key(key: str) -> str:
    """Either hub layout -> the transformers-5 layout."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + key[len("model."):]
    return key


def is_stacked(path: tuple) -> bool:
    """True for a parameter with a leading layer axis (decoder layers, vision blocks)."""
    return bool(STACKED_PATH.search("/".join(str(p) for p in path)))


def hf_key_for(path: tuple, config: QwenVLConfig, layer: int | None = None) -> str:
    """Our parameter path (and, for a stacked parameter, the layer) -> the key in the architecture's
    official checkpoint layout."""
    parts = [str(p) for p in path]
    if layer is not None:
        at = parts.index("layers" if parts[0] == "language_model" else "blocks") + 1
        parts.insert(at, str(layer))
    if parts[0] == "lm_head":
        return "lm_head.weight"
    if parts[0] == "visual" and parts[1] == "merger" and parts[2] == "mlp":
        parts[3] = {"0": "0", "1": "2"}[parts[3]]  # torch Sequential(Linear, GELU, Linear)
    if parts[0] == "visual" and parts[1] == "patch_embed":
        parts = ["visual", "patch_embed", "proj", parts[2]]
    leaf = parts[-1]
    if leaf == "kernel":
        parts[-1] = "weight"
    if parts[:2] in (["visual", "pos_embed"], ["language_model", "embed_tokens"]):
        parts.append("weight")
    key = ".".join(parts)
    canonical = "model." + key
    if config.family.hub_layout == "flat":  # e.g. Qwen2.5-VL's hub checkpoints
        return canonical[len("model."):] if canonical.startswith("model.visual.") else \
            "model." + canonical[len("model.language_model."):]
    return canonical


def to_hf_array(path: tuple, value: np.ndarray, config: QwenVLConfig) -> np.ndarray:
    if str(path[-1]) != "kernel":
        return value
    if path[:2] == ("visual", "patch_embed"):
        v = config.vision
        return value.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return value.T


def from_hf_array(path: tuple, value: np.ndarray) -> np.ndarray:
    if str(path[-1]) != "kernel":
        return value
    if path[:2] == ("visual", "patch_embed"):
        return value.reshape(value.shape[0], -1).T
    return value.T


def _param_paths(state: nnx.State) -> Iterator[tuple[tuple, Any]]:
    for path, leaf in nnx.to_flat_state(state):
        yield tuple(getattr(p, "key", p) for p in path), leaf


def _hf_keys(path: tuple, shape: tuple, config: QwenVLConfig) -> list[str]:
    """The checkpoint keys of one parameter: one per layer for a stacked parameter."""
    if is_stacked(path):
        return [hf_key_for(path, config, i) for i in range(shape[0])]
    return [hf_key_for(path, config)]


def load_pretrained(path: str | os.PathLike, *, dtype=jnp.bfloat16, param_dtype=None, mesh: Mesh | None = None,
                    progress: bool = True, attention_impl: str = "flash") -> QwenVL:
    """Load a checkpoint directory into a QwenVL whose parameters are placed by the sharding rules.

    dtype: compute dtype; param_dtype: storage dtype of the weights (default: dtype; float32 for
    training, so the optimizer updates full-precision master weights)."""
    config = QwenVLConfig.from_pretrained_dir(path)
    files = {canonical_key(k): (k, f) for k, f in open_checkpoint(path).items()}
    model = nnx.eval_shape(lambda: QwenVL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0),
                                          attention_impl=attention_impl))
    graphdef, state = nnx.split(model)
    flat = list(_param_paths(state))
    keys_of = {p: [canonical_key(k) for k in _hf_keys(p, tuple(leaf.shape), config)] for p, leaf in flat}
    wanted = {k for ks in keys_of.values() for k in ks}
    missing = sorted(k for k in wanted if k not in files)
    unexpected = sorted(k for k in files if k not in wanted and not (k == "lm_head.weight" and config.tie_word_embeddings))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the {config.arch} config: "
                         f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    for p, var in tqdm.tqdm(flat, desc="load", unit="tensor", disable=not progress):
        stacked, shape = is_stacked(p), tuple(var.shape)
        per_layer = shape[1:] if stacked else shape
        tensors = []
        for key in keys_of[p]:
            name, file = files[key]
            host = from_hf_array(p, file.get(name))      # a view of the memory map, not a copy
            if tuple(host.shape) != per_layer:
                raise ValueError(f"{key}: checkpoint shape {tuple(host.shape)} != model shape {per_layer}")
            tensors.append(host)

        def read(index, tensors=tensors, stacked=stacked, dt=var.dtype):
            """The block `index` (a tuple of slices of the full shape) as a fresh array of the model dtype."""
            if not stacked:
                return np.asarray(tensors[0][index]).astype(dt)
            return np.stack([np.asarray(t[index[1:]]).astype(dt) for t in tensors[index[0]]])

        full = tuple(slice(None) for _ in shape)
        if mesh is None:
            var.set_value(jnp.asarray(read(full)))
        else:
            sharding = param_sharding(path_str(p), shape, mesh)
            var.set_value(jax.make_array_from_callback(shape, sharding, lambda idx, read=read: read(idx)))
    return nnx.merge(graphdef, state)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset = {}, 0
    for name, arr in tensors.items():
        header[name] = {"dtype": SAFETENSORS_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)


GENERATION_CONFIG_NAME = "generation_config.json"
_SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def _generation_dict(config: QwenVLConfig, sampling: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json's contents (see `save_generation_config`); raises on bad settings."""
    unknown = sorted(set(sampling) - set(_SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"save_generation_config: unknown sampling settings {unknown}; "
                        f"expected some of {list(_SAMPLING_KEYS)}")
    given = {k: v for k, v in sampling.items() if v is not None}
    temperature, top_p, top_k = given.get("temperature"), given.get("top_p"), given.get("top_k")
    if temperature is not None and not float(temperature) >= 0:
        raise ValueError(f"save_generation_config: temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_p is not None and not 0 < float(top_p) <= 1:
        raise ValueError(f"save_generation_config: top_p must be in (0, 1], got {top_p!r}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0):
        raise ValueError(f"save_generation_config: top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    out: dict[str, Any] = {}
    if config.bos_token_id is not None:
        out["bos_token_id"] = int(config.bos_token_id)
    if config.eos_ids:
        out["eos_token_id"] = [int(i) for i in config.eos_ids]
    if config.pad_token_id is not None:
        out["pad_token_id"] = int(config.pad_token_id)
    greedy = temperature is not None and float(temperature) == 0
    if greedy:
        if given.get("do_sample"):
            raise ValueError("save_generation_config: do_sample=True with temperature=0 (greedy) contradict")
        out["do_sample"] = False
    else:
        if "do_sample" in given:
            out["do_sample"] = bool(given["do_sample"])
        elif any(k in given for k in ("temperature", "top_p", "top_k")):
            out["do_sample"] = True
        if temperature is not None:
            out["temperature"] = float(temperature)
        if top_p is not None:
            out["top_p"] = float(top_p)
        if top_k is not None:
            out["top_k"] = int(top_k)
    if "repetition_penalty" in given:
        out["repetition_penalty"] = float(given["repetition_penalty"])
    if "max_new_tokens" in given:
        out["max_new_tokens"] = int(given["max_new_tokens"])
    return out


def _write_generation_config(path: Path, data: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    file = path / GENERATION_CONFIG_NAME
    file.write_text(json.dumps(data, indent=2) + "\n")
    return file


def save_generation_config(path: str | os.PathLike, config: QwenVLConfig, **sampling: Any) -> Path:
    """Write ``path/generation_config.json`` (what ``transformers.GenerationConfig.from_pretrained`` and vLLM
    read): the model's bos / pad ids, ``eos_token_id`` as the list ``config.eos_ids``, and the sampling
    defaults the caller passes (do_sample, temperature, top_p, top_k, repetition_penalty, max_new_tokens;
    None values are left out; other names raise TypeError).

    The sampling values follow hopchain's conventions (SamplingParams): temperature 0 is greedy, written as
    ``do_sample: false`` without temperature / top_p / top_k; otherwise ``do_sample`` defaults to true when
    any of temperature / top_p / top_k is given. Creates ``path`` if needed; returns the file's path.
    """
    return _write_generation_config(Path(path), _generation_dict(config, sampling))


def _check_processor(processor: ImageProcessorConfig, config: QwenVLConfig) -> None:
    """The image processor must cut patches the way the model's vision tower reads them."""
    if not isinstance(processor, ImageProcessorConfig):
        raise TypeError(f"save_pretrained: processor must be an ImageProcessorConfig, got {type(processor).__name__}")
    v = config.vision
    pairs = {"patch_size": (processor.patch_size, v.patch_size),
             "temporal_patch_size": (processor.temporal_patch_size, v.temporal_patch_size),
             "merge_size": (processor.merge_size, v.spatial_merge_size)}
    bad = {k: p for k, p in pairs.items() if p[0] != p[1]}
    if bad:
        raise ValueError("save_pretrained: the image processor does not match the model's vision config: " +
                         ", ".join(f"processor {k}={a} vs model {b}" for k, (a, b) in bad.items()))


def save_pretrained(model: QwenVL, path: str | os.PathLike, *, max_shard_bytes: int = 4 << 30,
                    dtype=None, processor: ImageProcessorConfig | None = None,
                    generation: dict[str, Any] | None = None) -> Path:
    """Write config.json + safetensors (sharded with an index past max_shard_bytes) in the official layout.

    processor: the image processor settings the model was trained with (e.g. the training max_pixels), written
    as preprocessor_config.json so transformers and `image_processor.from_pretrained_dir` use them instead of
    their defaults. generation: sampling defaults for generation_config.json (the keyword arguments of
    `save_generation_config`; ``{}`` writes just the special token ids). Neither file is written when None."""
    config = model.config
    if processor is not None:
        _check_processor(processor, config)
    gen_data = None
    if generation is not None:  # checked before any weight is gathered or written
        if not isinstance(generation, dict):
            raise TypeError(f"save_pretrained: generation must be a dict of sampling settings, got "
                            f"{type(generation).__name__}")
        gen_data = _generation_dict(config, generation)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    writer = jax.process_index() == 0  # every process joins the gathers; process 0 writes
    for p, var in _param_paths(nnx.state(model, nnx.Param)):
        value = var.get_value()
        layers = [(hf_key_for(p, config, i), value[i]) for i in range(value.shape[0])] if is_stacked(p) \
            else [(hf_key_for(p, config), value)]
        for key, part in layers:      # one layer at a time on the host
            arr = to_host(part)
            if dtype is not None:
                arr = arr.astype(dtype)
            arr = to_hf_array(p, arr, config)
            if size and size + arr.nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = arr
            size += arr.nbytes
    if not writer:
        return path
    if len(shards) == 1:
        _write_safetensors(path / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(path / name, shard)
            weight_map.update({k: name for k in shard})
        total = sum(a.nbytes for s in shards for a in s.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (path / "config.json").write_text(json.dumps(config.to_hf(), indent=1))
    if processor is not None:
        save_preprocessor_config(path, processor, arch=config.arch)
    if gen_data is not None:
        _write_generation_config(path, gen_data)
    return path

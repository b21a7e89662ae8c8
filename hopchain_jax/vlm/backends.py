"""Model specs on the command line -> chat backends.

A spec names one model for a stage:
  /path/to/checkpoint          a local Qwen2.5-VL / Qwen3-VL checkpoint directory, run on our JAX engine
  MODEL@URL                    MODEL served by an OpenAI-compatible endpoint, e.g.
                               Qwen/Qwen3-VL-235B-A22B-Thinking@http://localhost:8000/v1
The same spec given for several stages opens one backend (a checkpoint is loaded once).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # a type only: importing solvers loads grain and JAX, and the CLI's parser imports this
    from hopchain_jax.vlm.solvers import ChatBackend

SPEC_HELP = "a checkpoint directory (our JAX engine) or MODEL@URL (an OpenAI-compatible endpoint)"


def split_model_at_url(spec: str) -> tuple[str, str] | None:
    """(model, url) of a MODEL@URL spec (the URL has a scheme, e.g. http://); None for anything else (a path)."""
    if "@" in spec and "://" in spec.split("@", 1)[1]:
        model, url = spec.split("@", 1)
        return model, url
    return None


def describe_spec(spec: str, flag: str) -> tuple[str, str]:
    """("checkpoint", absolute dir) or ("endpoint", spec); ValueError naming `flag` and the fix otherwise."""
    endpoint = split_model_at_url(spec)
    if endpoint is not None:
        if not endpoint[0]:
            raise ValueError(f"{flag} {spec!r}: the model name before '@' is empty; write MODEL@URL")
        return "endpoint", spec
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{flag} {spec!r}: the directory has no config.json; give a Hugging Face checkpoint "
                             "directory (config.json + safetensors) or MODEL@URL")
        return "checkpoint", str(path.resolve())
    raise ValueError(f"{flag} {spec!r}: not a directory and not MODEL@URL; give {SPEC_HELP}")


def add_model_args(parser, *, local_prefix: str = "") -> None:
    """The flags that load a checkpoint on our engine: --dtype, --mesh, --decode-mesh, --max-pixels (the one
    definition `hopchain generate`, `serve`, `eval` and `calibrate` share). local_prefix: put before each help
    text where the model may also be an endpoint (e.g. "local checkpoint: "). engine_options(args) turns them
    into EngineChatBackend / BackendPool / Generator keyword arguments."""
    from hopchain_jax.models.config import DTYPE_NAMES   # no JAX import: the parser stays cheap
    parser.add_argument("--dtype", choices=list(DTYPE_NAMES),
                        help=f"{local_prefix}compute dtype (default: float32 on CPU, else bfloat16)")
    parser.add_argument("--mesh", help=f"{local_prefix}data,fsdp,tensor device counts (default: all devices on fsdp)")
    parser.add_argument("--decode-mesh", help=f"{local_prefix}data,fsdp,tensor device counts to decode on, the weights "
                        "resharded to it once (e.g. --decode-mesh=-1,1,1: a whole copy per device, no all-gather per "
                        "step; default: decode from --mesh)")
    parser.add_argument("--max-pixels", type=int, help=f"{local_prefix}cap on resized image pixels, fewer image "
                        "tokens (default: the checkpoint's preprocessor_config.json)")


def add_local_model_args(parser) -> None:
    """add_model_args for commands whose model may be a checkpoint or MODEL@URL (eval, calibrate)."""
    add_model_args(parser, local_prefix="local checkpoint: ")


def engine_options(args) -> dict:
    """EngineChatBackend / Generator keyword arguments from add_model_args' flags (ValueError naming a bad mesh)."""
    from hopchain_jax.models.sharding import parse_mesh_shape
    return {"dtype": args.dtype, "mesh_shape": parse_mesh_shape(args.mesh),
            "decode_mesh_shape": parse_mesh_shape(args.decode_mesh, "--decode-mesh"), "max_pixels": args.max_pixels}


class BackendPool:
    """Opens each distinct spec once. cache_dir: every backend's response cache lives under it (one
    sub-folder per model), so a rerun after a crash repeats no model call."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, **engine_options):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.engine_options = engine_options
        self._open: dict[str, ChatBackend] = {}

    def get(self, spec: str, flag: str) -> ChatBackend:
        kind, key = describe_spec(spec, flag)
        if key not in self._open:
            slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[-80:]
            cache = self.cache_dir / slug if self.cache_dir is not None else None
            if kind == "endpoint":
                from hopchain_jax.vlm.openai_backend import OpenAIChatBackend
                model, url = split_model_at_url(key)
                self._open[key] = OpenAIChatBackend(url, model, cache_dir=cache)
            else:
                from hopchain_jax.vlm.engine_backend import EngineChatBackend
                self._open[key] = EngineChatBackend(key, cache_dir=cache, **self.engine_options)
        return self._open[key]

"""Implementation selection shared by the kernels in this package.

``impl`` is one of:

* ``"reference"``        plain JAX that materialises the logits; obviously correct, used as the oracle.
* ``"chunked"``          XLA only: ``lax.scan`` over vocabulary chunks with a custom VJP (the baseline).
* ``"pallas"``           the Pallas kernels, compiled for the device (GPU: Triton lowering, see
                         :mod:`kernels.logprob`). On CPU this needs ``interpret=True``.
* ``"pallas_interpret"`` the Pallas kernels in interpret mode (runs anywhere, slow; for tests).
* ``"mosaic"``           Mosaic GPU kernels written for Hopper (wgmma + TMA; kernels that have one).
* ``"mosaic_interpret"`` those kernels in Mosaic GPU's CPU interpreter (for tests).
* ``"auto"``             on an accelerator the fastest kernel that passes a one-time probe (kernels
                         without a Mosaic GPU version use Pallas; falling back to ``"chunked"``),
                         Pallas interpret mode when ``interpret=True``, the reference otherwise (CPU).

"Fastest" is a measurement when one is recorded: ``kernels/tuned.json`` (or the file named by
``$HOPCHAIN_KERNELS_TUNED``) holds, per platform, device kind and dtype, the implementations
ordered by their measured time -- written by ``benchmarks/kernels.py --tuned-out FILE`` from the
cases that passed its on-device correctness check. :func:`tuned_order` reads it; without a record
for this device (or from another JAX minor version) ``"auto"`` keeps its built-in order.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

IMPLS = ("reference", "chunked", "pallas", "pallas_interpret", "mosaic", "mosaic_interpret", "auto")
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def current_platform() -> str:
    return jax.default_backend()


def resolve_impl(impl: str = "auto", interpret: bool | None = None,
                 platform: str | None = None) -> tuple[str, bool]:
    """Map the user-facing ``impl``/``interpret`` pair to ``(kind, interpret)``.

    ``kind`` is ``"reference"``, ``"chunked"``, ``"pallas"`` or ``"mosaic"``. ``"auto"`` on an
    accelerator returns ``"pallas"``; callers refine it (probe the kernels that work there, fall back
    to ``"chunked"``).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    platform = platform or current_platform()
    if impl == "pallas_interpret":
        return "pallas", True
    if impl == "pallas":
        if interpret:
            return "pallas", True
        if platform not in ACCELERATORS:
            raise ValueError(
                f"impl='pallas' cannot compile for platform {platform!r}: Pallas runs on CPU only in "
                "interpret mode; pass impl='pallas_interpret' or interpret=True (or use 'reference').")
        return "pallas", False
    if impl == "mosaic_interpret":
        return "mosaic", True
    if impl == "mosaic":
        if interpret:
            return "mosaic", True
        if platform not in ("gpu", "cuda"):
            raise ValueError(
                f"impl='mosaic' compiles for NVIDIA Hopper GPUs only, not platform {platform!r}; pass "
                "impl='mosaic_interpret' (CPU interpreter), 'chunked' or 'reference'.")
        return "mosaic", False
    if impl == "auto":
        if interpret:
            return "pallas", True
        if platform in ACCELERATORS:
            return "pallas", False
        return "reference", False
    return impl, False


# ------------------------------------------------------------------------------------------------
# Measured choice for impl="auto": kernels/tuned.json
# ------------------------------------------------------------------------------------------------

TUNED_ENV = "HOPCHAIN_KERNELS_TUNED"
TUNED_PATH = Path(__file__).with_name("tuned.json")
TUNED_KINDS = ("mosaic", "pallas", "chunked")   # what a record may rank (the reference never)


def tuned_path() -> Path:
    """The record file: ``$HOPCHAIN_KERNELS_TUNED`` when set, else ``kernels/tuned.json``."""
    return Path(os.environ.get(TUNED_ENV) or TUNED_PATH)


def tuned_key(platform: str, device_kind: str, dtype) -> str:
    """Record key, e.g. ``"gpu|NVIDIA H200|bfloat16"``."""
    return f"{platform}|{device_kind}|{jnp.dtype(dtype).name}"


def _minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


@functools.lru_cache(maxsize=8)
def _read_tuned(path: str, mtime_ns: int) -> dict:
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("records"), dict):
        raise ValueError(f"{path}: expected {{'records': {{key: record}}}}, got {type(data).__name__}")
    return data


def load_tuned(path: str | os.PathLike | None = None) -> dict:
    """The whole record file ({"version": 1, "records": {key: record}}); {} when absent."""
    p = Path(path) if path is not None else tuned_path()
    if not p.exists():
        return {}
    return _read_tuned(str(p), p.stat().st_mtime_ns)


def tuned_order(platform: str, device_kind: str, dtype,
                path: str | os.PathLike | None = None) -> tuple[str, ...] | None:
    """Implementations ("mosaic" | "pallas" | "chunked") fastest first, as measured on this platform,
    device kind and dtype by this JAX minor version; None when nothing applicable is recorded."""
    try:
        records = load_tuned(path).get("records", {})
    except (OSError, ValueError) as e:   # a broken record must not stop training: use the prior
        warnings.warn(f"ignoring the kernel record {path or tuned_path()}: {e}", RuntimeWarning,
                      stacklevel=2)
        return None
    rec = records.get(tuned_key(platform, device_kind, dtype))
    if not rec or _minor(rec.get("jax", "")) != _minor(jax.__version__):
        return None
    order = tuple(k for k in rec.get("order", ()) if k in TUNED_KINDS)
    return order or None


def record_tuned(path: str | os.PathLike, platform: str, device_kind: str, dtype,
                 ms: dict[str, float], **meta) -> dict:
    """Merge one measurement into the record file at ``path`` and return the new record.

    ms: milliseconds per implementation (kinds outside :data:`TUNED_KINDS` are ignored; only
    implementations that passed their correctness check should be passed). ``order`` is ``ms``
    sorted ascending; ``meta`` (shape, mode, ...) is stored alongside with the JAX version and date.
    """
    timings = {k: float(v) for k, v in ms.items() if k in TUNED_KINDS and v is not None}
    if not timings:
        raise ValueError(f"no timings of {TUNED_KINDS} to record (got {sorted(ms)})")
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    data.setdefault("version", 1)
    records = data.setdefault("records", {})
    rec = dict(order=sorted(timings, key=timings.get), ms=timings, jax=jax.__version__,
               date=datetime.date.today().isoformat(), **meta)
    records[tuned_key(platform, device_kind, dtype)] = rec
    p.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return rec

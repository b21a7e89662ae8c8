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
"""
from __future__ import annotations

import jax

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

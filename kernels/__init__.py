"""Fused LM-head kernels: per-token log-prob + entropy without logits, and the SAPO loss.

See kernels/logprob.py for the design (tiling, custom VJP, GPU lowering choice) and
kernels/sapo_loss.py for the loss. ``impl`` everywhere: "reference" | "chunked" | "pallas" |
"pallas_interpret" | "mosaic" | "mosaic_interpret" | "auto" (kernels/dispatch.py); the Mosaic GPU
(Hopper) kernels are in kernels/logprob_mosaic.py. kernels/fused_head.py forms the loss gradient
in the forward (3 matmuls, no logits recompute): ``sapo_loss_fused_forward``, ``ce_loss_fused_forward``.
"""
import sys as _sys

if __name__ == "kernels":   # reached by its folder name: the checkout's root is on sys.path
    # This folder is hopchain_jax.kernels. A bare `import kernels` (transformers >= 5.25 imports Hugging Face's
    # `kernels` package) must not get it: hand that import to the next `kernels` on sys.path.
    from hopchain_jax._shadow import import_past_checkout as _import_past_checkout
    _sys.modules[__name__] = _import_past_checkout(__name__, __file__)
else:
    from hopchain_jax.kernels.dispatch import IMPLS, resolve_impl
    from hopchain_jax.kernels.fused_head import ce_loss_fused_forward, sapo_loss_fused_forward
    from hopchain_jax.kernels.logprob import (DEFAULT_CONFIG, TPU_CONFIG, LogprobConfig, fused_logprob_entropy,
                                              logprob_entropy_chunked, logprob_entropy_mosaic,
                                              logprob_entropy_pallas,
                                              sharded_fused_logprob_entropy)
    from hopchain_jax.kernels.reference import logprob_entropy_reference, sapo_loss_reference
    from hopchain_jax.kernels.sapo_loss import (SapoConfig, sapo_loss, sapo_loss_and_stats, sapo_loss_fused,
                                                sapo_stats)

    __all__ = [
        "IMPLS", "resolve_impl", "LogprobConfig", "DEFAULT_CONFIG", "TPU_CONFIG",
        "fused_logprob_entropy", "logprob_entropy_chunked", "logprob_entropy_pallas",
        "logprob_entropy_mosaic",
        "logprob_entropy_reference", "sharded_fused_logprob_entropy",
        "SapoConfig", "sapo_loss", "sapo_loss_and_stats", "sapo_stats", "sapo_loss_fused",
        "sapo_loss_reference", "sapo_loss_fused_forward", "ce_loss_fused_forward",
    ]

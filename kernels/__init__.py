"""Fused LM-head kernels: per-token log-prob + entropy without logits, and the SAPO loss.

See kernels/logprob.py for the design (tiling, custom VJP, GPU lowering choice) and
kernels/sapo_loss.py for the loss. ``impl`` everywhere: "reference" | "chunked" | "pallas" |
"pallas_interpret" | "mosaic" | "mosaic_interpret" | "auto" (kernels/dispatch.py); the Mosaic GPU
(Hopper) kernels are in kernels/logprob_mosaic.py. kernels/fused_head.py forms the loss gradient
in the forward (3 matmuls, no logits recompute): ``sapo_loss_fused_forward``, ``ce_loss_fused_forward``.
"""
from kernels.dispatch import IMPLS, resolve_impl
from kernels.fused_head import ce_loss_fused_forward, sapo_loss_fused_forward
from kernels.logprob import (DEFAULT_CONFIG, TPU_CONFIG, LogprobConfig, fused_logprob_entropy,
                             logprob_entropy_chunked, logprob_entropy_mosaic,
                             logprob_entropy_pallas,
                             sharded_fused_logprob_entropy)
from kernels.reference import logprob_entropy_reference, sapo_loss_reference
from kernels.sapo_loss import (SapoConfig, sapo_loss, sapo_loss_and_stats, sapo_loss_fused,
                               sapo_stats)

__all__ = [
    "IMPLS", "resolve_impl", "LogprobConfig", "DEFAULT_CONFIG", "TPU_CONFIG",
    "fused_logprob_entropy", "logprob_entropy_chunked", "logprob_entropy_pallas",
    "logprob_entropy_mosaic",
    "logprob_entropy_reference", "sharded_fused_logprob_entropy",
    "SapoConfig", "sapo_loss", "sapo_loss_and_stats", "sapo_stats", "sapo_loss_fused",
    "sapo_loss_reference", "sapo_loss_fused_forward", "ce_loss_fused_forward",
]

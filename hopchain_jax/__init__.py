"""hopchain_jax: multi-hop VL RL data synthesis and training in JAX."""
__version__ = "0.1.0"

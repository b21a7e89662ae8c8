"""HopChain synthesis: the four stages, the chain composer, programs and records."""

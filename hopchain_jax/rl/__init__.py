"""SAPO RLVR and SFT training."""

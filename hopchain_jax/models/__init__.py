"""Qwen-VL model components (config, vision tower, LM), image preprocessing and tokenizer."""

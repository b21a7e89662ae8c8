"""Batched, sharded generation."""

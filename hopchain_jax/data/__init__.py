"""Datasets on disk: TensorStore shards, their Grain source, and JSONL export."""

"""Training metrics to JSON Lines and TensorBoard event files (process 0 only).

OUT/metrics.jsonl holds one object per step ({"step": k, ...}); OUT/tensorboard/ the same scalars. On
resume, lines past the restored step are dropped first, and the event file opened after a resume starts
with a purge event at the first step to redo, so both a killed-and-resumed run's log and its TensorBoard
curves read like an uninterrupted run's.

The training process never imports torch: tensorboardX imports it only to accept torch tensors (we log
Python floats), and torch's own CUDA libraries beside JAX's in one process is a version clash waiting to
happen, as well as 2+ s and a few hundred MB per process.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without importing torch when torch is not already loaded."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None   # `import torch` raises ImportError: tensorboardX falls back to numpy only
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends one JSON line and one TensorBoard scalar per metric per step, flushed every step.

    out_dir: the run's output folder; enabled: False on every process but 0 (then nothing is written).
    The event writer opens at the first write, so a resumed run's file carries the purge step.
    """

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb_dir = Path(out_dir) / "tensorboard"
        self.tb = None
        self._purge_step: int | None = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop logged steps > step (they belong to work a crash threw away), here and in TensorBoard."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else
                     (None if isinstance(v, float) else v)) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **clean}, sort_keys=True) + "\n")
        if self.tb is None:
            self.tb = _summary_writer_class()(str(self.tb_dir), purge_step=self._purge_step)
        for k, v in clean.items():
            if isinstance(v, float):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

"""Training metrics to JSON Lines and TensorBoard event files (process 0 only).

OUT/metrics.jsonl holds one object per step ({"step": k, ...}); OUT/tensorboard/ the same scalars. On
resume, lines past the restored step are dropped first, so a killed-and-resumed run's log reads like
an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


class MetricsWriter:
    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop logged steps > step (they belong to work a crash threw away)."""
        if not self.enabled or not self.path.exists():
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
        for k, v in clean.items():
            if isinstance(v, float):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

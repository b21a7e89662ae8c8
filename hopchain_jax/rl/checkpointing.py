"""Orbax checkpoints of a training run: parameters, optimizer state, the Grain data iterator, and the
run's counters (step, RNG seed, metrics position), saved asynchronously, keeping the newest N.

Layout: OUT/checkpoints/<step>/{params, opt_state, data, meta}. Orbax writes each step to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous step intact; a step
whose loss or gradients were not finite is never saved (the NaN guard skipped it, see update.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_iterator: Any, meta: dict) -> None:
        args = {"params": ocp.args.StandardSave(params), "opt_state": ocp.args.StandardSave(opt_state),
                "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**args))

    def restore(self, step: int, params_like: Any, opt_state_like: Any, data_iterator: Any) -> tuple[Any, Any, dict]:
        """Restore into arrays with the shardings of params_like / opt_state_like; the data iterator in place."""
        args = {"params": ocp.args.StandardRestore(_abstract(params_like)),
                "opt_state": ocp.args.StandardRestore(_abstract(opt_state_like)),
                "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        return out["params"], out["opt_state"], out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

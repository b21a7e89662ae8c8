"""A tiny random Qwen2.5-VL checkpoint (real Qwen tokenizer, so OpenAI messages tokenize for real), a
56x56 test image, and one EngineChatBackend over them, built once per test process.

The engine compiles its programs per instance, so test_engine_backend.py and test_serve.py share one
backend (and one checkpoint) instead of paying the load and the compiles twice.
"""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

_BUILT: dict = {}


def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint dir, a 56x56 RGB PNG): made with transformers like tests/test_generate_cli.py."""
    if "ckpt" not in _BUILT:
        from hopchain_jax.configs.models import PRESETS
        from hf_tiny import hf_model_from_config
        from hopchain_jax.models.tokenizer import load_tokenizer
        root = tmp_path_factory.mktemp("engine_tiny")
        hf_model_from_config(PRESETS["tiny"](), seed=3).save_pretrained(root / "tiny")
        load_tokenizer().save_pretrained(root / "tiny")
        image = root / "img.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(image)
        _BUILT["ckpt"] = (root / "tiny", image)
    return _BUILT["ckpt"]


def tiny_backend(tmp_path_factory):
    """The shared EngineChatBackend (model name "tiny") over tiny_checkpoint."""
    if "backend" not in _BUILT:
        from hopchain_jax.vlm.engine_backend import EngineChatBackend
        _BUILT["backend"] = EngineChatBackend(tiny_checkpoint(tmp_path_factory)[0], name="tiny")
    return _BUILT["backend"]


@contextlib.contextmanager
def live_server(app):
    """Serve a FastAPI app with uvicorn on a free localhost port in a background thread; yields the
    base URL ("http://127.0.0.1:PORT/v1") and stops the server on exit."""
    import portpicker
    import uvicorn
    port = portpicker.pick_unused_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        srv.should_exit = True
        thread.join(10)

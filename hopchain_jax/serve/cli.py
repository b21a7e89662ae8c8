"""`hopchain serve --model CKPT`: the OpenAI-compatible server on a checkpoint directory.

    hopchain serve --model Qwen2.5-VL-7B-Instruct/ --port 8000 --served-model-name qwen
    # then any OpenAI client: base_url="http://127.0.0.1:8000/v1"

add_serve_parser(subparsers) adds the subcommand to the `hopchain` parser; its fn returns the exit code
(2 with a message on stderr when the checkpoint cannot be loaded or the server cannot start).
"""
from __future__ import annotations

import argparse
import os
import sys


def add_serve_parser(subparsers) -> None:
    """Add `serve` to an argparse subparsers object (set_defaults(fn=serve_command))."""
    from hopchain_jax.vlm.backends import add_model_args
    s = subparsers.add_parser("serve", help="serve a checkpoint with an OpenAI-compatible chat-completions API")
    s.add_argument("--model", required=True, help="Hugging Face checkpoint directory (config.json + safetensors)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", help="the name clients send as `model` (default: the directory's name)")
    add_model_args(s)
    s.add_argument("--max-slots", type=int, default=256, help="sequences decoded at once (default 256)")
    s.add_argument("--max-batch", type=int, default=64, help="most requests per engine batch (default 64)")
    s.add_argument("--batch-window-ms", type=float, default=5,
                   help="how long to wait for more requests before running a batch (default 5 ms)")
    s.add_argument("--default-max-tokens", type=int, default=1024,
                   help="completion limit for requests that set no max_tokens (default 1024)")
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(fn=serve_command)


def _fail(message: str) -> int:
    print(f"hopchain serve: {message}", file=sys.stderr)
    return 2


def serve_command(args: argparse.Namespace) -> int:
    """Load the checkpoint, print the URL and model name, serve until interrupted."""
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        what = "does not exist" if not os.path.exists(args.model) else "has no config.json"
        return _fail(f"checkpoint directory {args.model!r} {what}: pass --model a Hugging Face checkpoint "
                     "folder (config.json + *.safetensors + tokenizer files)")
    try:   # before anything imports JAX: the missing-package error comes at once
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        return _fail(f"serving needs fastapi and uvicorn ({e}): pip install fastapi uvicorn")
    from hopchain_jax.vlm.backends import engine_options
    try:
        options = engine_options(args)
    except ValueError as e:
        return _fail(str(e))
    from hopchain_jax.serve.app import build_app
    from hopchain_jax.vlm import engine_backend
    try:
        backend = engine_backend.EngineChatBackend(args.model, **options, max_slots=args.max_slots,
                                                   name=args.served_model_name)
    except (ValueError, OSError) as e:
        return _fail(f"cannot load {args.model!r}: {e}")
    app = build_app(backend, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                    default_max_tokens=args.default_max_tokens)
    print(f"hopchain serve: model {backend.model!r} at http://{args.host}:{args.port}/v1 "
          "(POST /v1/chat/completions, GET /v1/models, GET /health)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    except SystemExit as e:  # uvicorn exits when it cannot bind
        return _fail(f"could not serve on {args.host}:{args.port} (exit {e.code}): is the port in use? "
                     "pick another with --port")
    return 0

"""`hopchain serve`: an OpenAI-compatible chat-completions server over the JAX engine.

  batcher.py   one worker thread owns the backend: concurrent requests are collected for a few ms and
               run as one backend.complete call (one engine.generate, each request with its own settings)
  protocol.py  the OpenAI chat-completions request checks (HTTP 400 bodies naming the field and the fix)
               and response format; no web framework needed
  app.py       build_app(backend): the FastAPI app (POST /v1/chat/completions, GET /v1/models, GET /health)
  cli.py       add_serve_parser(subparsers): the `serve` subcommand (loads EngineChatBackend, runs uvicorn)

fastapi and uvicorn are imported only when an app is built or served, so `import hopchain_jax` (and the
CLI's parser) never needs them.
"""


def __getattr__(name):
    if name == "build_app":
        from hopchain_jax.serve.app import build_app
        return build_app
    raise AttributeError(f"module 'hopchain_jax.serve' has no attribute {name!r}")

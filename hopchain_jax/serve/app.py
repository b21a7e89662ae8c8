"""The FastAPI app of `hopchain serve`: OpenAI chat completions over any ChatBackend.

    app = build_app(EngineChatBackend("ckpt/"))          # then: uvicorn.run(app, port=8000)
    openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x").chat.completions.create(...)

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health. Handlers never touch the backend: they
check the body (protocol.py), queue a ChatRequest on the Batcher and await its future, so concurrent
requests share backend.complete calls. Refused requests and per-item backend errors (bad image, prompt
over the token budget) answer HTTP 400 with an OpenAI error body; unknown paths 404; a backend crash 500.
"""
import asyncio  # no `from __future__ import annotations`: FastAPI reads the handlers' annotations
import contextlib
import time

from hopchain_jax.serve.batcher import Batcher
from hopchain_jax.serve.protocol import RequestError, chat_completion, item_error, model_list, parse_chat_request


def build_app(backend, *, max_batch: int = 64, batch_window_ms: float = 5, default_max_tokens: int = 1024):
    """The app serving `backend` (a ChatBackend: `model`, `complete`; optional `max_length` in tokens).

    max_batch: most requests per backend.complete call; batch_window_ms: how long the batcher waits for
    more requests after the first; default_max_tokens: completion limit when a request sets none.
    app.state.batcher counts the calls (calls, batch_sizes)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    batcher = Batcher(backend, max_batch=max_batch, window_s=batch_window_ms / 1000)
    created = int(time.time())
    max_length = getattr(backend, "max_length", None)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="hopchain serve", lifespan=lifespan)
    app.state.batcher, app.state.backend = batcher, backend

    def error(e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestError)
    async def _refused(_request, e: RequestError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def _http(_request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(RequestError(f"{e.detail}: this server has POST /v1/chat/completions, GET /v1/models and "
                                  "GET /health", status=e.status_code, type=kind))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, e: RequestValidationError):
        return error(RequestError(f"invalid request: {e.errors()}"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise RequestError("the request body is not valid JSON: send a JSON object with 'model' and "
                               "'messages'") from None
        chat = parse_chat_request(body, backend.model, max_length=max_length, default_max_tokens=default_max_tokens)
        try:
            result = await asyncio.wrap_future(batcher.submit(chat))
        except Exception as e:  # noqa: BLE001 - the backend itself failed: a server error, not the caller's
            return error(RequestError(f"the backend failed: {type(e).__name__}: {e}", status=500,
                                      type="server_error"))
        if result.error is not None:
            raise item_error(result.error)
        return chat_completion(result, backend.model)

    @app.get("/v1/models")
    async def models():
        return model_list(backend.model, created)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": backend.model, "backend_calls": batcher.calls}

    return app

"""The OpenAI chat-completions wire format: request checks and response bodies (no web framework).

parse_chat_request(body, ...) turns a POST /v1/chat/completions JSON body into a ChatRequest or raises
RequestError, whose `body()` is the OpenAI error object {"error": {"message", "type", "param", "code"}}
sent with HTTP 400; its message names the field and the fix. chat_completion(result, model) is the
"chat.completion" response for a ChatResult.

Sampling: without `seed`, every request gets a fresh random salt (new samples each call, as with
OpenAI); with `seed`, the salt is the seed, so the same request gives the same samples whatever it is
batched with (see vlm/engine_backend.py). Greedy (temperature 0) is deterministic either way.
"""
from __future__ import annotations

import dataclasses
import time
import uuid

from hopchain_jax.vlm.chat import ChatRequest, ChatResult

MAX_N = 1024  # samples per request
# fields whose non-default values change what the caller gets, and that this server does not implement
UNSUPPORTED = {"tools": None, "functions": None, "tool_choice": None, "function_call": None, "logprobs": False,
               "top_logprobs": None, "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0,
               "audio": None, "prediction": None}


@dataclasses.dataclass
class RequestError(Exception):
    """A request this server refuses: HTTP `status` with an OpenAI-style error body."""

    message: str
    param: str | None = None
    code: str | None = None
    status: int = 400
    type: str = "invalid_request_error"

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _get(body: dict, name: str, default):
    """body[name], or default when absent or null (OpenAI clients send null for "not given")."""
    value = body.get(name)
    return default if value is None else value


def _max_tokens(body: dict, max_length: int | None, default: int) -> int:
    given = {k: body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    if len(set(map(repr, given.values()))) > 1:
        raise RequestError(f"max_tokens={given['max_tokens']!r} and max_completion_tokens="
                           f"{given['max_completion_tokens']!r} disagree: send only one of them", "max_tokens")
    if not given:
        return default if max_length is None else max(1, min(default, max_length - 1))
    name, value = next(iter(given.items()))
    if not _is_int(value) or value < 1:
        raise RequestError(f"{name}={value!r}: send a whole number of tokens >= 1", name)
    if max_length is not None and value >= max_length:
        raise RequestError(f"{name}={value} does not fit the model's context of {max_length} tokens (prompt "
                           f"included): ask for fewer than {max_length} tokens", name)
    return value


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"stop={value!r}: send a non-empty string or a list of non-empty strings", "stop")
    return tuple(stops)


def parse_chat_request(body, served_model: str, *, max_length: int | None = None,
                       default_max_tokens: int = 1024) -> ChatRequest:
    """A ChatRequest for a chat-completions body; RequestError (HTTP 400) for anything this server cannot
    honour. max_length: the model's context in tokens; default_max_tokens: when the body sets none."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object with 'model' and 'messages'")
    model = body.get("model")
    if model != served_model:
        raise RequestError(f"model {model!r} is not served here: set model to {served_model!r} "
                           "(GET /v1/models lists it)", "model", "model_not_found")
    if body.get("stream"):
        raise RequestError("streaming is not supported by this server: send stream=false (or leave it out) "
                           "and read the whole response", "stream")
    for name, default in UNSUPPORTED.items():
        if body.get(name) not in (default, None, [], {}):
            raise RequestError(f"{name} is not supported by this server: leave it out", name)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise RequestError("response_format is not supported by this server: leave it out (plain text only)",
                           "response_format")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError("messages must be a non-empty list of {'role', 'content'} objects", "messages")
    n = _get(body, "n", 1)
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise RequestError(f"n={n!r}: ask for between 1 and {MAX_N} samples", "n")
    temperature = _get(body, "temperature", 1.0)
    if not _is_number(temperature) or temperature < 0:
        raise RequestError(f"temperature={temperature!r}: send a number >= 0 (0 = greedy)", "temperature")
    top_p = _get(body, "top_p", 1.0)
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise RequestError(f"top_p={top_p!r}: send a number in (0, 1]", "top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise RequestError(f"seed={seed!r}: send a whole number (or leave it out for fresh samples)", "seed")
    return ChatRequest(messages=messages, n=n, temperature=float(temperature), top_p=float(top_p),
                       max_tokens=_max_tokens(body, max_length, default_max_tokens), stop=_stop(body.get("stop")),
                       salt=f"seed={seed}" if seed is not None else f"nonce={uuid.uuid4().hex}")


def item_error(message: str) -> RequestError:
    """The 400 for a request the backend could not run (bad image, prompt over the budget, ...)."""
    return RequestError(message, "max_tokens" if "max_tokens" in message else "messages")


def chat_completion(result: ChatResult, model: str) -> dict:
    """The "chat.completion" response body of a successful ChatResult."""
    usage = {k: int(result.usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None, "usage": usage,
            "choices": [{"index": k, "message": {"role": "assistant", "content": text},
                         "finish_reason": reason, "logprobs": None}
                        for k, (text, reason) in enumerate(zip(result.texts, result.finish_reasons))]}


def model_list(model: str, created: int) -> dict:
    """GET /v1/models: the one served model."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "hopchain"}]}

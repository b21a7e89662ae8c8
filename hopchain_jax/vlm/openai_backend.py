"""A VLM behind any OpenAI-compatible chat-completions endpoint (vLLM, sglang, a hosted API).

    backend = OpenAIChatBackend("http://localhost:8000/v1", model="Qwen/Qwen3-VL-235B-A22B-Thinking",
                                cache_dir="runs/vlm-cache")
    results = backend.complete([ChatRequest([user_message("List the objects.", images=[img])], n=4)])

Requests run concurrently (`max_concurrency` threads), each with its own timeout. Connection errors,
timeouts, 429 and 5xx responses are retried with exponential backoff and jitter; other errors (400 bad
request, 401, ...) fail that item at once. Every failure is reported on its item (`ChatResult.error`,
with `transient` set when it was one of the retried kinds: a caller retries such items later instead of
rejecting them), never raised, so one bad request cannot stop a batch. `probe(max_tokens)` checks the
endpoint, the model name and the answer budget with one call before a run. With `cache_dir`, every successful response is
stored before it is returned: a rerun after a crash (or a kill -9) repeats no call that completed.
"""
from __future__ import annotations

import concurrent.futures
import os
import random
import re
import threading
import time
from typing import Sequence

from hopchain_jax.vlm.cache import ResponseCache, request_key
from hopchain_jax.vlm.chat import ChatRequest, ChatResult, image_part, user_message  # noqa: F401  (re-exported)


class OpenAIChatBackend:
    """Batched chat completions against one endpoint and model, with cache, retries and timeouts."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, cache_dir: str | os.PathLike | None = None,
                 max_concurrency: int = 8, max_retries: int = 5, timeout_s: float = 120.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0):
        import openai  # the official client; imported here so the procedural path never needs it
        self._openai = openai
        self.base_url, self.model = base_url.rstrip("/"), model
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                    timeout=timeout_s, max_retries=0)  # retries are ours: backoff + accounting
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.max_concurrency, self.max_retries = max(1, max_concurrency), max(0, max_retries)
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.calls = 0  # HTTP calls made by this instance (cache hits make none)
        self._lock = threading.Lock()

    @staticmethod
    def _seed(req: ChatRequest, key: str) -> dict:
        """A sampled request's own seed, from its cache key (so from its salt): reproducible, and different
        for each independent sample (solvers.AgreementVerifier's "solver-sample-k"). Not part of the key."""
        return {"seed": int(key[:8], 16) & 0x7FFFFFFF} if req.temperature > 0 else {}

    def _payload(self, req: ChatRequest) -> dict:
        payload = {"model": self.model, "messages": req.messages, "n": req.n, "temperature": req.temperature,
                   "top_p": req.top_p, "max_tokens": req.max_tokens}
        if req.stop:
            payload["stop"] = list(req.stop)
        return payload

    def _retryable(self, err: Exception) -> bool:
        o = self._openai
        if isinstance(err, (o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True  # APITimeoutError is an APIConnectionError
        return isinstance(err, o.APIStatusError) and err.status_code in (408, 409)

    def _one(self, req: ChatRequest, max_retries: int | None = None) -> ChatResult:
        payload = self._payload(req)
        key = request_key({"base_url": self.base_url, "payload": payload, "salt": req.salt})
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return ChatResult(hit["texts"], hit["finish_reasons"], hit["usage"], cached=True)
        attempts = 0
        while True:
            attempts += 1
            with self._lock:
                self.calls += 1
            try:
                resp = self.client.chat.completions.create(**payload, **self._seed(req, key))
            except Exception as err:  # noqa: BLE001 - every failure becomes the item's error
                if self._retryable(err) and attempts <= (self.max_retries if max_retries is None else max_retries):
                    delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    continue
                return ChatResult([], [], {}, attempts=attempts, error=f"{type(err).__name__}: {err}",
                                  transient=self._retryable(err))
            choices = sorted(resp.choices, key=lambda c: c.index)
            texts = [c.message.content or "" for c in choices]
            usage = resp.usage.model_dump() if resp.usage is not None else {}
            value = {"texts": texts, "finish_reasons": [str(c.finish_reason) for c in choices], "usage": usage}
            if len(texts) != req.n:
                return ChatResult(texts, value["finish_reasons"], usage, attempts=attempts,
                                  error=f"asked for {req.n} samples, the endpoint returned {len(texts)}")
            if self.cache is not None:
                self.cache.put(key, value)
            return ChatResult(texts, value["finish_reasons"], usage, attempts=attempts)

    def probe(self, max_tokens: int) -> str | None:
        """One small call with a stage's answer budget before a run, so that what would fail every call is
        found first: None when the endpoint answers, else the problem and its fix (an unreachable endpoint,
        a model it does not serve, a max_tokens its context cannot hold). A success is cached like any
        response, so a rerun's probe calls nothing; at most 2 retries."""
        res = self._one(ChatRequest([user_message("Reply with the word OK.")], max_tokens=max_tokens, salt="probe"),
                        max_retries=min(self.max_retries, 2))   # a check, not work: ~3 s of backoff at most
        if res.error is None:
            return None
        where = f"{self.model}@{self.base_url}"
        if res.transient and res.error.startswith(("APIConnectionError", "APITimeoutError")):
            return (f"{where} cannot be reached ({res.error}): start the server or fix the URL, then rerun the same "
                    "command")
        if res.transient:
            return (f"{where} answers with an error ({res.error}): the server is up but failing; check its log, "
                    "then rerun the same command")
        if res.error.startswith("NotFoundError"):
            return (f"{where}: the endpoint does not serve the model {self.model!r} ({res.error}); give the name it "
                    f"serves before '@' (GET {self.base_url}/models lists them)")
        if res.error.startswith("BadRequestError") and re.search(r"max_tokens|context|length", res.error, re.I):
            return (f"{where} refuses max_tokens={max_tokens} ({res.error}): lower --max-tokens, or serve the "
                    "model with a longer context (e.g. vLLM --max-model-len)")
        return f"{where} refused a probe request ({res.error}); fix the endpoint or the model flags, then rerun"

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Results in the order of `requests`; failures are reported per item, never raised."""
        if not requests:
            return []
        with concurrent.futures.ThreadPoolExecutor(min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

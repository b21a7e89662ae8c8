"""Micro-batching: many threads submit chat requests, one worker thread runs them in batches.

    batcher = Batcher(backend, max_batch=64, window_s=0.005)
    result = batcher.submit(chat_request).result()     # a concurrent.futures.Future[ChatResult]

The worker takes the first waiting request, keeps collecting for up to `window_s` seconds (or until
`max_batch` requests), then calls backend.complete once on the lot. Requests that arrive while a batch
runs wait in the queue and form the next batch, so under load batches grow by themselves. Only the
worker thread touches the backend (the engine is not thread-safe).
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from typing import Sequence

from hopchain_jax.vlm.chat import ChatRequest, ChatResult

_STOP = object()


class Batcher:
    """backend: a ChatBackend (complete(requests) -> results). calls: backend.complete calls made;
    batch_sizes: requests per call, in order."""

    def __init__(self, backend, max_batch: int = 64, window_s: float = 0.005):
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1 and window_s={window_s} >= 0")
        self.backend, self.max_batch, self.window_s = backend, int(max_batch), float(window_s)
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hopchain-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest) -> concurrent.futures.Future:
        """Queue one request; the future holds its ChatResult (or the exception backend.complete raised)."""
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((request, future))
        return future

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in progress and stop the worker; requests still queued are cancelled."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[1].cancel()

    def _collect(self, first) -> tuple[list, bool]:
        """The batch started by `first`, and whether a stop was seen."""
        batch, deadline = [first], time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            self._serve([(r, f) for r, f in batch if f.set_running_or_notify_cancel()])  # drop cancelled ones

    def _serve(self, live: Sequence[tuple[ChatRequest, concurrent.futures.Future]]) -> None:
        if not live:
            return
        self.calls += 1
        self.batch_sizes.append(len(live))
        try:
            results: list[ChatResult] = self.backend.complete([r for r, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"the backend returned {len(results)} results for {len(live)} requests")
        except Exception as e:  # noqa: BLE001 - the waiting requests get the error, the worker lives on
            for _, f in live:
                f.set_exception(e)
            return
        for (_, f), result in zip(live, results):
            f.set_result(result)

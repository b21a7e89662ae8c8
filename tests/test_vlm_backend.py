"""The OpenAI-compatible VLM backend against a live local HTTP server, and stage-1 output parsing."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from hopchain_jax.vlm.openai_backend import ChatRequest, OpenAIChatBackend, user_message
from hopchain_jax.vlm.parse import parse_categories


class FakeEndpoint:
    """/v1/chat/completions that answers with the request's text reversed, sample k suffixed with k.

    script: per-call behaviour consumed in order ("500", "429", "400", "404", "slow", or None for normal;
    "400:message" sends that error message)."""

    def __init__(self):
        self.calls, self.script, self.bodies = 0, [], []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.calls += 1
                    outer.bodies.append(body)
                    action = outer.script.pop(0) if outer.script else None
                if action and action.split(":")[0] in ("500", "429", "400", "404"):
                    code, _, message = action.partition(":")
                    self.send_response(int(code))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": message or f"scripted {code}"}}).encode())
                    return
                if action == "slow":
                    time.sleep(1.5)
                text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
                n = body.get("n", 1)
                resp = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": k, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text[::-1] + f"#{k}"}}
                                    for k in reversed(range(n))],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n, "total_tokens": 7 + 3 * n}}
                data = json.dumps(resp).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out first (the "slow" case)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def endpoint():
    ep = FakeEndpoint()
    yield ep
    ep.server.shutdown()


def backend(ep, tmp_path, **kw):
    kw = {"cache_dir": tmp_path / "cache", "backoff_s": 0.01, "timeout_s": 5.0, **kw}
    return OpenAIChatBackend(ep.url, model="tiny-vlm", **kw)


def test_batch_in_order_with_samples_images_and_usage(endpoint, tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    reqs = [ChatRequest([user_message(f"question {k}", images=[image])], n=2, temperature=1.0) for k in range(5)]
    results = backend(endpoint, tmp_path).complete(reqs)
    assert [r.texts for r in results] == [[f"{k} noitseuq#0", f"{k} noitseuq#1"] for k in range(5)]
    assert all(r.error is None and r.usage["completion_tokens"] == 6 and not r.cached for r in results)
    first = endpoint.bodies[0]["messages"][0]["content"][0]
    assert first["type"] == "image_url" and first["image_url"]["url"].startswith("data:image/png;base64,")
    # a sampled request carries its own seed, from its key: each independent sample (salt) its own
    b = backend(endpoint, tmp_path, max_concurrency=1)
    b.complete([ChatRequest([user_message("s")], temperature=0.6, salt=f"solver-sample-{k}") for k in range(3)]
               + [ChatRequest([user_message("greedy")])])
    seeds = [body.get("seed") for body in endpoint.bodies[-4:]]
    assert len(set(seeds[:3])) == 3 and None not in seeds[:3] and seeds[3] is None


def test_a_rerun_repeats_no_completed_call(endpoint, tmp_path):
    reqs = [ChatRequest([user_message(f"q{k}")]) for k in range(4)]
    backend(endpoint, tmp_path).complete(reqs)
    assert endpoint.calls == 4
    again = backend(endpoint, tmp_path)  # a new process after a crash: same cache folder
    results = again.complete(reqs + [ChatRequest([user_message("new")])])
    assert again.calls == 1 and endpoint.calls == 5
    assert [r.cached for r in results] == [True] * 4 + [False]
    # the salt (e.g. a sampling round) makes a separate entry
    assert again.complete([ChatRequest([user_message("q0")], salt="round 2")])[0].cached is False


def test_transient_errors_are_retried_and_client_errors_are_not(endpoint, tmp_path):
    endpoint.script = ["500", "429"]
    result = backend(endpoint, tmp_path).complete([ChatRequest([user_message("hello")])])[0]
    assert result.error is None and result.attempts == 3 and result.texts == ["olleh#0"]
    endpoint.script = ["400"]
    result = backend(endpoint, tmp_path).complete([ChatRequest([user_message("bad")])])[0]
    assert result.attempts == 1 and result.texts == [] and "BadRequestError" in result.error


def test_failures_are_per_item_and_never_cached(endpoint, tmp_path):
    endpoint.script = ["500"] * 3
    b = backend(endpoint, tmp_path, max_retries=2, max_concurrency=1)
    results = b.complete([ChatRequest([user_message("a")]), ChatRequest([user_message("b")])])
    assert "InternalServerError" in results[0].error and results[0].attempts == 3
    assert results[1].error is None and results[1].texts == ["b#0"]
    assert b.complete([ChatRequest([user_message("a")])])[0].cached is False  # the failure was not stored


def test_timeouts_are_retried_then_reported(endpoint, tmp_path):
    endpoint.script = ["slow", "slow"]
    result = backend(endpoint, tmp_path, timeout_s=0.5, max_retries=1).complete([ChatRequest([user_message("x")])])[0]
    assert result.attempts == 2 and "Timeout" in result.error and result.transient


def test_errors_say_whether_a_later_retry_may_succeed(endpoint, tmp_path):
    endpoint.script = ["500", "500", "400"]
    b = backend(endpoint, tmp_path, max_retries=1, max_concurrency=1)
    down, bad = b.complete([ChatRequest([user_message("a")]), ChatRequest([user_message("b")])])
    assert "InternalServerError" in down.error and down.transient        # 5xx outlasted its retries
    assert "BadRequestError" in bad.error and not bad.transient           # the request itself is wrong
    assert b.complete([ChatRequest([user_message("ok")])])[0].transient is False


def test_the_probe_names_what_would_fail_every_call_and_its_fix(endpoint, tmp_path):
    b = backend(endpoint, tmp_path, max_retries=0)
    endpoint.script = ["400:max_tokens=4096 does not fit the model's context of 4096 tokens"]
    problem = b.probe(4096)
    assert "lower --max-tokens" in problem and "4096 does not fit the model's context" in problem
    endpoint.script = ["404:The model `tiny-vlm` does not exist."]
    assert "does not serve the model 'tiny-vlm'" in b.probe(64)
    assert b.probe(64) is None and endpoint.calls == 3                   # the endpoint answers: no problem
    calls = endpoint.calls
    assert backend(endpoint, tmp_path).probe(64) is None and endpoint.calls == calls   # a rerun's probe is cached
    import portpicker
    gone = OpenAIChatBackend(f"http://127.0.0.1:{portpicker.pick_unused_port()}/v1", model="m", max_retries=0,
                             timeout_s=2.0)
    assert "cannot be reached" in gone.probe(64) and "start the server or fix the URL" in gone.probe(64)


@pytest.mark.parametrize("text, expected", [
    ('["dog", "cats", "Traffic Lights", "dog"]', ["dog", "cat", "traffic light"]),
    ('Here you go:\n```json\n["ladybugs", "dice", "glasses"]\n```\nLet me know!', ["ladybug", "die", "glass"]),
    ('<think>maybe [1, 2]</think>{"categories": [{"category": "Buses"}, {"name": "boxes"}]} done.', ["bus", "box"]),
    ('The objects are ["bench", "leaves", "berries", "houses"] and that is all.', ["bench", "leaf", "berry", "house"]),
])
def test_category_lists_are_found_and_normalised(text, expected):
    parsed = parse_categories(text)
    assert parsed.problem is None and parsed.categories == expected


@pytest.mark.parametrize("text, problem", [
    ("", "empty output"),
    ("I see a dog and a cat.", "no JSON list"),
    ('{"answer": 3}', "no JSON list"),
    ("[]", "empty"),
    ('["dog", 3]', "no JSON list"),
])
def test_unreadable_output_gives_a_reason(text, problem):
    parsed = parse_categories(text)
    assert parsed.categories == [] and problem in parsed.problem


def test_the_cache_takes_one_key_from_many_threads_at_once(tmp_path):
    """Two identical requests in one batch (the same question drafted twice) store one key from two pool
    threads at the same time: each writes its own temp file, and the entry ends complete."""
    import concurrent.futures

    from hopchain_jax.vlm.cache import ResponseCache
    cache = ResponseCache(tmp_path / "cache")
    value = {"texts": ["x" * 20_000], "finish_reasons": ["stop"], "usage": {}}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: cache.put("ab" * 32, value), range(200)))   # raised FileNotFoundError before
    assert cache.get("ab" * 32) == value and len(cache) == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))

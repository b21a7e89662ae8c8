"""`hopchain serve` end to end: the official openai client against a live uvicorn server over the JAX engine
(tiny random checkpoint): images, n, stop, usage, /v1/models, batching of concurrent requests, greedy parity
with Generator, and the 400s."""
import argparse
import concurrent.futures
import threading
import time
import urllib.error
import urllib.request

import json
import numpy as np
import openai
import pytest
import uvicorn
from PIL import Image

from engine_tiny import live_server, tiny_backend, tiny_checkpoint
from hopchain_jax.serve.app import build_app
from hopchain_jax.serve.cli import add_serve_parser
from hopchain_jax.vlm.chat import image_part


class CountingBackend:
    """The shared EngineChatBackend with a count of complete() calls; complete() waits while `gate` is clear."""

    def __init__(self, inner):
        self.inner, self.model, self.max_length = inner, inner.model, inner.max_length
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def complete(self, requests):
        self.sizes.append(len(requests))
        self.gate.wait(60)
        return self.inner.complete(requests)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = CountingBackend(tiny_backend(tmp_path_factory))
    app = build_app(backend, max_batch=16, batch_window_ms=5)
    with live_server(app) as url:
        yield backend, app, url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[2], api_key="x", max_retries=0, timeout=120)


def http(url, data: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET (or a POST of `data` as JSON) with the standard library."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def user(text, *images):
    return [{"role": "user", "content": [*(image_part(im) if isinstance(im, np.ndarray) else
                                           {"type": "image_url", "image_url": {"url": str(im)}} for im in images),
                                         {"type": "text", "text": text}]}]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    status, health = http(server[2].removesuffix("/v1") + "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"


def test_greedy_through_the_server_equals_generator(server, client, ckpt):
    _, image = ckpt
    resp = client.chat.completions.create(model="tiny", messages=user("How many dots?", image),  # a local path
                                          temperature=0, max_tokens=8)
    ref = server[0].inner.generator("How many dots?", [image], greedy=True, max_new_tokens=8)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.model == "tiny"
    assert [c.index for c in resp.choices] == [0] and resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == ref["text"]
    assert resp.choices[0].finish_reason == ("length" if len(ref["output_ids"]) == 8 else "stop")
    assert resp.usage.prompt_tokens == len(ref["input_ids"])
    assert resp.usage.completion_tokens == len(ref["output_ids"])
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_n_samples_with_a_data_url_image_and_usage(client, ckpt):
    img = np.asarray(Image.open(ckpt[1]))
    kw = dict(model="tiny", messages=user("Describe the image.", img), n=3, temperature=1.0, max_tokens=6, seed=11)
    resp = client.chat.completions.create(**kw)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    texts = [c.message.content for c in resp.choices]
    assert len(set(texts)) > 1 and all(c.finish_reason in ("stop", "length") for c in resp.choices)
    assert 3 <= resp.usage.completion_tokens <= 18 and resp.usage.prompt_tokens > 4  # 4 image tokens + text
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert [c.message.content for c in client.chat.completions.create(**kw).choices] == texts  # same seed
    fresh = client.chat.completions.create(**{**kw, "seed": None})  # no seed: new samples
    assert [c.message.content for c in fresh.choices] != texts


def test_stop_strings_cut_the_text(client, ckpt):
    msgs = user("How many dots?", ckpt[1])
    full = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=8)
    text = full.choices[0].message.content
    # a 3-letter ASCII piece of the greedy text after its start: greedy with that stop must end just before it
    start = next(i for i in range(2, len(text) - 2) if text[i:i + 3].isascii() and text[i:i + 3].isalpha())
    stop = text[start:start + 3]
    for value in (stop, [stop, "\u2603never\u2603"]):
        cut = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=8, stop=value)
        assert cut.choices[0].message.content == text[:text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_share_backend_calls(server, client, ckpt):
    backend, app, _ = server
    backend.gate.clear()  # hold the worker inside its first call while the others queue up
    prompts = ["How many dots?", "Name the colors.", "Describe it.", "Is it noisy?", "What shape?"]
    before = len(backend.sizes)
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        first = pool.submit(client.chat.completions.create, model="tiny", messages=user(prompts[0], ckpt[1]),
                            temperature=0, max_tokens=8)
        while len(backend.sizes) == before:
            time.sleep(0.01)
        rest = [pool.submit(client.chat.completions.create, model="tiny", messages=user(p, ckpt[1]),
                            temperature=0, max_tokens=8) for p in prompts[1:]]
        deadline = time.monotonic() + 30
        while app.state.batcher._queue.qsize() < len(rest):
            assert time.monotonic() < deadline, "the requests did not reach the queue"
            time.sleep(0.01)
        backend.gate.set()
        texts = [f.result().choices[0].message.content for f in [first, *rest]]
    assert backend.sizes[before:] == [1, 4]  # 5 requests, 2 backend calls (one engine call each)
    ref = backend.inner.generator(prompts[2], [ckpt[1]], greedy=True, max_new_tokens=8)
    assert texts[2] == ref["text"]


def test_bad_requests_get_openai_400s(server, client, ckpt):
    def refused(param, match, **kw):
        kw = {"model": "tiny", "messages": user("hi", ckpt[1]), "max_tokens": 4, **kw}
        with pytest.raises(openai.BadRequestError, match=match) as err:
            client.chat.completions.create(**kw)
        assert err.value.status_code == 400 and err.value.body["param"] == param
        assert err.value.body["type"] == "invalid_request_error"
        return err.value

    assert refused("model", "'gpt-4o' is not served here: set model to 'tiny'", model="gpt-4o").code == \
        "model_not_found"
    junk = {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}
    refused("messages", r"messages\[0\].content\[0\].image_url.url: the data URL is not a readable image",
            messages=[{"role": "user", "content": [junk]}])
    refused("messages", "no image file", messages=user("hi", str(ckpt[1]) + ".missing"))
    refused("max_tokens", "does not fit the model's context of 4096 tokens", max_tokens=5000)
    refused("max_tokens", "lower max_tokens", max_tokens=4090)  # fits alone, not with the prompt
    refused("n", "n=0: ask for between 1", n=0)
    refused("stream", "streaming is not supported", stream=True)
    refused("temperature", "temperature=-1", temperature=-1)
    status, body = http(server[2] + "/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = http(server[2] + "/nope")
    assert status == 404 and "POST /v1/chat/completions" in body["error"]["message"]


def test_serve_command(server, ckpt, tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="hopchain")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--model", str(tmp_path / "nowhere")])
    assert args.fn(args) == 2 and "does not exist" in capsys.readouterr().err
    args = parser.parse_args(["serve", "--model", str(tmp_path)])
    assert args.fn(args) == 2 and "has no config.json" in capsys.readouterr().err
    args = parser.parse_args(["serve", "--model", str(ckpt[0]), "--decode-mesh", "8,1"])
    assert args.fn(args) == 2 and "--decode-mesh '8,1': give three device counts" in capsys.readouterr().err

    from hopchain_jax.vlm import engine_backend
    made, ran = [], []
    monkeypatch.setattr(engine_backend, "EngineChatBackend",
                        lambda path, **kw: made.append((path, kw)) or server[0].inner)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw) or app.state.batcher.close())
    args = parser.parse_args(["serve", "--model", str(ckpt[0]), "--port", "8123", "--served-model-name", "tiny",
                              "--mesh", "1,8,1", "--decode-mesh=-1,1,1"])
    assert args.fn(args) == 0
    assert made == [(str(ckpt[0]), dict(dtype=None, mesh_shape=(1, 8, 1), decode_mesh_shape=(-1, 1, 1),
                                        max_pixels=None, max_slots=256, name="tiny"))]
    assert ran == [dict(host="127.0.0.1", port=8123, log_level="warning")]
    assert "'tiny' at http://127.0.0.1:8123/v1" in capsys.readouterr().out

"""EngineChatBackend on a tiny random checkpoint (real Qwen tokenizer): OpenAI messages -> one engine call
whatever the sampling settings, per-item errors, per-request seeds, the response cache, parity with Generator."""
import base64

import numpy as np
import pytest
from PIL import Image

from engine_tiny import tiny_backend, tiny_checkpoint
from hopchain_jax.vlm.cache import ResponseCache
from hopchain_jax.vlm.engine_backend import load_image_url, to_template_messages
from hopchain_jax.vlm.chat import ChatRequest, image_part, user_message


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return tiny_backend(tmp_path_factory)


@pytest.fixture()
def engine_calls(backend, monkeypatch):
    """The sizes (prompts) of every engine.generate call made during the test."""
    calls, generate = [], backend.generator.engine.generate

    def counted(requests, *args):
        calls.append(len(requests))
        return generate(requests, *args)
    monkeypatch.setattr(backend.generator.engine, "generate", counted)
    return calls


def test_messages_become_template_messages_and_images(ckpt, tmp_path):
    _, image = ckpt
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [image_part(image), {"type": "text", "text": "Count."},
                                         {"type": "image_url", "image_url": {"url": image.as_uri()}},
                                         {"type": "image_url", "image_url": str(image)}]}]
    out, images = to_template_messages(msgs)
    assert out == [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."},
                                                {"type": "image"}, {"type": "image"}]}]
    assert [im.size for im in images] == [(56, 56)] * 3
    assert all(np.array_equal(np.asarray(im), np.asarray(images[0])) for im in images)
    with pytest.raises(ValueError, match=r"messages\[0\].content\[1\].*'input_audio' is not supported"):
        to_template_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}])
    with pytest.raises(ValueError, match="remote image URLs"):
        load_image_url("https://example.com/a.png")
    with pytest.raises(ValueError, match="base64"):
        load_image_url("data:image/png;base64,@@@")


def test_mixed_settings_run_as_one_engine_call_matching_generator(backend, ckpt, engine_calls):
    _, image = ckpt
    img = np.asarray(Image.open(image))
    prompts = ["How many dots?", "Name the colors.", "Describe it.", "Is it noisy?"]
    reqs = [ChatRequest([user_message(prompts[0], images=[img])], max_tokens=8),                     # data URL
            ChatRequest([user_message(prompts[1], images=[image])], max_tokens=3),                   # local path
            ChatRequest([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image.as_uri()}},
                                                      {"type": "text", "text": prompts[2]}]}], max_tokens=8),
            ChatRequest([user_message(prompts[3], images=[img])], max_tokens=8, top_p=0.5),  # greedy ignores top_p
            ChatRequest([user_message(prompts[0], images=[img])], max_tokens=5, n=3, temperature=1.2, top_p=0.9)]
    results = backend.complete(reqs)
    assert engine_calls == [5]
    assert [r.error for r in results] == [None] * 5
    assert len(results[4].texts) == 3 and results[4].usage["completion_tokens"] <= 15
    for prompt, req, r in zip(prompts, reqs, results):
        assert len(r.texts) == 1 and r.finish_reasons[0] in ("stop", "length")
        ref = backend.generator(prompt, [image], greedy=True, max_new_tokens=req.max_tokens)
        assert r.texts[0] == ref["text"]
        assert r.usage["prompt_tokens"] == len(ref["input_ids"])
        assert r.usage["completion_tokens"] == len(ref["output_ids"]) <= req.max_tokens
        assert r.usage["total_tokens"] == r.usage["prompt_tokens"] + r.usage["completion_tokens"]
    assert results[1].finish_reasons == ["length"] and results[1].usage["completion_tokens"] == 3


def test_bad_items_get_errors_and_the_rest_still_run(backend, ckpt, engine_calls):
    _, image = ckpt
    good = ChatRequest([{"role": "system", "content": "Answer."}, user_message("How many dots?", images=[image])],
                       max_tokens=8)
    missing = {"type": "image_url", "image_url": {"url": str(image) + ".missing"}}
    junk = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    bad = {
        "not a readable image": ChatRequest([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": junk}}, {"type": "text", "text": "x"}]}]),
        "no image file": ChatRequest([{"role": "user", "content": [missing]}]),
        "'input_audio' is not supported": ChatRequest([{"role": "user", "content": [{"type": "input_audio"}]}]),
        "role 'tool' is not supported": ChatRequest([{"role": "tool", "content": "x"}]),
        "lower max_tokens": ChatRequest([user_message("x", images=[image])], max_tokens=5000),
        "at least 1 sample": ChatRequest([user_message("x")], n=0),
    }
    results = backend.complete([*bad.values(), good])
    assert engine_calls == [1]
    assert results[-1].error is None and len(results[-1].texts) == 1
    for (expected, _), r in zip(bad.items(), results[:-1]):
        assert r.error is not None and expected in r.error and r.texts == []


def test_an_item_that_breaks_the_engine_call_fails_alone(backend, ckpt, engine_calls, monkeypatch):
    _, image = ckpt
    generate = backend.generator.engine.generate

    def poisoned(requests, *args):
        if any(r.max_new_tokens == 7 for r in requests):
            raise RuntimeError("device fault")
        return generate(requests, *args)
    monkeypatch.setattr(backend.generator.engine, "generate", poisoned)
    reqs = [ChatRequest([user_message(f"q{k}", images=[image])], max_tokens=7 if k == 1 else 8) for k in range(3)]
    results = backend.complete(reqs)
    assert "device fault" in results[1].error and results[1].texts == []
    assert results[0].error is None and results[2].error is None and len(results[0].texts) == 1


def test_sampling_is_deterministic_per_request_and_n_is_honoured(backend, ckpt, engine_calls):
    _, image = ckpt
    reqs = [ChatRequest([user_message(q, images=[image])], n=2, temperature=1.0, max_tokens=6)
            for q in ("How many dots?", "What is this?")]
    first = backend.complete(reqs)
    again = backend.complete(reqs[::-1])[::-1]  # the same requests in another order: the same samples
    alone = backend.complete(reqs[1:])   # a request's seed is its own: batch-mates change nothing
    assert engine_calls == [2, 2, 1]
    assert [r.texts for r in first] == [r.texts for r in again]
    assert alone[0].texts == first[1].texts
    assert all(len(r.texts) == 2 and len(set(r.texts)) == 2 for r in first)  # n distinct draws
    salted = backend.complete([ChatRequest(r.messages, n=2, temperature=1.0, max_tokens=6, salt="round 2")
                               for r in reqs])
    assert [r.texts for r in salted] != [r.texts for r in first]


def test_cache_hit_on_second_call_skips_the_engine(backend, ckpt, engine_calls, monkeypatch, tmp_path):
    _, image = ckpt
    monkeypatch.setattr(backend, "cache", ResponseCache(tmp_path / "cache"))
    missing = {"type": "image_url", "image_url": {"url": str(image) + ".missing"}}
    reqs = [ChatRequest([user_message("How many dots?", images=[image])], max_tokens=8),
            ChatRequest([{"role": "user", "content": [missing]}], max_tokens=8)]
    first = backend.complete(reqs)
    second = backend.complete(reqs)
    assert engine_calls == [1]
    assert not first[0].cached and second[0].cached and second[0].texts == first[0].texts
    assert second[0].usage == first[0].usage
    assert second[1].error is not None and len(backend.cache) == 1  # failures are not cached
    other = dict(backend.identity, path="/elsewhere")
    monkeypatch.setattr(backend, "identity", other)  # another checkpoint: another key
    assert not backend.complete(reqs[:1])[0].cached

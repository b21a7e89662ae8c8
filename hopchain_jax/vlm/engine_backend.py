"""A ChatBackend over a local checkpoint: OpenAI-format chat requests run on our JAX InferenceEngine.

    backend = EngineChatBackend("Qwen2.5-VL-7B-Instruct/", cache_dir="runs/vlm-cache")
    results = backend.complete([ChatRequest([user_message("How many cubes?", images=[img])], n=4,
                                            temperature=1.0, max_tokens=512)])

Messages are OpenAI chat messages (roles system / developer / user / assistant; content a string or a
list of {"type": "text"} and {"type": "image_url"} parts whose url is a data URL, a local path or a
file:// URL). They go through the Qwen chat template and image processor of `Generator`, exactly as
`hopchain generate` builds its prompt. All the requests of one complete() call run as ONE
engine.generate call, each with its own sampling settings (temperature, top_p, n, stop, max_tokens:
per-prompt engine settings, which compile nothing new); temperature 0 is greedy, top_k is off.

Seeds: each request's seed comes from its own key (messages + settings + salt), and the engine draws a
request with its own settings from its own seed alone, so a request gives the same samples whatever
else it is batched with and in whatever order -- what the response cache and `seed` promise.

Every failure (undecodable image, unsupported content, prompt over the token budget) is reported on its
item, `ChatResult.error`, never raised; the other items still run. With `cache_dir`, results are stored
under a key holding the checkpoint's identity (path, file sizes and times), dtype and max_pixels, the
request and its salt: a rerun repeats no completed request.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import os
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from hopchain_jax.vlm.cache import ResponseCache, request_key
from hopchain_jax.vlm.chat import ChatRequest, ChatResult

__all__ = ["EngineChatBackend", "load_image_url", "to_template_messages", "checkpoint_identity"]

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # engine -> OpenAI
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def load_image_url(url: str, where: str = "image_url"):
    """The RGB PIL image behind an OpenAI image url: a data URL (base64), a file:// URL or a local path.
    Raises ValueError naming `where` and what to send instead."""
    from PIL import Image
    if not isinstance(url, str) or not url:
        raise ValueError(f"{where}: expected a non-empty url string (data URL, local path or file:// URL)")
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        if not comma or not head.endswith(";base64"):
            raise ValueError(f"{where}: a data URL must be base64, like 'data:image/png;base64,<data>'")
        try:
            source = io.BytesIO(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{where}: the data URL's base64 does not decode ({e}): send the file's bytes "
                             "base64-encoded") from None
        what = "the data URL"
    else:
        scheme = urllib.parse.urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            raise ValueError(f"{where}: remote image URLs are not downloaded by this backend: send the image as "
                             "a data URL ('data:image/png;base64,...') or as a path on this machine")
        if scheme == "file":
            parsed = urllib.parse.urlparse(url)
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"{where}: file URL {url!r} names host {parsed.netloc!r}: only local files are read")
            source = urllib.request.url2pathname(parsed.path)
        else:
            source = url
        if not os.path.isfile(source):
            raise ValueError(f"{where}: no image file at {source!r}: pass an existing path (on the machine that "
                             "runs the model) or a data URL")
        what = f"the file {source!r}"
    try:
        with Image.open(source) as f:
            return f.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises several types for bad data
        raise ValueError(f"{where}: {what} is not a readable image ({type(e).__name__}: {e}): send a PNG, JPEG "
                         "or WebP") from None


def to_template_messages(messages: Sequence[dict]) -> tuple[list[dict], list]:
    """OpenAI chat messages -> (messages in the Qwen chat template's format, their PIL images in order).
    Raises ValueError naming the offending messages[i].content[j] and the fix."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages: expected a non-empty list of {'role', 'content'} messages")
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}]: expected an object with 'role' and 'content'")
        role = ROLES.get(m.get("role"))
        if role is None:
            raise ValueError(f"messages[{i}].role {m.get('role')!r} is not supported: use one of "
                             f"{sorted(ROLES)}")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, (list, tuple)):
            raise ValueError(f"messages[{i}].content: expected a string or a list of content parts")
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                images.append(load_image_url(url, f"{where}.image_url.url"))
                parts.append({"type": "image"})
            else:
                raise ValueError(f"{where}: content part {kind!r} is not supported: use "
                                 "{'type': 'text', 'text': ...} or {'type': 'image_url', 'image_url': {'url': ...}}")
        out.append({"role": role, "content": parts})
    return out, images


def checkpoint_identity(model_dir: str | os.PathLike) -> dict:
    """What names a checkpoint for the cache: its resolved path and the (name, bytes, mtime ns) of its
    files (config, weights, tokenizer), so a re-saved checkpoint gets new keys."""
    root = Path(model_dir).resolve()
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir()
                   if p.is_file() and p.suffix in (".json", ".safetensors", ".model", ".txt", ".jinja"))
    return {"path": str(root), "files": files}


@dataclasses.dataclass
class _Prepared:
    """One request ready for the engine: its index in the call, cache key, engine Request."""

    index: int
    key: str
    request: object  # engine Request


class EngineChatBackend:
    """ChatBackend (vlm.solvers) running a checkpoint directory on this machine's devices.

    dtype: compute dtype (default float32 on CPU, else bfloat16); mesh_shape: (data, fsdp, tensor)
    device counts the weights load into; decode_mesh_shape: the mesh decoding runs on (Generator);
    max_pixels: cap on resized image pixels; max_slots: sequences decoded at once;
    cache_dir: on-disk response cache; name: the model name reported (default: the directory's name)."""

    def __init__(self, model_dir: str | os.PathLike, *, dtype: str | None = None,
                 mesh_shape: tuple[int, int, int] | None = None, max_pixels: int | None = None, max_slots: int = 256,
                 cache_dir: str | os.PathLike | None = None, name: str | None = None,
                 decode_mesh_shape: tuple[int, int, int] | None = None):
        from hopchain_jax.infer.generate import Generator, default_dtype  # JAX loads only when a backend is made
        self.model_dir = os.fspath(model_dir)
        self.model = name or os.path.basename(os.path.normpath(os.path.abspath(self.model_dir)))
        self.generator = Generator(self.model_dir, dtype=dtype, mesh_shape=mesh_shape, max_pixels=max_pixels,
                                   progress=False, max_slots=max_slots, decode_mesh_shape=decode_mesh_shape)
        self.identity = {**checkpoint_identity(self.model_dir), "dtype": dtype or default_dtype(),
                         "max_pixels": max_pixels}
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.engine_calls = 0  # engine.generate calls made (cache hits and failed items make none)
        self._lock = threading.Lock()  # the engine is not thread-safe

    @property
    def max_length(self) -> int:
        """Tokens a prompt and its completion may take together."""
        return self.generator.max_length

    def key(self, req: ChatRequest) -> str:
        """The cache key (and seed source) of a request: checkpoint identity + payload + salt."""
        payload = {"messages": req.messages, "n": req.n, "temperature": req.temperature, "top_p": req.top_p,
                   "max_tokens": req.max_tokens, "stop": list(req.stop)}
        return request_key({"checkpoint": self.identity, "payload": payload, "salt": req.salt})

    def _prepare(self, req: ChatRequest):
        """The engine Request of a ChatRequest; raises ValueError saying what is wrong with it."""
        if isinstance(req.n, bool) or not isinstance(req.n, int) or req.n < 1:
            raise ValueError(f"n={req.n!r}: ask for at least 1 sample")
        if isinstance(req.max_tokens, bool) or not isinstance(req.max_tokens, int) or req.max_tokens < 1:
            raise ValueError(f"max_tokens={req.max_tokens!r}: ask for at least 1 token")
        if req.max_tokens >= self.max_length:
            raise ValueError(f"max_tokens={req.max_tokens} does not fit the model's context of {self.max_length} "
                             "tokens (prompt included): lower max_tokens")
        if not req.temperature >= 0:
            raise ValueError(f"temperature={req.temperature!r}: use 0 (greedy) or more")
        if not 0 < req.top_p <= 1:
            raise ValueError(f"top_p={req.top_p!r}: use a value in (0, 1]")
        messages, images = to_template_messages(req.messages)
        request, _ = self.generator.build_chat_request(messages, images, req.max_tokens, limit_name="max_tokens")
        return request

    @staticmethod
    def _params(req: ChatRequest, key: str):
        """The engine settings of one request, seeded by its key; greedy ignores top_p."""
        from hopchain_jax.infer.sampling import SamplingParams
        greedy = req.temperature == 0
        return SamplingParams(temperature=float(req.temperature), top_p=1.0 if greedy else float(req.top_p),
                              top_k=0, n=int(req.n), stop=tuple(req.stop), max_new_tokens=int(req.max_tokens),
                              seed=int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF)

    def _run(self, items: list[_Prepared], requests: Sequence[ChatRequest]):
        """One engine.generate call for these requests, each with its own settings: {index: ChatResult}."""
        self.engine_calls += 1
        outs = self.generator.engine.generate([dataclasses.replace(it.request, params=self._params(
            requests[it.index], it.key)) for it in items])
        results = {}
        for k, it in enumerate(items):
            samples = sorted((o for o in outs if o.prompt_index == k), key=lambda o: o.sample_index)
            completion = sum(len(o.token_ids) for o in samples)
            prompt = len(it.request.prompt_ids)
            reasons = [FINISH_REASONS.get(o.finish_reason, o.finish_reason) for o in samples]
            results[it.index] = ChatResult(
                [o.text or "" for o in samples], reasons,
                {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
                attempts=1)
        return results

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Results in the order of `requests`; failures are reported per item, never raised."""
        with self._lock:
            results: list[ChatResult | None] = [None] * len(requests)
            items: list[_Prepared] = []
            for i, req in enumerate(requests):
                try:
                    key = self.key(req)
                    if self.cache is not None and (hit := self.cache.get(key)) is not None:
                        results[i] = ChatResult(hit["texts"], hit["finish_reasons"], hit["usage"], cached=True)
                        continue
                    items.append(_Prepared(i, key, self._prepare(req)))
                except Exception as e:  # noqa: BLE001 - every failure becomes the item's error
                    results[i] = ChatResult([], [], {}, error=str(e) if isinstance(e, ValueError)
                                            else f"{type(e).__name__}: {e}")
            if not items:
                return results
            try:
                done = self._run(items, requests)
            except Exception:  # noqa: BLE001 - rerun one by one to isolate the item that breaks the call
                done = {}
                for it in items:
                    try:
                        done.update(self._run([it], requests))
                    except Exception as e:  # noqa: BLE001
                        done[it.index] = ChatResult([], [], {}, attempts=1, error=f"{type(e).__name__}: {e}")
            for it in items:
                results[it.index] = done[it.index]
                if self.cache is not None and done[it.index].error is None:
                    r = done[it.index]
                    self.cache.put(it.key, {"texts": r.texts, "finish_reasons": r.finish_reasons,
                                            "usage": r.usage})
            return results

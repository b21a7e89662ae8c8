"""Chat request / response types and message builders, shared by every chat backend (the OpenAI client,
the JAX engine backend) and by `hopchain serve` (serve/protocol.py, serve/batcher.py): one definition for the
client and server sides."""
from __future__ import annotations

import base64
import dataclasses
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def image_part(image: np.ndarray | str | os.PathLike) -> dict:
    """An image content part: a uint8 [H, W, 3] array (sent as PNG) or an image file, as a data URL."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        data = path.read_bytes()
        mime = {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".gif": "gif"}.get(path.suffix.lower(), "png")
    else:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
        data, mime = buf.getvalue(), "png"
    return {"type": "image_url", "image_url": {"url": f"data:image/{mime};base64," + base64.b64encode(data).decode()}}


def user_message(text: str, images: Sequence[np.ndarray | str | os.PathLike] = ()) -> dict:
    """A user turn: the images first, then the text (the order Qwen-VL prompts use)."""
    return {"role": "user", "content": [image_part(im) for im in images] + [{"type": "text", "text": text}]}


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """One chat completion. messages: OpenAI chat format; n: samples; salt: anything else that should
    give a separate cache entry (e.g. a sampling round)."""

    messages: list[dict]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    salt: str = ""


@dataclasses.dataclass
class ChatResult:
    """texts: one per sample (empty on error); finish_reasons: "stop" | "length" | ...; usage: token
    counts; cached: served from the cache; attempts: calls made; error: why the item failed, or None;
    transient: the error may not repeat (a connection error, timeout, 429 or 5xx that outlasted every
    retry): the item should be retried later, never recorded as a final rejection."""

    texts: list[str]
    finish_reasons: list[str]
    usage: dict
    cached: bool = False
    attempts: int = 0
    error: str | None = None
    transient: bool = False

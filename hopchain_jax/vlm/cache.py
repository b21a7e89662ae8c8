"""On-disk cache of model responses, keyed by the exact request.

One JSON file per request under `root/<key[:2]>/<key>.json`, written atomically (temp file + rename), so
a run killed at any point leaves only complete entries and a rerun repeats no call it already paid for.
The key is the SHA-256 of the canonical JSON of everything that determines the response (endpoint,
model, messages including image bytes, sampling parameters, and a caller's salt such as a seed).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def request_key(payload: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of `payload` (keys sorted, no whitespace)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """get(key) -> stored dict or None; put(key, value) stores it atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # cannot happen with atomic writes; treat a damaged entry as missing

    def put(self, key: str, value: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # one temp file per process *and thread*: the backends put from a thread pool, and two identical
        # requests in one batch (the same question drafted twice) store the same key at the same time
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json"))

"""Checking a folder of user images before the model-driven stages run on it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MIN_SIDE_PX = 28  # smaller than one 28-px Qwen-VL merged patch: nothing to see


@dataclasses.dataclass(frozen=True)
class ImageScan:
    readable: list[Path]
    problems: list[tuple[Path, str]]


def check_image(path: Path) -> str | None:
    """None when `path` is a complete, decodable image; else the reason it is not."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    try:
        with Image.open(path) as im:
            im.verify()  # structure and checksums
        with Image.open(path) as im:
            im.load()  # full decode: catches truncation that verify() misses
            w, h = im.size
    except UnidentifiedImageError:
        return "not an image (unrecognised format)"
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        if "truncated" in msg.lower():
            return f"truncated image ({msg})"
        return f"corrupt image ({msg})"
    except Image.DecompressionBombError as e:
        return f"refused: {e}"
    if min(w, h) < MIN_SIDE_PX:
        return f"too small ({w}x{h} px; need at least {MIN_SIDE_PX} px per side)"
    return None


def scan_images(folder: str | Path) -> ImageScan:
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"--images {folder}: not a directory")
    readable, problems = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        reason = check_image(path)
        if reason is None:
            readable.append(path)
        else:
            problems.append((path, reason))
    return ImageScan(readable, problems)

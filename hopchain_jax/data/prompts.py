"""From dataset elements to model-ready prompts (Grain transforms).

``BuildPrompt`` turns one element of ``HopChainSource`` (or of ``make_mixture``) into what the inference
engine and the trainer take. Output element (a dict; L, P and T vary per element, nothing is padded):

  prompt_ids      int32   [L]              chat prompt, image placeholder expanded to the image's tokens
  pixel_values    float32 [P, patch_dim]   P = t*h*w patches, patch_dim = 3 * temporal_patch * patch**2
  image_grid_thw  int64   [1, 3]           (t, h, w) in patches; image tokens = t*h*w // merge_size**2
  answer          float64 scalar           the gold number
  id, variant, question   str
  record          bytes                    the whole schema-v2 record (UTF-8 JSON)
  target_text     str                      SFT target: the record's gold "rationale", else "\\boxed{answer}"
  target_ids      int32   [T]              target_text tokenized, then <|im_end|>
  source          str                      passed through when the input has it (make_mixture adds it)

The prompt is one user turn, image first then ``question + instruction_suffix``, after the system turn,
ending with the generation prompt ``<|im_start|>assistant\\n``. Question and target text are tokenized with
special tokens split (a private copy of the Rust tokenizer with ``encode_special_tokens``): a question that
happens to contain "<|image_pad|>" or "<|im_end|>" stays plain text and cannot desynchronise the image
tokens from the image features.

Image-token budget: before any pixel work, the prompt length with its image tokens is checked against
``PromptConfig.max_prompt_tokens`` (``tokenizer.check_image_token_budget``). ``on_over_budget="error"``
raises a ValueError naming the record id and the setting to change; ``"skip"`` returns a marker element
(``prompt_ids`` None, ``skip_reason`` set) that ``DropSkipped`` (a ``grain.transforms.Filter``) removes, and
``BuildPrompt.num_skipped`` counts them. ``prompt_transforms`` returns the right list for ``make_mixture``.

Requests for ``hopchain_jax.infer.engine``: ``Request(el["prompt_ids"], el["pixel_values"], el["image_grid_thw"])``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import weakref
from decimal import Decimal
from typing import Any, Iterable, Iterator

import grain
import numpy as np

from hopchain_jax.models.image_processor import QWEN2_5_VL, ImageProcessorConfig, grid_thw_for_size, preprocess
from hopchain_jax.models.tokenizer import (DEFAULT_SYSTEM_PROMPT, IM_END_ID, IMAGE_PAD_ID, build_chat_prompt,
                                           check_image_token_budget, expand_image_tokens)

__all__ = ["DEFAULT_INSTRUCTION_SUFFIX", "PromptConfig", "BuildPrompt", "DropSkipped", "prompt_transforms",
           "batch_prompts", "format_answer", "is_skipped"]

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION_SUFFIX = "\nThink step by step, then give the final answer as a single number in \\boxed{}."
_TEXT_SENTINEL = "\x00HOPCHAIN_USER_TEXT\x00"
_MODES = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How prompts are built.

    processor: image preprocessing (``QWEN2_5_VL`` or ``QWEN3_VL`` presets, or ``from_pretrained_dir``).
    max_prompt_tokens: the longest prompt allowed, image tokens included.
    instruction_suffix: appended to every question.
    system_prompt: the system turn; None uses the tokenizer's default ("You are a helpful assistant.").
    on_over_budget: "error" raises on a prompt longer than max_prompt_tokens; "skip" drops it and counts it.
    """

    processor: ImageProcessorConfig = QWEN2_5_VL
    max_prompt_tokens: int = 4096
    instruction_suffix: str = DEFAULT_INSTRUCTION_SUFFIX
    system_prompt: str | None = None
    on_over_budget: str = "error"

    def __post_init__(self):
        if not isinstance(self.processor, ImageProcessorConfig):
            raise TypeError("PromptConfig.processor must be an ImageProcessorConfig, got "
                            f"{type(self.processor).__name__}")
        if isinstance(self.max_prompt_tokens, bool) or not isinstance(self.max_prompt_tokens, (int, np.integer)) \
                or self.max_prompt_tokens < 1:
            raise ValueError("PromptConfig.max_prompt_tokens must be a positive integer, got "
                             f"{self.max_prompt_tokens!r}")
        if self.on_over_budget not in _MODES:
            raise ValueError(f"PromptConfig.on_over_budget must be one of {_MODES}, got {self.on_over_budget!r}")
        if not isinstance(self.instruction_suffix, str):
            raise TypeError("PromptConfig.instruction_suffix must be a string")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise TypeError("PromptConfig.system_prompt must be a string or None")


def format_answer(answer: Any) -> str:
    """A record's answer as plain text: ints as is, floats without exponent or float noise (2.5, 0.0001)."""
    if isinstance(answer, (bool, np.bool_)):
        raise TypeError(f"answer must be a number, got {answer!r}")
    if isinstance(answer, (int, np.integer)):
        return str(int(answer))
    value = float(answer)
    if value.is_integer():
        return str(int(value))
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def is_skipped(element: Any) -> bool:
    """True for the marker ``BuildPrompt`` returns in "skip" mode (and for None)."""
    return element is None or (isinstance(element, dict) and element.get("prompt_ids") is None)


_TEXT_BACKENDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TEXT_BACKENDS_LOCK = threading.Lock()


def _text_backend(tokenizer):
    """A copy of ``tokenizer``'s Rust backend that splits special tokens (None for a slow tokenizer); one per
    tokenizer object, shared by every BuildPrompt on it (it is only read after this)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    with _TEXT_BACKENDS_LOCK:
        try:
            copy = _TEXT_BACKENDS.get(tokenizer)
        except TypeError:  # not weak-referenceable
            copy = None
        if copy is None:
            import tokenizers
            copy = tokenizers.Tokenizer.from_str(backend.to_str())
            copy.encode_special_tokens = True
            try:
                _TEXT_BACKENDS[tokenizer] = copy
            except TypeError:
                pass
        return copy


class BuildPrompt(grain.transforms.Map):
    """Grain Map: a ``HopChainSource`` element -> model-ready prompt (see the module docstring for shapes).

    tokenizer: ``load_tokenizer()`` or a checkpoint's; config: ``PromptConfig``; merge_size: the model's
    ``vision.spatial_merge_size`` (default: ``config.processor.merge_size``; they must agree).
    Thread-safe; ``num_skipped`` counts the records this instance (this process) dropped in "skip" mode,
    including ones Grain read ahead but the consumer has not taken yet.
    """

    def __init__(self, tokenizer, config: PromptConfig = PromptConfig(), merge_size: int | None = None):
        if merge_size is None:
            merge_size = config.processor.merge_size
        if int(merge_size) != config.processor.merge_size:
            raise ValueError(
                f"BuildPrompt: merge_size={merge_size} (the model's vision spatial_merge_size) differs from "
                f"PromptConfig.processor.merge_size={config.processor.merge_size}; use the processor settings of "
                f"the model's checkpoint (image_processor.from_pretrained_dir)")
        self.tokenizer = tokenizer
        self.config = config
        self.merge_size = int(merge_size)
        system = DEFAULT_SYSTEM_PROMPT if config.system_prompt is None else config.system_prompt
        template = build_chat_prompt(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _TEXT_SENTINEL}]}],
            add_generation_prompt=True, default_system_prompt=system)
        head, tail = template.split(_TEXT_SENTINEL)
        self._head_ids = self._encode(head, split_special=False)
        self._tail_ids = self._encode(tail, split_special=False)
        n_pads = int(np.sum(self._head_ids == IMAGE_PAD_ID)) + int(np.sum(self._tail_ids == IMAGE_PAD_ID))
        if n_pads != 1:
            raise ValueError(f"BuildPrompt: the chat template tokenized to {n_pads} image placeholders (id "
                             f"{IMAGE_PAD_ID}), expected 1; is this a Qwen-VL tokenizer?")
        if tokenizer.convert_tokens_to_ids("<|im_end|>") != IM_END_ID:
            raise ValueError("BuildPrompt: the tokenizer's <|im_end|> id differs from the Qwen-VL one "
                             f"({IM_END_ID}); is this a Qwen-VL tokenizer?")
        self._lock = threading.Lock()
        self._num_skipped = 0
        # User text is encoded by a private copy of the Rust tokenizer with encode_special_tokens set once:
        # transformers' `tokenizer(text, split_special_tokens=True)` flips that flag on the *shared* backend
        # on every call, which races with other threads using the same tokenizer.
        self._text_backend = _text_backend(tokenizer)

    # Grain may pickle transforms into worker processes: a Lock does not pickle, and a pickled Rust tokenizer
    # comes back with encode_special_tokens reset to False, so the text backend is rebuilt instead.
    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"], state["_text_backend"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._text_backend = _text_backend(self.tokenizer)

    def __repr__(self) -> str:
        return (f"BuildPrompt(max_prompt_tokens={self.config.max_prompt_tokens}, "
                f"on_over_budget={self.config.on_over_budget!r}, merge_size={self.merge_size}, "
                f"patch_size={self.config.processor.patch_size}, max_pixels={self.config.processor.max_pixels})")

    @property
    def num_skipped(self) -> int:
        return self._num_skipped

    def _encode(self, text: str, *, split_special: bool) -> np.ndarray:
        if not text:
            return np.zeros(0, np.int32)
        if split_special and self._text_backend is not None:
            return np.asarray(self._text_backend.encode(text, add_special_tokens=False).ids, np.int32)
        if split_special:  # a slow tokenizer: its per-call flag is not shared with a Rust backend
            with self._lock:
                ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return np.asarray(ids, np.int32)

    def target_text(self, record: dict) -> str:
        """The SFT target of a record: its gold rationale, else ``\\boxed{answer}``."""
        rationale = record.get("rationale")
        if isinstance(rationale, str) and rationale.strip():
            return rationale
        return f"\\boxed{{{format_answer(record['answer'])}}}"

    def map(self, element: dict) -> dict:
        raw = element["record"]
        record = json.loads(raw)
        rid = element.get("id", record.get("id"))
        image = np.asarray(element["image"])
        text_ids = self._encode(element["question"] + self.config.instruction_suffix, split_special=True)
        ids = np.concatenate([self._head_ids, text_ids, self._tail_ids])
        proc = self.config.processor
        try:
            grid = np.asarray([grid_thw_for_size(image.shape[0], image.shape[1], proc)], np.int64)
        except ValueError as e:
            raise ValueError(f"record {rid!r}: {e}") from None
        try:
            check_image_token_budget(len(ids), grid, self.merge_size, self.config.max_prompt_tokens,
                                     proc.max_pixels, patch_size=proc.patch_size, min_pixels=proc.min_pixels)
        except ValueError as e:
            reason = (f"record {rid!r}: {e} (max_length is PromptConfig.max_prompt_tokens, max_pixels/min_pixels "
                      f"are PromptConfig.processor's)")
            if self.config.on_over_budget == "error":
                raise ValueError(reason + "; or set PromptConfig.on_over_budget='skip' to drop such records") from None
            with self._lock:
                self._num_skipped += 1
                count = self._num_skipped
            if count <= 10 or count % 100 == 0:
                logger.warning("skipping over-budget prompt (%d so far): %s", count, reason)
            return {"prompt_ids": None, "skip_reason": reason, "id": rid,
                    **({"source": element["source"]} if "source" in element else {})}
        processed = preprocess(image, proc)
        if not np.array_equal(processed.image_grid_thw, grid):  # cannot happen unless preprocess changes
            raise AssertionError(f"record {rid!r}: grid {processed.image_grid_thw.tolist()} != {grid.tolist()}")
        prompt_ids = expand_image_tokens(ids, grid, self.merge_size).astype(np.int32)
        target = self.target_text(record)
        target_ids = np.concatenate([self._encode(target, split_special=True), np.asarray([IM_END_ID], np.int32)])
        out = {
            "prompt_ids": prompt_ids,
            "pixel_values": processed.pixel_values,
            "image_grid_thw": processed.image_grid_thw.astype(np.int64),
            "answer": np.float64(element["answer"]),
            "id": rid,
            "variant": element.get("variant", record.get("variant")),
            "question": element["question"],
            "record": raw,
            "target_text": target,
            "target_ids": target_ids,
        }
        if "source" in element:
            out["source"] = element["source"]
        return out


class DropSkipped(grain.transforms.Filter):
    """Grain Filter that removes the markers ``BuildPrompt`` returns in "skip" mode.

    Raises a ValueError after ``max_consecutive`` markers in a row (nothing fits the budget: an endless
    loop over a repeated dataset otherwise).
    """

    def __init__(self, max_consecutive: int = 1000):
        self.max_consecutive = int(max_consecutive)
        self._run = 0
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DropSkipped(max_consecutive={self.max_consecutive})"

    def filter(self, element) -> bool:
        skipped = is_skipped(element)
        with self._lock:
            self._run = self._run + 1 if skipped else 0
            run = self._run
        if skipped and run >= self.max_consecutive:
            raise ValueError(
                f"{run} prompts in a row were over the image-token budget (last: {element.get('skip_reason')}); "
                "raise PromptConfig.max_prompt_tokens or lower PromptConfig.processor.max_pixels")
        return not skipped


def prompt_transforms(tokenizer, config: PromptConfig = PromptConfig(), merge_size: int | None = None) -> list:
    """``[BuildPrompt, DropSkipped]`` ("skip" mode) or ``[BuildPrompt]`` ("error" mode), for ``make_mixture``."""
    build = BuildPrompt(tokenizer, config, merge_size)
    return [build, DropSkipped()] if config.on_over_budget == "skip" else [build]


def batch_prompts(elements: Iterable[dict], batch_size: int, *, drop_remainder: bool = False) -> Iterator[list[dict]]:
    """Group prompt elements into lists of ``batch_size`` (the last one shorter unless ``drop_remainder``).

    Nothing is padded: each element keeps its own ``prompt_ids`` [L_i] and ``pixel_values`` [P_i, patch_dim];
    the inference engine takes a list of requests. Skip markers (and None) are dropped. Inside a Grain
    pipeline use ``ds.batch(batch_size, batch_fn=list)`` instead (what ``make_mixture(batch_size=...)`` does).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_prompts: batch_size must be a positive integer, got {batch_size!r}")
    batch: list[dict] = []
    for element in elements:
        if is_skipped(element):
            continue
        batch.append(element)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch and not drop_remainder:
        yield batch

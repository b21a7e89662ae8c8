"""One-call generation from a checkpoint directory: `hopchain generate` and its Python API.

    from hopchain_jax.infer.generate import Generator
    gen = Generator("Qwen2.5-VL-7B-Instruct/")           # config.json + safetensors (+ tokenizer files)
    result = gen("How many ladybugs are there?", images=["photo.jpg"], greedy=True)
    result["text"], result["output_ids"]

The prompt goes through the Qwen chat template, each image through the Qwen-VL image processor
(settings from the checkpoint's preprocessor_config.json when present), its <|image_pad|> is expanded
to the image's token count, and the token budget is checked before anything runs.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from hopchain_jax.infer.engine import InferenceEngine, Request, SamplingParams
from hopchain_jax.models import image_processor as improc
from hopchain_jax.models.checkpoint import load_pretrained
from hopchain_jax.models.config import DTYPE_NAMES
from hopchain_jax.models.sharding import make_mesh
from hopchain_jax.models.tokenizer import build_chat_prompt, check_image_token_budget, expand_image_tokens, load_tokenizer

def default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


class Generator:
    def __init__(self, model_dir: str | os.PathLike, *, dtype: str | None = None, mesh_shape: tuple[int, int, int] | None = None,
                 max_length: int | None = None, max_pixels: int | None = None, progress: bool = True,
                 max_slots: int = 256, decode_mesh_shape: tuple[int, int, int] | None = None):
        """mesh_shape: (data, fsdp, tensor) the weights load into; default puts every device on fsdp.
        decode_mesh_shape: the mesh decoding runs on, the weights resharded to it once (e.g. (-1, 1, 1):
        a whole copy on every device, no all-gather per decode step; (1, 1, -1): tensor-parallel);
        default: decode from the load layout. max_slots: the engine's decode slots (sequences decoded at
        once)."""
        dtype = dtype or default_dtype()
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"--dtype {dtype!r}: choose one of {DTYPE_NAMES}")
        self.mesh = make_mesh(*mesh_shape) if mesh_shape else make_mesh()
        decode_mesh = make_mesh(*decode_mesh_shape) if decode_mesh_shape else None   # checked before loading
        self.model = load_pretrained(model_dir, dtype=jnp.dtype(dtype), mesh=self.mesh, progress=progress)
        self.config = self.model.config
        self.tokenizer = load_tokenizer(model_dir)
        self.processor = improc.from_pretrained_dir(model_dir)
        if max_pixels is not None:
            self.processor = self.processor.replace(max_pixels=max_pixels)
        self.max_length = max_length or self.config.text.max_position_embeddings
        self.engine = InferenceEngine(self.model, self.tokenizer, mesh=self.mesh, rollout_mesh=decode_mesh,
                                      max_slots=max_slots)

    def build_request(self, prompt: str, images: Sequence[str | os.PathLike | Image.Image | np.ndarray] = (),
                      max_new_tokens: int = 256) -> tuple[Request, dict]:
        pil = []
        for im in images:
            if isinstance(im, (str, os.PathLike)):
                with Image.open(im) as f:
                    pil.append(f.convert("RGB"))
            else:
                pil.append(im)
        content = [{"type": "image"} for _ in pil] + [{"type": "text", "text": prompt}]
        return self.build_chat_request([{"role": "user", "content": content}], pil, max_new_tokens)

    def build_chat_request(self, messages: Sequence[dict], images: Sequence[Image.Image | np.ndarray] = (),
                           max_new_tokens: int = 256, *, limit_name: str = "--max-new-tokens") -> tuple[Request, dict]:
        """A Request for a whole conversation. messages: the chat template's format (content a string or a
        list of {"type": "text", "text"} and {"type": "image"} placeholders); images: one per placeholder,
        in order (PIL images or uint8 [H, W, 3]). limit_name: how error messages name max_new_tokens.
        Raises ValueError when the prompt and max_new_tokens do not fit in max_length."""
        text = build_chat_prompt(messages)
        pixel_values = grid = None
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # one <|image_pad|> per image
        placeholders = sum(1 for i in ids if i == self.config.image_token_id)
        if placeholders != len(images):
            raise ValueError(f"the prompt holds {placeholders} image placeholders but {len(images)} images were "
                             "given: pass one image per placeholder (and no <|image_pad|> in the text)")
        if len(ids) - placeholders + max_new_tokens > self.max_length:   # over budget before any image token
            raise ValueError(f"prompt ({len(ids) - placeholders} text tokens) + max_new_tokens ({max_new_tokens}) "
                             f"exceeds max_length {self.max_length}: shorten the prompt or lower {limit_name}")
        if len(images):
            processed = improc.preprocess(list(images), self.processor)
            pixel_values, grid = processed.pixel_values, processed.image_grid_thw
            merge = self.config.vision.spatial_merge_size
            try:
                check_image_token_budget(len(ids) + max_new_tokens, grid, merge, self.max_length,
                                         self.processor.max_pixels, patch_size=self.processor.patch_size,
                                         min_pixels=self.processor.min_pixels)
            except ValueError as e:
                raise ValueError(f"{e} (the text tokens include {limit_name}={max_new_tokens}: lowering it "
                                 "also helps)") from None
            ids = expand_image_tokens(ids, grid, merge, image_token_id=self.config.image_token_id)
        if max(ids) >= self.config.text.vocab_size:
            raise ValueError(f"token id {max(ids)} is outside the model's vocabulary ({self.config.text.vocab_size}): "
                             "the tokenizer does not belong to this checkpoint; put the model's tokenizer files "
                             "in its directory")
        if len(ids) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds max_length "
                             f"{self.max_length}: shorten the prompt or lower {limit_name}")
        request = Request(ids, pixel_values, grid, max_new_tokens)
        return request, {"input_ids": [int(i) for i in ids],
                         "image_grid_thw": grid.tolist() if grid is not None else []}

    def __call__(self, prompt: str, images=(), *, greedy: bool = False, max_new_tokens: int = 256,
                 temperature: float = 0.7, top_p: float = 0.8, top_k: int = 20, n: int = 1, stop: Sequence[str] = (),
                 seed: int = 0) -> dict:
        request, info = self.build_request(prompt, images, max_new_tokens)
        params = SamplingParams(temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                                top_k=0 if greedy else top_k, max_new_tokens=max_new_tokens, n=n, stop=tuple(stop),
                                seed=seed)
        outs = self.engine.generate([request], params)
        info["samples"] = [{"output_ids": o.token_ids, "text": o.text, "finish_reason": o.finish_reason,
                            "logprobs": o.logprobs} for o in outs]
        info["output_ids"], info["text"] = outs[0].token_ids, outs[0].text
        return info

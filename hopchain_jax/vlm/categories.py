"""Stage 1 with a model: the VLM lists the object categories an image shows (paper step 1), without
localising them; stage 2 (SAM3) is prompted with each name.

    identifier = VLMCategoryIdentifier(backend)
    parses = identifier.identify_many(images)   # CategoryParse per image: categories, or the reason none
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from hopchain_jax.synth.stages import ImageInput
from hopchain_jax.vlm.chat import ChatRequest, user_message
from hopchain_jax.vlm.parse import CategoryParse, parse_categories
from hopchain_jax.vlm.solvers import ChatBackend

CATEGORY_PROMPT = (
    "List the kinds of physical objects visible in this image that a segmentation model could outline one "
    "instance at a time (e.g. \"car\", \"traffic light\", \"dog\"). Use short singular nouns, each kind once; "
    "leave out background regions (sky, wall, floor) and text. Answer with a JSON list of strings only.")


class SkipImage(ValueError):
    """This image cannot go through the stage; the message says why (counted in the run summary)."""


@dataclasses.dataclass
class VLMCategoryIdentifier:
    """CategoryIdentifier backed by a chat VLM. max_categories: the most names kept per image."""

    backend: ChatBackend
    prompt: str = CATEGORY_PROMPT
    max_tokens: int = 2048
    max_categories: int = 32

    @property
    def name(self) -> str:
        return f"vlm-categories:{self.backend.model}"

    def identify_many(self, images: Sequence[ImageInput]) -> list[CategoryParse]:
        results = self.backend.complete([ChatRequest([user_message(self.prompt, images=[im.pixels])],
                                                     max_tokens=self.max_tokens) for im in images])
        out = []
        for res in results:
            if res.error:
                out.append(CategoryParse([], f"model error: {res.error}", transient=res.transient))
            elif res.finish_reasons and res.finish_reasons[0] == "length" and "]" not in res.texts[0]:
                out.append(CategoryParse([], "the answer was cut off by max_tokens before the list ended"))
            else:
                parsed = parse_categories(res.texts[0], self.max_categories)
                out.append(parsed)
        return out

    def identify(self, image: ImageInput) -> list[str]:
        parsed = self.identify_many([image])[0]
        if parsed.problem:
            raise SkipImage(f"{image.source}: {parsed.problem}")
        return parsed.categories

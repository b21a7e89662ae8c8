"""Stage 3 with a model: a VLM writes a multi-hop query over a chosen set of 3-6 instances (paper step 3).

For each image, `instance_combinations` draws distinct sets of 3-6 segmented instances (mixing categories
where it can). For each set the model sees the full image, then a crop of every instance of the set with
its id, category and 0-1000 box, then the rules of a HopChain query and the JSON it must answer with
(query_check.py). The crops are design aids only: the solver later sees the image and the question.

    writer = VLMQueryWriter(backend, combos_per_image=4)
    drafts = writer.write_many([(image, instances, rng), ...])   # one list of QueryDraft per image
    drafts[0][0].checked.problems    # [] when the query passed every rule
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from hopchain_jax.synth.stages import ImageInput
from hopchain_jax.vlm.chat import ChatRequest, image_part
from hopchain_jax.vlm.query_check import CheckedQuery, check_query
from hopchain_jax.vlm.solvers import ChatBackend

QUERY_RULES = """You design one multi-hop visual question about this image. Above are the full image and a crop \
of each object you must use, with its id, category and box [x0, y0, x1, y1] in 0-1000 coordinates (x to the \
right, y downwards, origin top-left). Write a question that:
- uses at least three of the listed objects, each in a real role, and no other object as a step of the chain;
- is a chain of at least 3 hops, each later hop depending on an earlier one (no shortcut skips the chain);
- has at least one Level-1 perception hop (one object: its category, colour, text, a count of its parts),
  one Level-2 perception hop (several objects: relative position, comparing sizes or values, counting a set)
  and one instance-chain hop (from an object already found to a new one through a relation, A -> B -> C);
- names objects only by what is visible (category, colour, position, text, relations), never by ids, boxes,
  coordinates, masks or crops: the solver sees only the image and the question;
- is unambiguous and has exactly one answer, a single number.
Answer with JSON only:
{"question": "...", "answer": <number>,
 "hops": [{"level": 1 or 2, "kind": "perception" or "instance_chain", "instances": ["<id>", ...],
           "depends_on": [<indices of earlier hops>], "text": "<what this hop finds>", "value": <its result>}]}"""


@dataclasses.dataclass(frozen=True)
class QueryDraft:
    """One stage-3 answer: the instance ids the model was given, the check of its output (question,
    answer, schema-v2 hops, problems) and the model's raw text (kept for the run log); error: the model
    call's failure, transient when it may succeed later (ChatResult.transient)."""

    instance_ids: tuple[str, ...]
    checked: CheckedQuery
    raw: str
    error: str | None = None
    transient: bool = False

    @property
    def problems(self) -> list[str]:
        return [f"model error: {self.error}"] if self.error else self.checked.problems


def instance_combinations(instances: Sequence[dict], count: int, rng: np.random.Generator,
                          min_size: int = 3, max_size: int = 6) -> list[tuple[str, ...]]:
    """Up to `count` distinct sets of instance ids, sizes drawn uniformly from min_size..min(max_size, n).
    Sets holding two or more categories come first when the image has them (chains need relations
    between different objects). Returns [] when the image has fewer than min_size instances."""
    ids = [inst["id"] for inst in instances]
    category = {inst["id"]: inst["category"] for inst in instances}
    if len(ids) < min_size:
        return []
    top = min(max_size, len(ids))
    seen: set[tuple[str, ...]] = set()
    mixed, single = [], []
    for _ in range(count * 20):
        if len(mixed) >= count:
            break
        size = int(rng.integers(min_size, top + 1))
        combo = tuple(sorted(rng.choice(ids, size=size, replace=False).tolist(), key=ids.index))
        if combo in seen:
            continue
        seen.add(combo)
        (mixed if len({category[i] for i in combo}) > 1 else single).append(combo)
    return (mixed + single)[:count]


def crop(pixels: np.ndarray, bbox: Sequence[int], margin: float = 0.1, max_side: int = 256,
         min_side: int = 28) -> np.ndarray:
    """The instance's box (0-1000 coordinates) cut from uint8 [H, W, 3] pixels with `margin` (fraction
    of the box side) on each side, resized so its longer side is at most max_side and its shorter side
    at least min_side px (so a VLM image processor accepts it). Returns uint8 [h, w, 3]."""
    from PIL import Image
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = (bbox[0] * w / 1000, bbox[1] * h / 1000, bbox[2] * w / 1000, bbox[3] * h / 1000)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    left, top = max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my)))
    right, bottom = min(w, max(left + 1, int(np.ceil(x1 + mx)))), min(h, max(top + 1, int(np.ceil(y1 + my))))
    piece = Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right]))
    scale = min(max_side / max(piece.size), 1.0)
    scale = max(scale, min_side / min(piece.size))
    size = (max(1, round(piece.width * scale)), max(1, round(piece.height * scale)))
    if size != piece.size:
        piece = piece.resize(size, Image.BICUBIC)
    return np.asarray(piece)


def query_messages(image: ImageInput, instances: Sequence[dict], rules: str = QUERY_RULES,
                   crop_side: int = 256) -> list[dict]:
    """The stage-3 prompt for one set of instances: the image, then each instance's id, category, box
    and crop, then the rules."""
    content: list[dict] = [image_part(image.pixels), {"type": "text", "text": "Objects to use:"}]
    for inst in instances:
        content.append({"type": "text", "text": f"{inst['id']}: {inst['category']}, box {list(inst['bbox'])}"})
        content.append(image_part(crop(image.pixels, inst["bbox"], max_side=crop_side)))
    content.append({"type": "text", "text": rules})
    return [{"role": "user", "content": content}]


@dataclasses.dataclass
class VLMQueryWriter:
    """Stage 3 backed by a chat VLM. combos_per_image: sets of instances offered per image (one query
    each); temperature: sampling temperature of the writer; max_tokens: its answer budget."""

    backend: ChatBackend
    combos_per_image: int = 4
    min_instances: int = 3
    max_instances: int = 6
    temperature: float = 0.7
    max_tokens: int = 4096
    crop_side: int = 256
    rules: str = QUERY_RULES

    @property
    def name(self) -> str:
        return f"vlm-writer:{self.backend.model}"

    def write_many(self, jobs: Sequence[tuple[ImageInput, Sequence[dict], np.random.Generator]]) -> list[list[QueryDraft]]:
        """jobs: (image, its instances, rng) per image. One batched backend call for all of them; one
        list of drafts per image, one draft per instance set (in the order the sets were drawn)."""
        plan: list[tuple[int, tuple[str, ...]]] = []
        requests = []
        for k, (image, instances, rng) in enumerate(jobs):
            by_id = {inst["id"]: inst for inst in instances}
            for combo in instance_combinations(instances, self.combos_per_image, rng, self.min_instances,
                                               self.max_instances):
                plan.append((k, combo))
                requests.append(ChatRequest(query_messages(image, [by_id[i] for i in combo], self.rules, self.crop_side),
                                            temperature=self.temperature, max_tokens=self.max_tokens,
                                            salt=f"stage3:{image.sha256}:{','.join(combo)}"))
        results = self.backend.complete(requests)
        drafts: list[list[QueryDraft]] = [[] for _ in jobs]
        for (k, combo), res in zip(plan, results):
            if res.error:
                drafts[k].append(QueryDraft(combo, CheckedQuery(None, None, [], []), "", error=res.error,
                                            transient=res.transient))
                continue
            text = res.texts[0] if res.texts else ""
            checked = check_query(text, [inst["id"] for inst in jobs[k][1]])
            used = {i for hop in checked.hops for i in hop["instance_ids"]}
            extra = sorted(used - set(combo))
            problems = list(checked.problems)
            if extra:
                problems.append(f"the chain uses objects it was not given: {extra}")
            if res.finish_reasons and res.finish_reasons[0] == "length" and checked.question is None:
                problems.insert(0, "the answer was cut off by max_tokens")
            drafts[k].append(QueryDraft(combo, dataclasses.replace(checked, problems=problems), text))
        return drafts


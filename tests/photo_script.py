"""Real photographs (scikit-image's bundled `skimage.data` images) with a scripted VLM and a classical
segmenter, for end-to-end runs of `hopchain synth --images` (tests/test_photo_real.py).

ScriptedPhotoVLM answers the pipeline's three kinds of request the way a model would, from what it computes
on the pixels it is sent:
  stage 1  a fixed list of category names per photo (recognised by its pixels' hash);
  stage 3  a 3-hop chain over the offered objects: "Find the leftmost coin. Find the coin nearest to it. How
           many coins lie to the right of that coin?", the count taken over every object the classical
           segmentation finds in the photo; every fourth draft (by a hash of the offered set) is prose
           instead of JSON (a rule breaker, rejected at stage 3);
  stage 4  the smallest answer the writer recorded for that question (two offered sets can give one question
           text different counts; the smallest keeps the solver's answer a function of the question alone,
           whatever order the writer's requests were served in), except for questions whose hash is 0 mod
           3 (one more: a disagreeing solver).
OtsuSegmenter is stage 2 for the countable categories ("coin", "star"): an Otsu threshold, connected
components of at least MIN_AREA pixels; other categories find nothing (the photo is then skipped: fewer
than 3 instances).
"""
from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

from hopchain_jax.synth.stages import ImageInput, Segmentation
from hopchain_jax.vlm.categories import CATEGORY_PROMPT
from hopchain_jax.vlm.chat import ChatResult

from oracle_vlm import decode_part, pixels_sha, stable_hash

#: file name in skimage/data -> (saved as, categories the scripted VLM lists)
PHOTOS = {"coins.png": ("coins.png", ["coin"]), "hubble_deep_field.jpg": ("hubble.png", ["star"]),
          "astronaut.png": ("astronaut.png", ["person", "flag"]), "coffee.png": ("coffee.png", ["cup"]),
          "chelsea.png": ("chelsea.png", ["cat"])}
COUNTABLE = ("coin", "star")
MIN_AREA = 100
SIDES = {0: ("leftmost", 0, min), 1: ("rightmost", 0, max), 2: ("topmost", 1, min), 3: ("bottommost", 1, max)}


def write_photos(folder) -> dict[str, list[str]]:
    """The photos as RGB PNGs in `folder`; returns {pixel sha256: the categories the scripted VLM lists}."""
    import os

    import skimage
    folder.mkdir(parents=True, exist_ok=True)
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    out = {}
    for source, (name, categories) in PHOTOS.items():
        pixels = np.asarray(Image.open(os.path.join(data, source)).convert("RGB"))
        Image.fromarray(pixels).save(folder / name)
        out[pixels_sha(pixels)] = categories
    return out


def otsu_objects(pixels: np.ndarray) -> tuple[list[tuple[int, int, int, int, int]], np.ndarray]:
    """Bright connected components: ([(x0, y0, x1, y1, area) in pixels, in label order], labels int32 [H, W])."""
    from skimage import filters, measure
    gray = pixels.astype(np.float64).mean(-1)
    labels = measure.label(gray > filters.threshold_otsu(gray))
    regions = [r for r in measure.regionprops(labels) if r.area >= MIN_AREA]
    kept = np.zeros(labels.shape, np.int32)
    boxes = []
    for k, r in enumerate(regions):
        y0, x0, y1, x1 = r.bbox
        kept[labels == r.label] = k + 1
        boxes.append((x0, y0, x1, y1, int(r.area)))
    return boxes, kept


class OtsuSegmenter:
    """Stage 2 for countable bright objects (module docstring)."""

    name = "otsu-segmenter"

    def segment_with_report(self, image: ImageInput, categories) -> tuple[Segmentation, dict]:
        H, W = image.pixels.shape[:2]
        category = next((c for c in categories if c in COUNTABLE), None)
        if category is None:
            return Segmentation([], np.zeros((H, W), np.uint8)), {"too_small": 0}
        boxes, labels = otsu_objects(image.pixels)
        instances = [{"id": f"i{k}", "category": category,
                      "bbox": [round(x0 * 1000 / W), round(y0 * 1000 / H), round(x1 * 1000 / W), round(y1 * 1000 / H)],
                      "area": area, "score": 1.0, "attributes": {}, "occludes": []}
                     for k, (x0, y0, x1, y1, area) in enumerate(boxes)]
        return Segmentation(instances, labels.astype(np.uint8)), {"too_small": 0}

    def segment(self, image, categories):
        return self.segment_with_report(image, categories)[0]


class ScriptedPhotoVLM:
    """ChatBackend (model, complete) answering from the photos' pixels (module docstring). `book` maps a
    question to the answers its writer recorded for it."""

    def __init__(self, photos: dict[str, list[str]], model: str = "photo-script"):
        self.photos, self.model = photos, model
        self.book: dict[str, set[int]] = {}
        self.calls = self.requests = 0

    def complete(self, requests):
        self.calls += 1
        self.requests += len(requests)
        return [self._one(r) for r in requests]

    @staticmethod
    def _result(text: str, n: int) -> ChatResult:
        return ChatResult([text] * n, ["stop"] * n, {"prompt_tokens": 1, "completion_tokens": 1})

    def _one(self, req) -> ChatResult:
        content = req.messages[-1]["content"]
        images = [decode_part(p) for p in content if p["type"] == "image_url"]
        text = "\n".join(p["text"] for p in content if p["type"] == "text")
        if not images:
            return self._result("OK", req.n)
        if text == CATEGORY_PROMPT:
            return self._result(json.dumps(self.photos[pixels_sha(images[0])]), req.n)
        if text.startswith("Objects to use:"):
            return self._result(self._write(images[0], text), req.n)
        question = text.split("\nThink step by step", 1)[0]
        answer = min(self.book[question]) + (1 if stable_hash(question) % 3 == 0 else 0)
        return self._result(f"I count them one by one, so the answer is \\boxed{{{answer}}}.", req.n)

    def _write(self, pixels: np.ndarray, text: str) -> str:
        offered = {m[0]: (m[1], [int(v) for v in m[2:]]) for m in
                   re.findall(r"^(i\d+): ([^,]+), box \[(\d+), (\d+), (\d+), (\d+)\]", text, flags=re.MULTILINE)}
        ids = sorted(offered, key=lambda i: int(i[1:]))
        if stable_hash(",".join(ids)) % 4 == 0:
            return "These objects look alike; I would rather not write a question about them."
        category = offered[ids[0]][0]
        centre = {i: ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for i, (_, b) in offered.items()}
        word, axis, pick = SIDES[stable_hash(",".join(ids)) % 4]
        a = pick(ids, key=lambda i: (centre[i][axis], int(i[1:])))
        b = min((i for i in ids if i != a),
                key=lambda i: ((centre[i][0] - centre[a][0]) ** 2 + (centre[i][1] - centre[a][1]) ** 2, int(i[1:])))
        H, W = pixels.shape[:2]
        every, _ = otsu_objects(pixels)   # the count is over the whole photo, as the question asks
        bx = centre[b][0] * W / 1000
        count = sum((x0 + x1) / 2 > bx for x0, _, x1, _, _ in every)
        plural = category + "s"
        question = (f"Find the {word} {category}. Find the {category} nearest to it. How many {plural} lie to the "
                    f"right of that {category}?")
        self.book.setdefault(question, set()).add(count)
        hops = [{"kind": "perception", "level": 1, "instances": [a], "depends_on": [],
                 "text": f"Find the {word} {category}.", "value": a},
                {"kind": "instance_chain", "level": 2, "instances": [a, b], "depends_on": [0],
                 "text": f"Find the {category} nearest to it.", "value": b},
                {"kind": "perception", "level": 2, "instances": ids, "depends_on": [1],
                 "text": f"Count the {plural} to the right of that {category}.", "value": count}]
        return "```json\n" + json.dumps({"question": question, "answer": count, "hops": hops}) + "\n```"

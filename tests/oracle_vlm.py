"""A scripted VLM that answers from the procedural oracle: the stand-in for a competent model that lets
the photo pipeline's success path run offline.

Photos are rendered procedural scenes saved as PNG; the backend recognises each image by the SHA-256 of
its pixels and answers:
  stage 1 (category prompt)     the scene's categories as a fenced JSON list, some in the plural;
                                 images listed in `blind` get prose without a list (a malformed answer)
  stage 3 (an "Objects to use:" prompt)  a chain composed by the procedural ChainComposer over exactly
                                 the offered instances, as the stage-3 JSON; no chain -> prose; a
                                 third of the chains come back naming a box and without hops
  stage 4 (anything else)       solvers: the answer the writer recorded, except questions the
                                 `wrong_solver` rule picks (answer + 1); calibrator: always right on
                                 questions the `easy` rule picks, else right on half its samples
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zlib

import numpy as np
from PIL import Image

from hopchain_jax.synth.composer import ChainComposer, ComposerConfig
from hopchain_jax.synth.stages import ImageInput, OracleSegmenter, Segmentation
from hopchain_jax.vlm.categories import CATEGORY_PROMPT
from hopchain_jax.vlm.chat import ChatResult
from hopchain_jax.world.render import render_scene
from hopchain_jax.world.scene import sample_scene


def pixels_sha(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def decode_part(part: dict) -> np.ndarray:
    url = part["image_url"]["url"]
    data = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def write_scene_photos(folder, seeds) -> dict:
    """Render scenes `seeds` as PNG files in folder; returns {pixel sha256: RenderedScene}."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes = {}
    for seed in seeds:
        scene = render_scene(sample_scene(seed))
        Image.fromarray(scene.image).save(folder / f"scene-{seed:03d}.png")
        scenes[pixels_sha(scene.image)] = scene
    return scenes


class OracleSceneSegmenter:
    """Stage 2 stand-in: the oracle segmentation of a rendered scene recognised by its pixels."""

    name = "oracle-photo-segmenter"

    def __init__(self, scenes: dict):
        self.scenes = scenes

    def segment_with_report(self, image: ImageInput, categories) -> tuple[Segmentation, dict]:
        scene = self.scenes[pixels_sha(image.pixels)]
        seg = OracleSegmenter().segment(ImageInput(image.pixels, image.source, scene), categories)
        return seg, {"low_score": 0, "too_small": 0}

    def segment(self, image, categories):
        return self.segment_with_report(image, categories)[0]


class OracleVLM:
    """ChatBackend (model, complete) answering from the scenes (see the module docstring). `book` maps a
    question to its answer: the writer fills it, solvers and calibrator read it (share one book)."""

    def __init__(self, scenes: dict, model: str = "oracle-vlm", book: dict | None = None, blind=(),
                 wrong_solver=lambda q: stable_hash(q) % 5 == 0, easy=lambda q: stable_hash(q) % 2 == 0):
        self.scenes, self.model = scenes, model
        self.book = {} if book is None else book
        self.blind, self.wrong_solver, self.easy = set(blind), wrong_solver, easy
        self.calls = 0
        self.requests = 0

    def complete(self, requests):
        self.calls += 1
        self.requests += len(requests)
        return [self._one(r) for r in requests]

    def _one(self, req) -> ChatResult:
        content = req.messages[-1]["content"]
        images = [decode_part(p) for p in content if p["type"] == "image_url"]
        text = "\n".join(p["text"] for p in content if p["type"] == "text")
        if not images:   # e.g. the photo pipeline's probe call: a real VLM answers text alone too
            return self._result("OK", req.n)
        scene = self.scenes[pixels_sha(images[0])]
        if text == CATEGORY_PROMPT:
            return self._result(self._categories(scene), req.n)
        if text.startswith("Objects to use:"):
            return self._result(self._write(scene, images[0], text), req.n)
        question = text.split("\nThink step by step", 1)[0]
        answer = self.book[question]
        if req.salt == "calibration":
            right = req.n if self.easy(question) else req.n // 2
            outs = [f"\\boxed{{{answer}}}"] * right + [f"\\boxed{{{answer + 7}}}"] * (req.n - right)
            return ChatResult(outs, ["stop"] * req.n, {})
        got = answer + 1 if self.wrong_solver(question) else answer
        return self._result(f"Counting carefully... so the answer is \\boxed{{{got}}}.", req.n)

    @staticmethod
    def _result(text: str, n: int) -> ChatResult:
        return ChatResult([text] * n, ["stop"] * n, {"prompt_tokens": 1, "completion_tokens": 1})

    def _categories(self, scene) -> str:
        if pixels_sha(scene.image) in self.blind:
            return "I see a colourful scene with several things in it."
        names = sorted({o.spec.category for o in scene.objects})
        names = [n + "s" if k % 2 else n for k, n in enumerate(names)] + names[:1]  # plurals and a repeat
        return "<think>let me look</think>\n```json\n" + json.dumps(names) + "\n```\nThose are all."

    def _write(self, scene, pixels, text) -> str:
        ids = re.findall(r"^(i\d+): ", text, flags=re.MULTILINE)
        instances = OracleSegmenter().segment(ImageInput(pixels, "x", scene),
                                              sorted({o.spec.category for o in scene.objects})).instances
        offered = [inst for inst in instances if inst["id"] in ids]
        chains = ChainComposer(offered, scene.image.shape[1], scene.image.shape[0],
                               ComposerConfig(queries_per_image=1)).compose(np.random.default_rng(stable_hash(text)))
        if not chains:
            return "These objects do not support a clear chain."
        full = chains[0]["full"]
        if stable_hash(full.question) % 3 == 0:  # a rule breaker: names a box the solver never sees
            return json.dumps({"question": "Look at the object in box [10, 20, 300, 400]. " + full.question,
                               "answer": full.answer, "hops": []})
        self.book[full.question] = full.answer
        hops = [{"level": h["level"], "kind": h["kind"], "instances": h["instance_ids"], "depends_on": h["depends_on"],
                 "text": h["text"], "value": (h["combine"] or h)["value"]} for h in full.hops]
        return json.dumps({"question": full.question, "answer": full.answer, "hops": hops})

"""Perception warm-up (TrainConfig.mode="vision"): the vision tower and merger learn dense per-token
targets taken from a dataset's instance masks before any language training.

Why (benchmarks/RESULTS.md, issue 27 pilots): trained from random init together with the language model,
the tiny model's image features collapse into one shared vector and the model answers from priors; a
tower first taught, token by token, what lies under each merged image token, then kept frozen
(`freeze_vision`) while SFT trains the language model, makes the same model read the image.

Targets, per merged image token (a block of (patch_size * merge)^2 resized pixels, in the tokens' raster
order), from the record's label map (uint8 [H, W]: 0 background, k + 1 = instance "i<k>") and its
instances' attributes:
  cover     float  fraction of the block any instance covers                 (sigmoid cross-entropy)
  category  int    0: no instance holds >= MIN_SHARE of the block; else 1 + index in CATEGORY_NAMES of the
                   instance covering most of it (len(CATEGORY_NAMES) + 1: a category outside the catalog)
  color     int    that instance's colour (index in COLOR_NAMES; the last class: other); -1 (ignored)
                   where the token has no instance or the colour is unknown
  parts     int    its countable parts (dots, eyes, ...), clipped to MAX_PARTS; 0 for objects without
                   parts; -1 where no instance
  number    int    the number it shows (cards), clipped to MAX_NUMBER; 0 for none; -1 where no instance
  counts    int [len(CATEGORY_NAMES)]  the whole image's instance count of each catalog category, clipped to
                   MAX_COUNT, the same at every token (softmax cross-entropy per category): every image token
                   carries the scene's counts, so a question naming a category only has to pick one
Why counts are broadcast (benchmarks/RESULTS.md, session 5 pilots): on two-colour discs the tiny LM binds
the colour a question names to the answer once every token carries both colours' counts (held-out 67-78%
against 30-48%), and not when the counts are readable from the mean token only (41.5%).
Each head is linear on the RMS-normalised merged token (the language model's input); the heads are
auxiliary (saved in the run's checkpoints, not in the exported model). The language model is not trained.

Shapes: a step packs the images of prompts_per_step records into one tower call of P patches (padded to a
bucket, at least TrainConfig.pad_to_patches) giving M = P / merge^2 merged tokens; targets are [M] (padding
tokens masked out).
"""
from __future__ import annotations

import json
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from hopchain_jax.models.qwen_vl import QwenVL, trainable_filter
from hopchain_jax.models.sharding import activation_sharding
from hopchain_jax.rl.update import guarded_apply, lr_schedule, make_optimizer, opt_state_shardings
from hopchain_jax.models.vision import pack_images, padded_patches, patch_bucket
from hopchain_jax.world.catalog import CATEGORIES, COLORS

CATEGORY_NAMES = tuple(CATEGORIES)
COLOR_NAMES = tuple(COLORS)
MAX_PARTS = 9
MAX_NUMBER = 20
MAX_COUNT = 6
MIN_SHARE = 0.25
#: classes of each categorical head (category: background + catalog + other; color: catalog + other)
CLASS_HEADS = {"category": len(CATEGORY_NAMES) + 2, "color": len(COLOR_NAMES) + 1, "parts": MAX_PARTS + 1,
               "number": MAX_NUMBER + 1}
#: heads with one categorical target per (token, slot): counts = the whole image's count of each catalog
#: category (slots), the same at every token, clipped to MAX_COUNT
SLOT_HEADS = {"counts": (len(CATEGORY_NAMES), MAX_COUNT + 1)}
TARGET_KEYS = ("cover",) + tuple(CLASS_HEADS) + tuple(SLOT_HEADS)


def token_targets(record: dict, labels: np.ndarray, grid_thw, patch_size: int, merge: int) -> dict[str, np.ndarray]:
    """Per-token targets (module docstring) of one image: dict of [h * w / merge^2] arrays in raster order.

    labels: uint8 [H, W] of the original image; grid_thw: its (1, h, w) patch grid after preprocessing."""
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(-1)[:3])
    if t != 1:
        raise ValueError(f"record {record.get('id')!r}: the vision warm-up takes still images (grid t = 1), got t = {t}")
    side = patch_size * merge
    rows, cols = h // merge, w // merge
    resized = np.asarray(Image.fromarray(np.asarray(labels, np.uint8)).resize((w * patch_size, h * patch_size),
                                                                             Image.NEAREST))
    k = int(resized.max()) + 1
    blocks = resized.reshape(rows, side, cols, side).transpose(0, 2, 1, 3).reshape(rows * cols, side * side)
    share = np.stack([(blocks == v).mean(-1) for v in range(k)], -1)          # [M, k]
    cover = (1.0 - share[:, 0]).astype(np.float32)
    m = rows * cols
    out = {"cover": cover, **{name: np.full(m, -1, np.int32) for name in CLASS_HEADS}}
    out["category"][:] = 0
    counts = np.zeros(len(CATEGORY_NAMES), np.int32)
    for inst in record.get("instances", []):
        if inst.get("category") in CATEGORY_NAMES:
            counts[CATEGORY_NAMES.index(inst["category"])] += 1
    out["counts"] = np.tile(np.minimum(counts, MAX_COUNT)[None, :], (m, 1))
    if k == 1:
        return out
    top = 1 + share[:, 1:].argmax(-1)                                          # label value of the main instance
    held = share[np.arange(m), top] >= MIN_SHARE
    by_id = {inst["id"]: inst for inst in record.get("instances", [])}
    for value in np.unique(top[held]):
        inst = by_id.get(f"i{value - 1}")
        if inst is None:
            raise ValueError(f"record {record.get('id')!r}: its label map has value {value} but no instance "
                             f"'i{value - 1}'; the labels and records of this dataset do not match")
        attrs = inst.get("attributes") or {}
        tokens = held & (top == value)
        cat = inst.get("category")
        out["category"][tokens] = 1 + CATEGORY_NAMES.index(cat) if cat in CATEGORY_NAMES else len(CATEGORY_NAMES) + 1
        color = attrs.get("color")
        if color is not None:
            out["color"][tokens] = COLOR_NAMES.index(color) if color in COLOR_NAMES else len(COLOR_NAMES)
        out["parts"][tokens] = min(int(attrs.get("part_count") or 0), MAX_PARTS)
        text = attrs.get("text")
        out["number"][tokens] = min(int(text), MAX_NUMBER) if isinstance(text, str) and text.isdigit() else 0
    return out


def element_targets(dataset, element: dict, patch_size: int, merge: int) -> dict[str, np.ndarray]:
    """token_targets of a prompt element (data/prompts.BuildPrompt output) of `dataset` (a HopChainDataset)."""
    record = json.loads(element["record"])
    if not record.get("instances"):
        raise ValueError(f"record {record.get('id')!r} of {dataset.root}: no instances (an imported dataset has no "
                         "instance masks); the vision warm-up needs data from `hopchain synth` or the photo "
                         "pipeline -- train on this dataset with --mode sft or rl")
    labels = dataset.labels(record["image"]["shard"], record["image"]["index"])
    return token_targets(record, labels, element["image_grid_thw"], patch_size, merge)


class TokenTargets(grain.transforms.Map):
    """Grain Map after BuildPrompt: adds `vision_targets` (token_targets) read from the element's source
    dataset (the `source` tag of data/mixture.py). Opens each dataset once, thread-safe."""

    def __init__(self, patch_size: int, merge: int):
        self.patch_size, self.merge = int(patch_size), int(merge)
        self._open: dict[str, object] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"patch_size": self.patch_size, "merge": self.merge}

    def __setstate__(self, state):
        self.__init__(state["patch_size"], state["merge"])

    def _dataset(self, root: str):
        from hopchain_jax.data.store import HopChainDataset
        with self._lock:
            if root not in self._open:
                self._open[root] = HopChainDataset(root)
            return self._open[root]

    def map(self, element: dict) -> dict:
        if element.get("prompt_ids") is None:   # a skip marker (over budget): DropSkipped removes it
            return element
        if "source" not in element:
            raise ValueError("TokenTargets needs elements tagged with their dataset (`source`, data/mixture.py)")
        return {**element, "vision_targets": element_targets(self._dataset(element["source"]), element,
                                                             self.patch_size, self.merge)}


def pack_targets(elements: list[dict], config, min_patches: int = 0) -> tuple[dict, dict]:
    """(tower inputs, targets) of the elements' images, packed for one step: vision arrays with P patches
    (bucketed, >= min_patches), targets [M = P / merge^2] with `valid` marking real tokens."""
    entries = [(el["pixel_values"], el["image_grid_thw"]) for el in elements]
    need = padded_patches(np.concatenate([np.asarray(g).reshape(-1, 3) for _, g in entries]), config)
    vis, _ = pack_images(entries, config, max(need, patch_bucket(min_patches, config) if min_patches else 0))
    m = vis.pixel_values.shape[0] // config.vision.spatial_merge_size ** 2
    targets = {}
    for key in TARGET_KEYS:
        parts = np.concatenate([np.asarray(el["vision_targets"][key]) for el in elements])
        fill = 0.0 if key == "cover" else -1
        targets[key] = np.concatenate([parts, np.full((m - len(parts),) + parts.shape[1:], fill, parts.dtype)])
    targets["valid"] = np.arange(m) < vis.num_tokens
    if int(vis.num_tokens) != sum(len(el["vision_targets"]["cover"]) for el in elements):
        raise ValueError("vision targets and image tokens disagree in number: were the targets made with this "
                         "model's patch and merge sizes?")
    return vis.arrays(), targets


def _ce(logits, target, use):
    """Summed cross-entropy and correct count of int targets where `use` (both float32 scalars)."""
    safe = jnp.where(use, target, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    hit = jnp.argmax(logits, -1) == safe
    return jnp.sum(jnp.where(use, nll, 0.0)), jnp.sum(jnp.where(use, hit, False).astype(jnp.float32))


class VisionUpdater:
    """The trainable state of a warm-up run: {"vision": the tower and merger's parameters, "heads": the
    linear target heads}, its AdamW state (same schedule and clipping as Updater), and the jitted step.
    The language model's parameters are constants (no gradient, no optimizer state)."""

    def __init__(self, model: QwenVL, cfg, mesh: Mesh):
        self.cfg, self.mesh = cfg, mesh
        self.graphdef, vision, self.frozen = nnx.split(model, trainable_filter(freeze_language=True), ...)
        width = model.config.text.hidden_size
        replicated = NamedSharding(mesh, P())
        heads = {"cover": {"w": jnp.zeros((width, 1)), "b": jnp.zeros((1,))},
                 **{name: {"w": jnp.zeros((width, n)), "b": jnp.zeros((n,))} for name, n in CLASS_HEADS.items()},
                 **{name: {"w": jnp.zeros((width, a * b)), "b": jnp.zeros((a * b,))} for name, (a, b) in SLOT_HEADS.items()}}
        self.params = {"vision": vision, "heads": jax.device_put(heads, replicated)}
        self.tx = make_optimizer(cfg)
        param_shardings = jax.tree.map(lambda x: x.sharding, self.params)
        opt_shardings = opt_state_shardings(self.tx, self.params, mesh)
        self.opt_state = jax.jit(self.tx.init, out_shardings=opt_shardings)(self.params)
        self._step = jax.jit(self._step_impl, donate_argnums=(0, 1),
                             out_shardings=(param_shardings, opt_shardings, replicated))
        self._metrics = jax.jit(self._loss)

    def model(self) -> QwenVL:
        return nnx.merge(self.graphdef, self.params["vision"], self.frozen)

    def put(self, vision: dict, targets: dict) -> tuple[dict, dict]:
        place = lambda x: jax.device_put(x, activation_sharding("vision", np.shape(x), self.mesh))  # noqa: E731
        return {k: place(v) for k, v in vision.items()}, {k: place(v) for k, v in targets.items()}

    def _loss(self, params, frozen, vision, targets):
        model = nnx.merge(self.graphdef, params["vision"], frozen)
        features = model.encode_images(vision, remat=self.cfg.remat)[0].astype(jnp.float32)   # [M, D]
        f = features * jax.lax.rsqrt(jnp.mean(features * features, -1, keepdims=True) + 1e-6)
        heads = params["heads"]
        valid = targets["valid"]
        tokens = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
        z = (f @ heads["cover"]["w"] + heads["cover"]["b"])[:, 0]
        cover = targets["cover"]
        bce = jnp.sum(jnp.where(valid, optax.sigmoid_binary_cross_entropy(z, cover), 0.0)) / tokens
        stats = {"cover_loss": bce, "cover_accuracy": jnp.sum(
            jnp.where(valid, (z > 0) == (cover > 0.5), False).astype(jnp.float32)) / tokens}
        loss = bce
        for name in CLASS_HEADS:
            target = targets[name]
            use = valid & (target >= 0)
            n = jnp.maximum(jnp.sum(use.astype(jnp.float32)), 1.0)
            nll, hits = _ce(f @ heads[name]["w"] + heads[name]["b"], target, use)
            loss = loss + nll / n
            stats[f"{name}_loss"], stats[f"{name}_accuracy"] = nll / n, hits / n
        for name, (slots, classes) in SLOT_HEADS.items():
            target = targets[name]                                                        # [M, slots]
            use = valid[:, None] & (target >= 0)
            n = jnp.maximum(jnp.sum(use.astype(jnp.float32)), 1.0)
            logits = (f @ heads[name]["w"] + heads[name]["b"]).reshape(f.shape[0], slots, classes)
            nll, hits = _ce(logits, target, use)
            loss = loss + nll / tokens   # summed over the slots: each category counts like a head of its own
            stats[f"{name}_loss"], stats[f"{name}_accuracy"] = nll / tokens, hits / n
            present = use & (target > 0)     # the informative slots (most categories are absent: count 0)
            stats[f"{name}_present_accuracy"] = _ce(logits, target, present)[1] / jnp.maximum(
                jnp.sum(present.astype(jnp.float32)), 1.0)
        return loss, stats

    def _step_impl(self, params, opt_state, frozen, vision, targets):
        (loss, stats), grads = jax.value_and_grad(self._loss, has_aux=True)(params, frozen, vision, targets)
        return guarded_apply(self.tx, params, opt_state, loss, grads, stats)

    def step(self, vision: dict, targets: dict) -> dict:
        """One optimizer step on packed images + targets (pack_targets, put); returns its metrics."""
        self.params, self.opt_state, stats = self._step(self.params, self.opt_state, self.frozen, vision, targets)
        return stats

    def metrics(self, vision: dict, targets: dict) -> dict:
        """Loss and per-head token accuracies of the current weights, no update (held-out evaluation)."""
        loss, stats = self._metrics(self.params, self.frozen, vision, targets)
        return dict(stats, loss=loss)

    def learning_rate(self, step: int) -> float:
        return float(lr_schedule(self.cfg)(step))

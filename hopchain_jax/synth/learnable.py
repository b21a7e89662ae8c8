"""The learnable world: few large objects and 1-2 hop questions with small, balanced answers.

A benchmark for learning from images with a tiny vision-language model trained from random init needs a
world such a model can see and questions it can learn: the default world (12-22 objects, 3-6 hop chains,
answers up to ~100) is far beyond it, and merely shrinking its scenes leaves the composer's single hops
answering "1" most of the time (a blind prior, not perception). This world differs in three ways:

Scenes (`sample_learnable_scene`): a small square canvas (the preset: 448 x 448, so images downscale well
to 112-160 px) split into a `grid` x `grid` lattice; each of the scene's 2-5 objects sits alone in one
random cell, large (tile edge `edge_range`: over a quarter of the canvas side), nearly upright, never
overlapping or hidden, on a plain backdrop without clutter. 1-3 categories from `categories`; countable
parts (dots, eyes, pips, windows) and card numbers are drawn uniformly from `answer_range`, so every
value a question reads is a small integer and no value is a priori likelier than another. The scene
population (objects, categories, instances per category, colours, backdrop) is the SceneConfig's; with
chance `p_focus` one category with parts or a number gets at least two objects (the 2-hop forms pick
among such objects).

Questions (`LearnableComposer`): every referring expression is checked with the main composer's
clarity checks (clarity.ClearScene: clear nearest/farthest margins, direction cones with a dead
zone, clear positional extremes) and every record passes the counterfactual check of counterfactual.py
(another instance of a picked category, or a count off by one, changes the answer), so each question
needs the image. Forms:
  1 hop ("single"):  count       "How many balls are there?"                         count          L2
                     count_color "How many red balls are there?"                     count          L2
                     count_parts "How many dots does the ladybug have?"              count_parts    L1
                     read_number "What number is written on the card?"               read_number    L1
                     count_rel   "How many mugs are directly to the left of the die?" count          L2
  2 hops ("half"):   relate      "Find the ladybug closest to the ball. How many dots does that ladybug
                                  have?"                                    relate (chain) -> value L1
                     superlative "Find the leftmost card. What number is written on that card?"
                                                                            superlative L2 -> value L1
                     select      "Find the red die. How many pips does that die have?"
                                                                            select L1 -> value L1
                     count_sum   "Count the balls. Count the mugs. What is the sum of the two numbers?"
                                                                            count L2 -> count L2 + add
Objects are named directly by what is visible: "the ball" when it is the only ball, else "the red
ball" when its colour is unique among the balls. Answers lie in `answer_range` (default 1..5).

Variants: 1-2 hop chains cannot meet the full-chain invariants of SPEC §3 (>= 3 hops, 3-6 instances,
Level-1 + Level-2 + instance-chain hops), so records use the ablation labels, which keep every other
rule: 2-hop questions are "half", 1-hop questions "single". There are no "full" records; each record's
`variant_of` names the (absent) full chain of its own program (record.record_id(image, program, "full")).
Evaluate with `--variant half single` (eval / TrainConfig.eval_variants default to full + external).

Balance (`Balancer`, one per variant and shard, built from balance.AnswerBalance as the main composer
uses it): per image, of all clear candidates, up to `singles_per_image` / `halves_per_image` are kept,
each time the one that the text-only rule of stats.py (with the priors kept so far) would not guess and
whose form and answer are rarest so far; no answer may pass `max_answer_share` (+ `balance_slack`) of
the variant's records, of its form's records, or of the values read by its kind of step ("how many
balls", "the dots of a ladybug"), so neither the answer prior nor a per-question-type prior pays off.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.balance import AnswerBalance
from hopchain_jax.synth.clarity import ClearScene, Reject
from hopchain_jax.synth.composer_config import ComposerConfig
from hopchain_jax.synth.hops import HOP_FORMS, templates, there_are
from hopchain_jax.synth.realize import RealizedQuery
from hopchain_jax.synth.counterfactual import counterfactual_failures
from hopchain_jax.synth.program import DIRECTIONS, ProgramError
from hopchain_jax.synth.record import build_record
from hopchain_jax.world.catalog import CATEGORIES, COLORS, ObjectSpec, max_angle
from hopchain_jax.world.draw import object_sprite, shadow_geometry
from hopchain_jax.world.scene import Placement, Scene, SceneConfig

COMPOSER_NAME = "learnable-chain-v1"
SINGLE_FORMS = ("count", "count_color", "count_parts", "read_number", "count_rel")
HALF_FORMS = ("relate", "superlative", "select", "count_sum")
LEARNABLE_CATEGORIES = ("ladybug", "monster", "die", "house", "card", "ball", "mug", "kite", "umbrella")
RELATIONS = ("nearest", "farthest", *DIRECTIONS)
POSITION_KEYS = (("center_x", "min"), ("center_x", "max"), ("center_y", "min"), ("center_y", "max"))

# Whole-category counts ("count the balls") have no template among the main composer's hop forms.
COUNT_SENTENCES = ("Count the {cats}.", "Count how many {cats} there are.", "Note how many {cats} the picture shows.")
COUNT_QUESTIONS = ("How many {cats} are there?", "How many {cats} are in the picture?",
                   "What is the number of {cats} in the image?")
COUNT_COLOR_SENTENCES = ("Count the {color} {cats}.", "Count how many {color} {cats} there are.")
COUNT_COLOR_QUESTIONS = ("How many {color} {cats} are there?", "What is the number of {color} {cats} in the picture?")


@dataclasses.dataclass(frozen=True)
class LearnableConfig:
    """The learnable world's objects and questions (the scene population is SynthConfig.scene's).

    categories: categories scenes draw from (the SceneConfig picks min..max_categories of them).
    grid: cells per canvas side; each object takes one cell (so at most grid**2 objects).
    edge_range: tile edge in pixels (inclusive), on the canvas as rendered; shrunk to fit its cell.
    answer_range: (lo, hi) of every answer; also the range of part counts and card numbers drawn.
    singles_per_image / halves_per_image: 1-hop / 2-hop questions kept per image.
    single_forms / half_forms: the question forms used (see the module docstring).
    max_answer_share, balance_slack: no answer takes more than max_answer_share of a variant's records
    of a shard, plus balance_slack (which lets the first records of a shard in).
    relations: relations of the 2-hop `relate` form.
    p_focus: chance that a scene gives one category with countable parts or numbers (what the 2-hop
    forms pick among) at least two objects.
    """

    categories: tuple[str, ...] = LEARNABLE_CATEGORIES
    grid: int = 3
    edge_range: tuple[int, int] = (120, 136)
    answer_range: tuple[int, int] = (1, 5)
    singles_per_image: int = 2
    halves_per_image: int = 2
    single_forms: tuple[str, ...] = SINGLE_FORMS
    half_forms: tuple[str, ...] = HALF_FORMS
    max_answer_share: float = 0.25
    balance_slack: int = 2
    relations: tuple[str, ...] = RELATIONS
    p_focus: float = 0.85

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (lists read back from JSON)
        for key in ("categories", "single_forms", "half_forms", "relations"):
            set_(key, tuple(str(v) for v in getattr(self, key)))
        set_("edge_range", tuple(int(v) for v in self.edge_range))
        set_("answer_range", tuple(int(v) for v in self.answer_range))
        if not self.categories or not set(self.categories) <= set(CATEGORIES):
            raise ValueError(f"LearnableConfig: categories must be among {sorted(CATEGORIES)}")
        if self.grid < 1 or not 8 <= self.edge_range[0] <= self.edge_range[1]:
            raise ValueError("LearnableConfig: grid >= 1 and 8 <= edge_range[0] <= edge_range[1]")
        if not 0 <= self.answer_range[0] <= self.answer_range[1]:
            raise ValueError("LearnableConfig: answer_range must be (lo, hi) with 0 <= lo <= hi")
        if not set(self.single_forms) <= set(SINGLE_FORMS) or not set(self.half_forms) <= set(HALF_FORMS):
            raise ValueError(f"LearnableConfig: forms must be among {SINGLE_FORMS} and {HALF_FORMS}")
        if not set(self.relations) <= set(RELATIONS):
            raise ValueError(f"LearnableConfig: relations must be among {RELATIONS}")
        if min(self.singles_per_image, self.halves_per_image) < 0 or self.singles_per_image + self.halves_per_image < 1:
            raise ValueError("LearnableConfig: singles_per_image, halves_per_image >= 0, at least one question")
        if not 0 <= self.p_focus <= 1:
            raise ValueError("LearnableConfig: 0 <= p_focus <= 1")
        if not 0 < self.max_answer_share <= 1 or self.balance_slack < 0:
            raise ValueError("LearnableConfig: 0 < max_answer_share <= 1, balance_slack >= 0")


# ------------------------------------------------------------------------------------------------
# scenes
def _value_range(category: str, answers: tuple[int, int]) -> tuple[int, int] | None:
    """Part counts / card numbers a category may show within the answer range (None: it shows none)."""
    cat = CATEGORIES[category]
    if cat.part is not None:
        lo, hi = max(cat.part_range[0], answers[0]), min(cat.part_range[1], answers[1])
    elif cat.text == "number":
        lo, hi = max(1, answers[0]), answers[1]
    else:
        return None
    return (lo, hi) if lo <= hi else None


def sample_learnable_scene(seed: int, scene: SceneConfig, cfg: LearnableConfig) -> Scene:
    """The learnable scene for `seed`: a pure function of (seed, scene, cfg).

    From `scene`: resolutions, backgrounds, min/max objects, min/max categories, max_instances,
    palette_size, angle_scale and clutter (p_overlap and the size classes do not apply: objects never
    overlap and all take the tile edges of `cfg.edge_range`)."""
    rng = np.random.default_rng([seed, 11])
    width, height = scene.resolutions[int(rng.integers(len(scene.resolutions)))]
    background = str(scene.backgrounds[int(rng.integers(len(scene.backgrounds)))])
    pool = [c for c in cfg.categories if CATEGORIES[c].text != "word" and
            (CATEGORIES[c].plain or _value_range(c, cfg.answer_range) is not None)]
    if not pool:
        raise ValueError("LearnableConfig: no category of `categories` fits the answer range")
    cells = cfg.grid * cfg.grid
    n_objects = min(int(rng.integers(scene.min_objects, scene.max_objects + 1)), cells)
    n_cats = min(n_objects, len(pool), int(rng.integers(scene.min_categories, scene.max_categories + 1)))
    n_objects = min(n_objects, n_cats * scene.max_instances)
    categories = [str(c) for c in rng.choice(pool, size=n_cats, replace=False)]
    counts = [1] * n_cats
    valued = [c for c in pool if _value_range(c, cfg.answer_range) is not None]
    if valued and n_objects > n_cats and scene.max_instances > 1 and rng.random() < cfg.p_focus:
        focus = [c for c in categories if c in valued]
        if not focus:  # bring in a category whose parts or number a 2-hop question can read
            focus = categories[:1] = [str(valued[int(rng.integers(len(valued)))])]
        counts[categories.index(focus[0])] += 1
    for _ in range(n_objects - sum(counts)):  # each further object joins a category at random
        open_ = [k for k in range(n_cats) if counts[k] < scene.max_instances]
        counts[open_[int(rng.integers(len(open_)))]] += 1
    n_colors = int(rng.integers(scene.palette_size[0], scene.palette_size[1] + 1))
    palette = [str(c) for c in rng.choice(sorted(COLORS), size=min(n_colors, len(COLORS)), replace=False)]
    specs = []
    for cat, k in zip(categories, counts):
        for _ in range(k):
            colors = [c for c in CATEGORIES[cat].colors if c in palette] or list(CATEGORIES[cat].colors)
            color = colors[int(rng.integers(len(colors)))]
            values = _value_range(cat, cfg.answer_range)
            value = None if values is None else int(rng.integers(values[0], values[1] + 1))
            text = str(value) if CATEGORIES[cat].text == "number" else None
            part_count = value if CATEGORIES[cat].part is not None else None
            specs.append(ObjectSpec(cat, color, "large", text, part_count))
    order = rng.permutation(len(specs))
    slots = rng.choice(cells, size=len(specs), replace=False)
    scale = min(width, height) / 600.0
    shadow = shadow_geometry(scale)
    gap = max(int(round(scene.gap * scale)), sum(shadow) + 1)
    cw, ch = width // cfg.grid, height // cfg.grid
    placements = []
    for k, slot in zip(order, slots):
        spec = specs[int(k)]
        edge = int(rng.integers(cfg.edge_range[0], cfg.edge_range[1] + 1))
        angle = round(float(rng.uniform(-1, 1)) * max_angle(spec.category) * scene.angle_scale, 1)
        variant = int(rng.integers(0, 2**31))
        room_w, room_h = cw - gap, ch - gap
        while True:  # shrink until the sprite fits its cell with the gap
            w, h = object_sprite(spec, edge, angle, variant, shadow).size
            if w <= room_w and h <= room_h:
                break
            if edge <= 16:
                raise ValueError(f"LearnableConfig: a {cfg.grid}x{cfg.grid} grid leaves no room on {width}x{height}")
            edge -= 4
        row, col = divmod(int(slot), cfg.grid)
        x = col * cw + gap // 2 + int(rng.integers(0, room_w - w + 1))
        y = row * ch + gap // 2 + int(rng.integers(0, room_h - h + 1))
        placements.append(Placement(spec, x, y, edge, angle, variant))
    return Scene(seed, width, height, tuple(placements), background, scene.clutter)


# ------------------------------------------------------------------------------------------------
# questions
class _Query:
    """One question being built: program steps, hops (value filled in after execution), sentences."""

    def __init__(self, form: str, variant: str):
        self.form, self.variant = form, variant
        self.steps: list[dict] = []
        self.hops: list[dict] = []
        self.explain: list[Callable[[dict], str]] = []
        self.parts: list[str] = []
        self.out: list[str] = []  # per hop: the step holding the hop's own value
        self.combined: dict[int, tuple[str, int, str]] = {}  # hop -> (op, other hop, combined step)

    def step(self, op: str, args: dict) -> str:
        sid = f"s{len(self.steps)}"
        self.steps.append({"id": sid, "op": op, "args": args, "hop": len(self.hops)})
        return sid

    def hop(self, kind: str, level: int, op: str, instance_ids: Sequence[str], depends_on: Sequence[int], text: str,
            out: str, explain: Callable[[dict], str], question: str | None = None) -> None:
        self.hops.append({"index": len(self.hops), "kind": kind, "level": level, "op": op,
                          "instance_ids": list(dict.fromkeys(instance_ids)), "depends_on": list(depends_on),
                          "text": text, "value": None, "combine": None})
        self.out.append(out)
        self.explain.append(explain)
        self.parts.append(question or text)


class LearnableComposer:
    """Every clear 1-hop and 2-hop question of one image (schema-v2 instance dicts), as RealizedQuery."""

    def __init__(self, instances: Sequence[dict], width: int, height: int, cfg: LearnableConfig = LearnableConfig(),
                 composer: ComposerConfig = ComposerConfig()):
        self.cfg = cfg
        self.cc = ClearScene(instances, width, height, composer)  # clarity checks, executor, names
        self.ex, self.by_id, self.by_cat = self.cc.ex, self.cc.by_id, self.cc.by_cat
        self.width, self.height = width, height

    # -- building blocks ------------------------------------------------------------------------
    def _name(self, inst: dict) -> tuple[dict, str]:
        """(select filter, phrase) naming `inst` alone by what is visible: its category, else its colour."""
        cat, color = inst["category"], inst["attributes"]["color"]
        if len(self.by_cat[cat]) == 1:
            return {"category": cat}, f"the {cat}"
        if len(self.ex.matches({"category": cat, "color": color})) == 1:
            return {"category": cat, "color": color}, f"the {color} {cat}"
        raise Reject

    def _value_form(self, inst: dict) -> str | None:
        if inst["attributes"].get("part_count") is not None:
            return "count_parts"
        if CATEGORIES[inst["category"]].text == "number":
            return "read_number"
        return None

    def _value_hop(self, q: _Query, inst: dict, arg: Any, ref: str, depends: Sequence[int],
                   rng: np.random.Generator) -> None:
        """The last hop of a question: a Level-1 read of `inst` (its parts or its number), named by `ref`."""
        form = self._value_form(inst)
        cat = inst["category"]
        if form == "count_parts":
            parts = phrasing.parts_word(cat)
            text = phrasing.say(templates("count_parts"), rng, parts=parts, ref=ref)
            sid = q.step("count_parts", {"instance": arg})
            explain = lambda env: f"It has {env[sid]} {phrasing.parts_word(cat, env[sid])}."
            fmt = {"parts": parts, "ref": ref}
        else:
            text = phrasing.say(templates("read_number"), rng, ref=ref)
            sid = q.step("read_number", {"instance": arg})
            explain = lambda env: f"It shows {env[sid]}."
            fmt = {"ref": ref}
        question = phrasing.say(HOP_FORMS[form].questions, rng, **fmt)
        q.hop("perception", 1, form, [inst["id"]], depends, text, sid, explain, question)

    def _counted(self, ids: Sequence[str]) -> str:
        return ", ".join(self.cc.describe(i) for i in ids)

    def _count_hop(self, q: _Query, filt: dict, depends: Sequence[int], rng: np.random.Generator,
                   last: bool) -> None:
        cat = filt["category"]
        ids = [i["id"] for i in self.ex.matches(filt)]
        fmt = {"cats": phrasing.plural(cat), "color": filt.get("color")}
        sentences, questions = ((COUNT_COLOR_SENTENCES, COUNT_COLOR_QUESTIONS) if "color" in filt
                                else (COUNT_SENTENCES, COUNT_QUESTIONS))
        text = phrasing.say(sentences, rng, **fmt)
        sid = q.step("count", {"filter": dict(filt)})
        explain = lambda env: f"{there_are(env[sid])}: {self._counted(ids)}."
        question = phrasing.say(questions, rng, **fmt) if last else None
        q.hop("perception", 2, "count", ids, depends, text, sid, explain, question)

    def _found(self, sid: str) -> Callable[[dict], str]:
        return lambda env: f"It is {self.cc.describe(env[sid])}."

    # -- forms: each yields _Query objects (or raises Reject) -------------------------------------
    def _single_count(self, rng):
        for cat in sorted(self.by_cat):
            q = _Query("count", "single")
            self._count_hop(q, {"category": cat}, [], rng, last=True)
            yield q

    def _single_count_color(self, rng):
        for cat, members in sorted(self.by_cat.items()):
            colors = collections.Counter(m["attributes"]["color"] for m in members)
            if len(colors) < 2:
                continue  # "the red balls" when every ball is red is just "the balls"
            for color in sorted(colors):
                q = _Query("count_color", "single")
                self._count_hop(q, {"category": cat, "color": color}, [], rng, last=True)
                yield q

    def _single_value(self, rng, form: str):
        for inst in self.cc.instances:
            if self._value_form(inst) != form:
                continue
            try:
                filt, phrase = self._name(inst)
            except Reject:
                continue
            q = _Query(form, "single")
            arg = {"ref": q.step("select", {"filter": filt})}
            self._value_hop(q, inst, arg, phrase, [], rng)
            yield q

    def _single_count_rel(self, rng):
        for anchor in self.cc.instances:
            try:
                filt, phrase = self._name(anchor)
            except Reject:
                continue
            for cat in sorted(set(self.by_cat) - {anchor["category"]}):
                for relation in DIRECTIONS:
                    if relation not in self.cfg.relations:
                        continue
                    try:
                        counted = self.cc.clear_count_relative(anchor, cat, relation)
                    except Reject:
                        continue
                    q = _Query("count_rel", "single")
                    a = q.step("select", {"filter": filt})
                    fmt = {"cats": phrasing.plural(cat), "rel": phrasing.RELATION_WORDS[relation], "ref": phrase}
                    text = phrasing.say(templates("count_relative"), rng, **fmt)
                    sid = q.step("count", {"filter": {"category": cat}, "relation": relation, "anchor": {"ref": a}})
                    ids = [c["id"] for c in counted]
                    question = phrasing.say(HOP_FORMS["count_relative"].questions, rng, **fmt)
                    q.hop("perception", 2, "count", [anchor["id"], *ids], [], text, sid,
                          lambda env, sid=sid, ids=ids: f"{there_are(env[sid])}: {self._counted(ids)}.", question)
                    yield q

    def _half_relate(self, rng):
        for anchor in self.cc.instances:
            try:
                filt, phrase = self._name(anchor)
            except Reject:
                continue
            for cat, members in sorted(self.by_cat.items()):
                if cat == anchor["category"] or len(members) < 2 or self._value_form(members[0]) is None:
                    continue
                for relation in self.cfg.relations:
                    try:
                        target = self.cc.clear_relate(anchor, relation, cat)
                    except Reject:
                        continue
                    q = _Query("relate", "half")
                    a = q.step("select", {"filter": filt})
                    fmt = {"cat": cat, "cats": phrasing.plural(cat), "ref": phrase}
                    if relation in DIRECTIONS:
                        key, fmt["rel"] = "relate_direction", phrasing.RELATION_WORDS[relation]
                    else:
                        key = f"relate_{relation}"
                    text = phrasing.say(templates(key), rng, **fmt)
                    sid = q.step("relate", {"anchor": {"ref": a}, "relation": relation, "filter": {"category": cat}})
                    q.hop("instance_chain", 2, "relate", [anchor["id"], target["id"]], [], text, sid, self._found(sid))
                    self._value_hop(q, target, {"ref": sid}, f"that {cat}", [0], rng)
                    yield q

    def _half_superlative(self, rng):
        for cat, members in sorted(self.by_cat.items()):
            if len(members) < 2 or self._value_form(members[0]) is None:
                continue
            for key, order in POSITION_KEYS:
                try:
                    best = self.cc.clear_superlative(cat, key, order)
                except Reject:
                    continue
                q = _Query("superlative", "half")
                text = phrasing.say(templates("superlative_position"), rng, cat=cat,
                                    sup=phrasing.SUPERLATIVE_WORDS[key, order])
                sid = q.step("superlative", {"filter": {"category": cat}, "key": key, "order": order})
                q.hop("perception", 2, "superlative", [best["id"]], [], text, sid, self._found(sid))
                self._value_hop(q, best, {"ref": sid}, f"that {cat}", [0], rng)
                yield q

    def _half_select(self, rng):
        for cat, members in sorted(self.by_cat.items()):
            if len(members) < 2 or self._value_form(members[0]) is None:
                continue
            for inst in members:
                filt = {"category": cat, "color": inst["attributes"]["color"]}
                if len(self.ex.matches(filt)) != 1:
                    continue
                q = _Query("select", "half")
                text = phrasing.say(templates("select_color"), rng, cat=cat, color=filt["color"])
                sid = q.step("select", {"filter": filt})
                q.hop("perception", 1, "select", [inst["id"]], [], text, sid, self._found(sid))
                self._value_hop(q, inst, {"ref": sid}, f"that {cat}", [0], rng)
                yield q

    def _half_count_sum(self, rng):
        cats = sorted(self.by_cat)
        for first in cats:
            for second in cats:
                if first == second:
                    continue
                q = _Query("count_sum", "half")
                self._count_hop(q, {"category": first}, [], rng, last=False)
                self._count_hop(q, {"category": second}, [0], rng, last=False)
                total = q.step("add", {"a": {"ref": q.out[0]}, "b": {"ref": q.out[1]}})
                q.steps[-1]["hop"] = 1
                q.combined[1] = ("add", 0, total)
                q.parts[1] += " " + phrasing.choose(phrasing.COMBINE["add"], rng)
                yield q

    # -- realisation -----------------------------------------------------------------------------
    def realize(self, q: _Query) -> RealizedQuery:
        """Execute the program, fill the hop values, check the answer range and the counterfactual."""
        program = {"steps": q.steps, "output": q.combined[len(q.hops) - 1][2] if len(q.hops) - 1 in q.combined
                   else q.out[-1]}
        try:
            answer, env = self.ex.run(program)
        except ProgramError as e:
            raise AssertionError(f"learnable program does not execute: {e}\n{program}") from e
        lo, hi = self.cfg.answer_range
        if isinstance(answer, bool) or not isinstance(answer, int) or not lo <= answer <= hi:
            raise Reject
        record = {"image": {"width": self.width, "height": self.height}, "instances": self.cc.instances,
                  "program": program}
        if counterfactual_failures(record, require_alternatives=False, first_only=True):
            raise Reject  # a picked object or a read number would not matter: no perception needed
        hops = [dict(h) for h in q.hops]
        explain = []
        for i, hop in enumerate(hops):
            hop["value"] = env[q.out[i]]
            text = q.explain[i](env)
            if i in q.combined:
                op, other, sid = q.combined[i]
                hop["combine"] = {"op": op, "with_hop": other, "value": env[sid]}
                a, b = env[q.out[other]], env[q.out[i]]
                text += f" Combining the two numbers: {a} + {b} = {env[sid]}."
            explain.append(text)
        rationale = " ".join(f"Step {i + 1}: {h['text']} {e}" for i, (h, e) in enumerate(zip(hops, explain)))
        rationale += f" The answer is \\boxed{{{answer}}}."
        return RealizedQuery(q.variant, hops, program, " ".join(q.parts), int(answer), rationale, env)

    def candidates(self, rng: np.random.Generator) -> dict[str, list[tuple[str, RealizedQuery]]]:
        """variant -> [(form, query)] of every clear question of the enabled forms, distinct programs."""
        makers = {"count": self._single_count, "count_color": self._single_count_color,
                  "count_parts": lambda r: self._single_value(r, "count_parts"),
                  "read_number": lambda r: self._single_value(r, "read_number"),
                  "count_rel": self._single_count_rel, "relate": self._half_relate,
                  "superlative": self._half_superlative, "select": self._half_select,
                  "count_sum": self._half_count_sum}
        out: dict[str, list] = {"single": [], "half": []}
        seen = set()
        for form in (*self.cfg.single_forms, *self.cfg.half_forms):
            for q in makers[form](rng):
                try:
                    rq = self.realize(q)
                except Reject:
                    continue
                key = repr(rq.program)
                if key not in seen:
                    seen.add(key)
                    out[rq.variant].append((form, rq))
        return out


class Balancer:
    """What one variant of a shard kept so far: an AnswerBalance over all its records (the cap) and one
    per form (so each form's answers, and the values of each kind of step, spread out on their own:
    a text-only rule that knows the form gains little), and how often each form was kept."""

    def __init__(self, cfg: LearnableConfig):
        self.cfg = cfg
        self.all = AnswerBalance()
        self.per_form: dict[str, AnswerBalance] = collections.defaultdict(AnswerBalance)
        self.forms: collections.Counter = collections.Counter()

    def allowed(self, form: str, q: RealizedQuery) -> bool:
        """Under the answer cap overall and within its form, and every value it reads under the same cap
        within its kind (e.g. "how many balls": the text-only rule of stats.py learns per kind)."""
        share, slack = self.cfg.max_answer_share, self.cfg.balance_slack
        mine = self.per_form[form]
        if self.all.over_cap(q, share, slack) or mine.over_cap(q, share, slack):
            return False
        for key, value in AnswerBalance._value_keys(q):
            seen = mine.kinds.get(key)
            if seen and seen[value] + 1 > share * (sum(seen.values()) + 1) + slack:
                return False
        return True

    def score(self, form: str, q: RealizedQuery) -> tuple[int, float]:
        """(blind, shares): blind is 1 when the text-only rule with this form's priors so far gets the
        answer; shares adds the form's share of the kept records and the answer's share in the form
        and overall (each in 0..1), so rare forms and rare answers go first."""
        mine = self.per_form[form]
        blind, _ = mine.score(q)
        n_form, n_all = sum(mine.answers.values()), sum(self.all.answers.values())
        shares = (self.forms[form] / max(1, sum(self.forms.values())) + mine.answers[q.answer] / max(1, n_form)
                  + self.all.answers[q.answer] / max(1, n_all))
        return blind, shares

    def add(self, form: str, q: RealizedQuery) -> None:
        self.all.add(q)
        self.per_form[form].add(q)
        self.forms[form] += 1


def select_balanced(cands: list[tuple[str, RealizedQuery]], balancer: Balancer, k: int,
                    rng: np.random.Generator) -> list[tuple[str, RealizedQuery]]:
    """Up to k of one image's candidates, each time the lowest Balancer.score, never past a cap;
    `balancer` is updated with what is kept. One question per form and answer per image."""
    out = []
    cands = list(cands)
    while len(out) < k:
        cands = [c for c in cands if balancer.allowed(*c)]
        if not cands:
            break
        scores = [balancer.score(*c) for c in cands]
        best = min(scores)
        pool = [i for i, s in enumerate(scores) if s == best]
        form, q = cands.pop(pool[int(rng.integers(len(pool)))])
        balancer.add(form, q)
        out.append((form, q))
        cands = [c for c in cands if (c[0], c[1].answer) != (form, q.answer)]
    return out


# ------------------------------------------------------------------------------------------------
# shards (pipeline.synthesize_shard dispatches here when SynthConfig.chains == "learnable")
def synthesize_learnable_shard(config, shard_index: int) -> tuple[list, list, list, dict]:
    """Images, label maps, records and stats of one shard of a learnable-world SynthConfig; the same
    contract as pipeline.synthesize_shard. Stats count hops, ops and answers of every record (there
    are no full chains here)."""
    from hopchain_jax.data import store
    from hopchain_jax.synth.pipeline import _empty_stats, _provenance, count_record, scene_seed
    from hopchain_jax.synth.stages import ImageInput, OracleCategoryIdentifier, OracleSegmenter, ProgramVerifier
    from hopchain_jax.world.render import render_scene

    cfg: LearnableConfig = config.learnable
    identify, segment, verify = OracleCategoryIdentifier(), OracleSegmenter(), ProgramVerifier()
    stages = {"categories": identify.name, "segmentation": segment.name, "composition": COMPOSER_NAME,
              "verification": verify.name}
    images, labels, records = [], [], []
    stats = _empty_stats()
    balancers = {"single": Balancer(cfg), "half": Balancer(cfg)}
    quota = {"single": cfg.singles_per_image, "half": cfg.halves_per_image}
    first = shard_index * config.images_per_shard
    for image_index in range(first, min(first + config.images_per_shard, config.num_images)):
        seed = scene_seed(config, image_index)
        rendered = render_scene(sample_learnable_scene(seed, config.scene, cfg))
        image = ImageInput(rendered.image, f"procedural:{seed}", rendered)
        stats["images_seen"] += 1
        seg = segment.segment(image, identify.identify(image))
        rng = np.random.default_rng([seed, 2])
        cands = LearnableComposer(seg.instances, image.width, image.height, cfg, config.composer).candidates(rng)
        kept = [q for variant in ("single", "half")
                for _, q in select_balanced(cands[variant], balancers[variant], quota[variant], rng)]
        if not kept:
            stats["skipped"]["no clear question found"] += 1
            continue
        ref = {"shard": store.shard_name(shard_index), "index": len(images), "width": image.width,
               "height": image.height, "sha256": image.sha256}
        n_ok = 0
        for q in kept:
            rec = build_record(image=ref, instances=seg.instances, query=q, chain_program=q.program,
                               provenance=_provenance(config, seed, stages))
            verdict = verify.verify(rec)
            if not verdict.accepted:
                stats["rejected"][verdict.reason.split(":")[0]] += 1
                continue
            rec["verification"] = verdict.record_field
            records.append(rec)
            n_ok += 1
            count_record(stats, rec)
        if n_ok:
            images.append(rendered.image)
            labels.append(seg.labels)
        else:
            stats["skipped"]["every question failed verification"] += 1
    return images, labels, records, stats


def variant_report(records) -> dict[str, Any]:
    """Per variant: answer histogram, most common answer and its share (the most-common blind
    baseline), and the text-only blind rule of stats.py fitted on that variant's records."""
    from hopchain_jax.synth.stats import blind_baselines

    by_variant: dict[str, list] = collections.defaultdict(list)
    for rec in records:
        by_variant[rec["variant"]].append(rec)
    out = {}
    for variant, recs in sorted(by_variant.items()):
        answers = collections.Counter(r["answer"] for r in recs)
        top, n = answers.most_common(1)[0]
        # blind_baselines scores full records: relabel this variant's records as such.
        blind = blind_baselines([{**r, "variant": "full"} for r in recs])
        out[variant] = {"records": len(recs), "answers": {str(a): c for a, c in sorted(answers.items())},
                        "most_common": {"answer": top, "share": round(n / len(recs), 4)},
                        "text_only": blind["text_only"]}
    return out


def format_variant_report(report: dict) -> list[str]:
    lines = []
    for variant, r in report.items():
        hist = ", ".join(f"{a}: {n}" for a, n in r["answers"].items())
        top = r["most_common"]
        lines.append(f"{variant} ({r['records']} records) answers {hist}; blind: most common ({top['answer']}) "
                     f"{top['share']:.1%}, text-only rule {r['text_only']:.1%}")
    return lines

"""Chain composer: multi-hop queries over one image's instances, with programs, text and variants.

A chain is a list of hops (SPEC §1, §3):
  hop 0          an anchor: one instance picked out by Level-1 perception (its text, its part count,
                 its colour) or Level-2 comparison (largest, leftmost, most dots, ...);
  1-2 link hops  instance-chain hops to a new instance through the previous ones (nearest / left of /
                 above ..., between two found instances, same colour as a found instance);
  1-2 value hops numbers read off found instances: Level 1 (count its parts, read its number) or
                 Level 2 (count a set relative to it); the last may combine with the earlier number
                 (sum, difference, product), and its value is the answer.
Every referring expression is resolved with the program executor (exactly one referent) and must also
pass clarity margins (the runner-up is clearly farther, nothing sits on a left/right boundary, ...), so
a person looking at the image picks the same instance. Named instances have distinct categories, so
"that ladybug" is never ambiguous.

Variants (SPEC §1): "full" keeps every hop, "half" the last ceil(n/2) hops, "single" the last hop.
Instances that the dropped hops used to establish are named directly ("the orange ladybug", "the
leftmost card") and arithmetic with a dropped number is dropped, so each variant has its own answer.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.program import DIRECTIONS, RELATIONS, Executor, ProgramError, superlative_key
from hopchain_jax.world.catalog import CATEGORIES

VARIANTS = ("full", "half", "single")


@dataclasses.dataclass(frozen=True)
class ComposerConfig:
    """Chain shape and clarity margins.

    queries_per_image: distinct full chains wanted per image; max_attempts: random tries per image.
    min_instances/max_instances: distinct instances a full chain must use (SPEC: 3-6).
    p_*: probabilities of a superlative anchor, a second link hop, a second value hop, combining.
    Margins (pixels unless noted) only make references visually clear; execution never uses them.
    """

    queries_per_image: int = 3
    max_attempts: int = 80
    min_instances: int = 3
    max_instances: int = 6
    p_superlative_anchor: float = 0.3
    p_two_links: float = 0.5
    p_two_values: float = 0.85
    p_combine: float = 0.9
    max_count: int = 3
    relate_ratio: float = 1.25
    relate_gap_px: float = 15.0
    direction_margin_px: float = 30.0
    superlative_position_px: float = 40.0
    superlative_area_ratio: float = 1.3
    between_min_length_px: float = 150.0


class Reject(Exception):
    """This attempt cannot make a clear, valid chain; the composer tries another."""


@dataclasses.dataclass
class HopSpec:
    """One hop of a full chain before it is turned into text and program steps.

    op: hop operation (select, superlative, relate, between, same_color, count_parts, read_number,
    count_relative, count_same_color); kind/level: SPEC §3 labels; inst: the instance an instance hop
    establishes (None for value hops); uses: earlier hops whose instances it refers to; counted:
    instances a counting hop counts; params: op details; combine: (arith op, earlier hop, a_first) or None;
    value: what the hop evaluates to (instance id or int), checked against execution.
    """

    op: str
    kind: str
    level: int
    value: Any
    inst: str | None = None
    uses: tuple[int, ...] = ()
    counted: tuple[str, ...] = ()
    params: dict = dataclasses.field(default_factory=dict)
    combine: tuple[str, int, bool] | None = None

    def instance_ids(self, chain: Sequence["HopSpec"]) -> list[str]:
        ids = [chain[h].inst for h in self.uses] + ([self.inst] if self.inst else []) + list(self.counted)
        return list(dict.fromkeys(ids))


@dataclasses.dataclass
class RealizedQuery:
    """One variant ready for a record: schema-v1 hops, program, question, answer and rationale."""

    variant: str
    hops: list[dict]
    program: dict
    question: str
    answer: int
    rationale: str


class ChainComposer:
    """Composes verified multi-hop chains over one image's instances (schema-v1 instance dicts)."""

    def __init__(self, instances: Sequence[dict], width: int, height: int, config: ComposerConfig = ComposerConfig()):
        self.instances = list(instances)
        self.width, self.height = width, height
        self.cfg = config
        self.ex = Executor(self.instances, width, height)
        self.geo = self.ex.geo
        self.by_id = self.ex.by_id
        self.by_cat: dict[str, list[dict]] = {}
        for inst in self.instances:
            self.by_cat.setdefault(inst["category"], []).append(inst)

    # ------------------------------------------------------------------------------------------------
    # public
    def compose(self, rng: np.random.Generator) -> list[dict[str, RealizedQuery]]:
        """Up to cfg.queries_per_image distinct chains, each as {variant: RealizedQuery}."""
        out, seen = [], set()
        for _ in range(self.cfg.max_attempts):
            if len(out) >= self.cfg.queries_per_image:
                break
            try:
                chain = self._chain(rng)
                key = tuple((h.op, tuple(h.instance_ids(chain))) for h in chain)
                if key in seen:
                    continue
                variants = {v: self.realize(chain, v, rng) for v in VARIANTS}
            except Reject:
                continue
            seen.add(key)
            out.append(variants)
        return out

    # ------------------------------------------------------------------------------------------------
    # clarity-checked geometry
    def _clear_relate(self, anchor: dict, relation: str, category: str) -> dict:
        others = [c for c in self.by_cat.get(category, []) if c["id"] != anchor["id"]]
        if relation != "nearest" and any(
                abs(self.geo.offset(c, anchor, relation)) < self.cfg.direction_margin_px for c in others):
            raise Reject
        cands = sorted(self.ex.relate_candidates(anchor, relation, {"category": category}, {}),
                       key=lambda c: self.geo.dist(c, anchor))
        if not cands:
            raise Reject
        if len(cands) > 1:
            d1, d2 = self.geo.dist(cands[0], anchor), self.geo.dist(cands[1], anchor)
            if d2 < self.cfg.relate_ratio * d1 + self.cfg.relate_gap_px:
                raise Reject
        return cands[0]

    def _clear_between(self, a: dict, b: dict, category: str) -> dict:
        if self.geo.dist(a, b) < self.cfg.between_min_length_px:
            raise Reject
        inside = []
        for c in self.by_cat.get(category, []):
            if c["id"] in (a["id"], b["id"]):
                continue
            t, off = self.geo.between_coords(c, a, b)
            if 0.2 <= t <= 0.8 and off <= 0.2:
                inside.append(c)
            elif not (t < 0.05 or t > 0.95 or off >= 0.45):
                raise Reject  # near the edge of "between": a viewer could go either way
        if len(inside) != 1:
            raise Reject
        return inside[0]

    def _clear_superlative(self, category: str, key: str, order: str) -> dict:
        scored = [(superlative_key(c, key, self.geo), c) for c in self.by_cat.get(category, [])]
        scored = sorted(((v, c) for v, c in scored if v is not None), key=lambda vc: vc[0], reverse=order == "max")
        if len(scored) < 2:
            raise Reject
        (v1, best), (v2, _) = scored[0], scored[1]
        if key == "area":
            ok = max(v1, v2) >= self.cfg.superlative_area_ratio * min(v1, v2)
        elif key in ("center_x", "center_y"):
            ok = abs(v1 - v2) >= self.cfg.superlative_position_px
        else:
            ok = v1 != v2
        if not ok:
            raise Reject
        return best

    def _clear_count_relative(self, anchor: dict, category: str, relation: str) -> list[dict]:
        others = [c for c in self.by_cat.get(category, []) if c["id"] != anchor["id"]]
        offsets = [self.geo.offset(c, anchor, relation) for c in others]
        if any(abs(o) < self.cfg.direction_margin_px for o in offsets):
            raise Reject
        counted = [c for c, o in zip(others, offsets) if o > 0]
        if not 1 <= len(counted) <= self.cfg.max_count:
            raise Reject
        return counted

    def _unique(self, filt: dict) -> dict | None:
        found = self.ex.matches(filt)
        return found[0] if len(found) == 1 else None

    # ------------------------------------------------------------------------------------------------
    # chain generation
    @functools.cached_property
    def _anchor_selects(self) -> list[tuple]:
        """(instance, mode, filter) for every instance a Level-1 description picks out alone."""
        options = []
        for inst in self.instances:
            cat, attrs = inst["category"], inst["attributes"]
            if attrs.get("text") is not None and self._unique({"category": cat, "text": attrs["text"]}):
                options.append((inst, "text", {"category": cat, "text": attrs["text"]}))
            if attrs.get("part_count") is not None and self._unique({"category": cat, "part_count": attrs["part_count"]}):
                options.append((inst, "part_count", {"category": cat, "part_count": attrs["part_count"]}))
            if len(self.by_cat[cat]) > 1 and self._unique({"category": cat, "color": attrs["color"]}):
                options.append((inst, "color", {"category": cat, "color": attrs["color"]}))
        return options

    def _anchor(self, rng: np.random.Generator) -> HopSpec:
        options = [HopSpec("select", "perception", 1, inst["id"], inst["id"], params={"filter": dict(f), "mode": mode})
                   for inst, mode, f in self._anchor_selects]
        if rng.random() < self.cfg.p_superlative_anchor or not options:
            cats = [c for c, members in self.by_cat.items() if len(members) > 1]
            if cats:
                cat = str(rng.choice(sorted(cats)))
                keys = ["area", "center_x", "center_y"]
                if CATEGORIES[cat].part:
                    keys.append("part_count")
                if CATEGORIES[cat].text == "number":
                    keys.append("number")
                key, order = str(rng.choice(keys)), str(rng.choice(["max", "min"]))
                best = self._clear_superlative(cat, key, order)
                return HopSpec("superlative", "perception", 2, best["id"], best["id"],
                               params={"category": cat, "key": key, "order": order})
        if not options:
            raise Reject
        return options[int(rng.integers(len(options)))]

    def _link(self, chain: list[HopSpec], rng: np.random.Generator) -> HopSpec:
        named_cats = {self.by_id[h.inst]["category"] for h in chain if h.inst}
        # Only categories with several instances: the target must be findable only through the chain.
        free_cats = sorted(c for c in set(self.by_cat) - named_cats if len(self.by_cat[c]) > 1)
        if not free_cats:
            raise Reject
        cat = str(rng.choice(free_cats))
        last = len(chain) - 1
        while chain[last].inst is None:
            last -= 1
        anchor = self.by_id[chain[last].inst]
        instance_hops = [i for i, h in enumerate(chain) if h.inst]
        kind = rng.choice(["relate", "same_color", "between"], p=[0.6, 0.2, 0.2])
        if kind == "between" and len(instance_hops) >= 2:
            other = instance_hops[-2]
            target = self._clear_between(self.by_id[chain[other].inst], anchor, cat)
            return HopSpec("between", "instance_chain", 2, target["id"], target["id"], uses=(other, last),
                           params={"category": cat})
        if kind == "same_color":
            target = self._unique({"category": cat, "color": anchor["attributes"]["color"]})
            if target is None:
                raise Reject
            return HopSpec("same_color", "instance_chain", 1, target["id"], target["id"], uses=(last,),
                           params={"category": cat})
        relation = str(rng.choice(RELATIONS))
        target = self._clear_relate(anchor, relation, cat)
        return HopSpec("relate", "instance_chain", 2, target["id"], target["id"], uses=(last,),
                       params={"category": cat, "relation": relation})

    def _value_options(self, chain: list[HopSpec], hop: int) -> list[HopSpec]:
        """Every clear value hop about the instance that hop `hop` established."""
        inst = self.by_id[chain[hop].inst]
        cat, attrs = inst["category"], inst["attributes"]
        how = chain[hop].params
        options = []
        chosen_by_parts = how.get("mode") == "part_count" or how.get("key") == "part_count"
        chosen_by_number = how.get("mode") == "text" or how.get("key") == "number"
        if attrs.get("part_count") is not None and not chosen_by_parts:
            options.append(HopSpec("count_parts", "perception", 1, attrs["part_count"], uses=(hop,)))
        if CATEGORIES[cat].text == "number" and not chosen_by_number:
            options.append(HopSpec("read_number", "perception", 1, int(attrs["text"]), uses=(hop,)))
        for op, value, counted, params in self._set_counts(inst["id"]):
            options.append(HopSpec(op, "perception", 2, value, uses=(hop,), counted=counted, params=dict(params)))
        return options

    @functools.lru_cache(maxsize=None)
    def _set_counts(self, inst_id: str) -> tuple:
        """(op, count, counted ids, params) of every clear Level-2 count about one instance."""
        inst = self.by_id[inst_id]
        out = []
        for other in sorted(set(self.by_cat) - {inst["category"]}):
            for relation in DIRECTIONS:
                try:
                    counted = self._clear_count_relative(inst, other, relation)
                except Reject:
                    continue
                out.append(("count_relative", len(counted), tuple(c["id"] for c in counted),
                            (("category", other), ("relation", relation))))
            same = [c for c in self.by_cat[other] if c["attributes"]["color"] == inst["attributes"]["color"]]
            if 1 <= len(same) <= self.cfg.max_count:
                out.append(("count_same_color", len(same), tuple(c["id"] for c in same), (("category", other),)))
        return tuple(out)

    def _chain(self, rng: np.random.Generator) -> list[HopSpec]:
        chain = [self._anchor(rng)]
        for _ in range(2 if rng.random() < self.cfg.p_two_links else 1):
            chain.append(self._link(chain, rng))
        last_inst = len(chain) - 1
        # The last found instance must matter: the first value hop is about it.
        first = self._value_options(chain, last_inst)
        if not first:
            raise Reject
        chain.append(_pick_by_op(first, rng))
        if rng.random() < self.cfg.p_two_values:
            pool = [o for h in range(last_inst + 1) for o in self._value_options(chain, h)
                    if (o.op, o.uses, o.params) != (chain[-1].op, chain[-1].uses, chain[-1].params)]
            if pool:
                second = _pick_by_op(pool, rng)
                if rng.random() < self.cfg.p_combine:
                    second.combine = self._combine(chain[-1].value, second.value, len(chain) - 1, rng)
                    second.value = _apply(second.combine, chain[-1].value, second.value)
                chain.append(second)
        self._check_invariants(chain)
        return chain

    def _combine(self, first: int, second: int, first_hop: int, rng) -> tuple[str, int, bool]:
        ops = ["add", "sub"] + (["mul"] if first <= 9 and second <= 9 else [])
        op = str(rng.choice(ops))
        return op, first_hop, (first >= second if op == "sub" else True)

    def _check_invariants(self, chain: list[HopSpec]) -> None:
        kinds = {(h.kind, h.level) for h in chain}
        if ("perception", 1) not in kinds or ("perception", 2) not in kinds:
            raise Reject
        if not any(h.kind == "instance_chain" for h in chain):
            raise Reject
        used = {i for h in chain for i in h.instance_ids(chain)}
        if not self.cfg.min_instances <= len(used) <= self.cfg.max_instances:
            raise Reject
        if len(chain) < 3:
            raise Reject

    # ------------------------------------------------------------------------------------------------
    # direct references (for variants that drop the hop which found an instance)
    def _direct(self, inst: dict) -> tuple[str, dict, str]:
        """(op, args, phrase) naming `inst` by what is visible alone; Reject when nothing is clear."""
        cat, attrs = inst["category"], inst["attributes"]
        if len(self.by_cat[cat]) == 1:
            return "select", {"filter": {"category": cat}}, f"the {cat}"
        if self._unique({"category": cat, "color": attrs["color"]}):
            return "select", {"filter": {"category": cat, "color": attrs["color"]}}, f"the {attrs['color']} {cat}"
        if CATEGORIES[cat].text == "word" and self._unique({"category": cat, "text": attrs["text"]}):
            return "select", {"filter": {"category": cat, "text": attrs["text"]}}, f'the {cat} that reads "{attrs["text"]}"'
        for key, order in phrasing.SUPERLATIVE_WORDS:
            try:
                best = self._clear_superlative(cat, key, order)
            except Reject:
                continue
            if best["id"] == inst["id"]:
                return ("superlative", {"filter": {"category": cat}, "key": key, "order": order},
                        f"the {phrasing.SUPERLATIVE_WORDS[key, order]} {cat}")
        raise Reject

    # ------------------------------------------------------------------------------------------------
    # realisation: hops -> program steps, question text, rationale
    def realize(self, chain: list[HopSpec], variant: str, rng: np.random.Generator) -> RealizedQuery:
        n = len(chain)
        start = {"full": 0, "half": n - math.ceil(n / 2), "single": n - 1}[variant]
        r = _Realizer(self, chain, range(start, n), rng)
        for h in range(start, n):
            r.emit(h)
        program = {"steps": r.steps, "output": r.hop_step[n - 1]}
        try:
            answer, env = self.ex.run(program)
        except ProgramError as e:  # a composer bug, never a scene property: fail loudly
            raise AssertionError(f"composed program does not execute: {e}\n{program}") from e
        hops = []
        for new_index, h in enumerate(range(start, n)):
            spec, value = chain[h], env[r.hop_step[h]]
            if variant == "full" and value != spec.value:
                raise AssertionError(f"hop {h} ({spec.op}) executes to {value!r}, composed as {spec.value!r}")
            depends = sorted({d - start for d in spec.uses + ((spec.combine[1],) if r.combined[h] else ())
                              if d >= start})
            if new_index > 0 and not depends:
                raise Reject  # this cut of the chain would leave a hop hanging on nothing
            hops.append({"index": new_index, "kind": spec.kind, "level": spec.level, "op": spec.op,
                         "instance_ids": spec.instance_ids(chain), "depends_on": depends,
                         "text": r.sentences[h], "value": value})
        rationale = " ".join(f"Step {i + 1}: {r.sentences[h]} {r.explain[h](env)}" for i, h in enumerate(range(start, n)))
        rationale += f" The answer is \\boxed{{{answer}}}."
        return RealizedQuery(variant, hops, program, " ".join(r.question_parts), int(answer), rationale)

    def describe(self, inst_id: str) -> str:
        inst = self.by_id[inst_id]
        cx, cy = self.geo.center(inst)
        return f"the {inst['attributes']['color']} {inst['category']} in the {phrasing.region_words(cx, cy, self.width, self.height)}"


def _pick_by_op(options: list[HopSpec], rng: np.random.Generator) -> HopSpec:
    """Pick an op uniformly, then one of its options, so plentiful set counts do not crowd out
    Level-1 reads and part counts."""
    ops = sorted({o.op for o in options})
    op = ops[int(rng.integers(len(ops)))]
    same = [o for o in options if o.op == op]
    return same[int(rng.integers(len(same)))]


def _apply(combine: tuple[str, int, bool], first: int, second: int) -> int:
    op, _, first_is_a = combine
    a, b = (first, second) if first_is_a else (second, first)
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


def _there_are(n: int) -> str:
    return f"There is {n}" if n == 1 else f"There are {n}"


class _Realizer:
    """Turns the kept hops of a chain into program steps and sentences, in order."""

    def __init__(self, composer: ChainComposer, chain: list[HopSpec], kept: range, rng: np.random.Generator):
        self.c, self.chain, self.kept, self.rng = composer, chain, kept, rng
        self.steps: list[dict] = []
        self.hop_step: dict[int, str] = {}
        self.direct: dict[str, str] = {}
        self.sentences: dict[int, str] = {}
        self.explain: dict[int, Callable[[dict], str]] = {}
        self.combined: dict[int, bool] = {}
        self.question_parts: list[str] = []
        self._hop = 0

    def step(self, op: str, args: dict) -> str:
        sid = f"s{len(self.steps)}"
        self.steps.append({"id": sid, "op": op, "args": args, "hop": self._hop})
        return sid

    def ref(self, hop: int) -> tuple[dict, str]:
        """Program argument and phrase for the instance hop `hop` established."""
        inst_id = self.chain[hop].inst
        cat = self.c.by_id[inst_id]["category"]
        self.ref_phrase = f"that {cat}"
        if hop in self.kept:
            return {"ref": self.hop_step[hop]}, self.ref_phrase
        if inst_id in self.direct:
            return {"ref": self.direct[inst_id]}, self.ref_phrase
        op, args, phrase = self.c._direct(self.c.by_id[inst_id])
        self.direct[inst_id] = self.step(op, args)
        self.ref_phrase = phrase
        return {"ref": self.direct[inst_id]}, phrase

    def _t(self, key: str, **fmt) -> str:
        text = phrasing.choose(phrasing.TEMPLATES[key], self.rng).format(**fmt)
        return text[0].upper() + text[1:]

    def emit(self, h: int) -> None:
        spec, c = self.chain[h], self.c
        self._hop = h - self.kept.start
        self._cur = h
        p = spec.params
        is_last = h == self.kept.stop - 1
        sentence, explain = getattr(self, f"_emit_{spec.op}")(spec, p)
        self.combined[h] = False
        question = sentence
        if spec.combine is not None and spec.combine[1] in self.kept:
            op, other, first_is_a = spec.combine
            first, second = {"ref": self.hop_step[other]}, {"ref": self.hop_step[h]}
            a, b = (first, second) if first_is_a else (second, first)
            self.hop_step[h] = self.step(op, {"a": a, "b": b})
            self.combined[h] = True
            key = op if op != "sub" else ("sub_first_minus_second" if first_is_a else "sub_second_minus_first")
            question = f"{sentence} {phrasing.choose(phrasing.COMBINE[key], self.rng)}"
            symbol = {"add": "+", "sub": "-", "mul": "×"}[op]
            inner = explain
            explain = lambda env, inner=inner: (
                f"{inner(env)} Combining the two numbers: {env[a['ref']]} {symbol} {env[b['ref']]} = {env[self.hop_step[h]]}.")
        elif is_last and spec.op in phrasing.QUESTIONS:
            question = self._question(spec, p)
        self.sentences[h] = sentence
        self.explain[h] = explain
        self.question_parts.append(question)

    # -- one emitter per hop op; each returns (sentence, explain(env) -> rationale text) -------------
    def _found(self, h_value_step: str) -> Callable[[dict], str]:
        return lambda env: f"It is {self.c.describe(env[h_value_step])}."

    def _emit_select(self, spec, p):
        f = p["filter"]
        cat = f["category"]
        if p["mode"] == "text":
            s = self._t("select_text_word" if CATEGORIES[cat].text == "word" else "select_text_number", text=f["text"])
        elif p["mode"] == "part_count":
            s = self._t("select_part_count", cat=cat, n=f["part_count"], parts=phrasing.parts_word(cat, f["part_count"]))
        else:
            s = self._t("select_color", cat=cat, color=f["color"])
        sid = self.hop_step[self._cur] = self.step("select", {"filter": dict(f)})
        return s, self._found(sid)

    def _emit_superlative(self, spec, p):
        cat, key, order = p["category"], p["key"], p["order"]
        if key == "part_count":
            s = self._t("superlative_value", cat=cat, cats=phrasing.plural(cat), parts=phrasing.parts_word(cat),
                        most="most" if order == "max" else "fewest")
        elif key == "number":
            s = self._t("superlative_number", most="largest" if order == "max" else "smallest")
        else:
            s = self._t("superlative_position", cat=cat, sup=phrasing.SUPERLATIVE_WORDS[key, order])
        sid = self.hop_step[self._cur] = self.step(
            "superlative", {"filter": {"category": cat}, "key": key, "order": order})
        return s, self._found(sid)

    def _emit_relate(self, spec, p):
        arg, ref = self.ref(spec.uses[0])
        cat, rel = p["category"], p["relation"]
        if rel == "nearest":
            s = self._t("relate_nearest", cat=cat, ref=ref)
        else:
            s = self._t("relate_direction", cat=cat, cats=phrasing.plural(cat), ref=ref, rel=phrasing.RELATION_WORDS[rel])
        sid = self.hop_step[self._cur] = self.step(
            "relate", {"anchor": arg, "relation": rel, "filter": {"category": cat}})
        return s, self._found(sid)

    def _emit_between(self, spec, p):
        arg_a, ref_a = self.ref(spec.uses[0])
        arg_b, ref_b = self.ref(spec.uses[1])
        s = self._t("between", cat=p["category"], ref_a=ref_a, ref_b=ref_b)
        sid = self.hop_step[self._cur] = self.step(
            "between", {"a": arg_a, "b": arg_b, "filter": {"category": p["category"]}})
        return s, self._found(sid)

    def _emit_same_color(self, spec, p):
        arg, ref = self.ref(spec.uses[0])
        s = self._t("same_color", cat=p["category"], ref=ref)
        color = self.step("attribute", {"instance": arg, "name": "color"})
        sid = self.hop_step[self._cur] = self.step(
            "select", {"filter": {"category": p["category"], "color": {"ref": color}}})
        return s, lambda env: f"That colour is {env[color]}. {self._found(sid)(env)}"

    def _emit_count_parts(self, spec, p):
        arg, ref = self.ref(spec.uses[0])
        cat = self.c.by_id[self.chain[spec.uses[0]].inst]["category"]
        s = self._t("count_parts", parts=phrasing.parts_word(cat), ref=ref)
        sid = self.hop_step[self._cur] = self.step("count_parts", {"instance": arg})
        return s, lambda env: f"It has {env[sid]} {phrasing.parts_word(cat, env[sid])}."

    def _emit_read_number(self, spec, p):
        arg, ref = self.ref(spec.uses[0])
        s = self._t("read_number", ref=ref)
        sid = self.hop_step[self._cur] = self.step("read_number", {"instance": arg})
        return s, lambda env: f"It shows {env[sid]}."

    def _counted(self, spec) -> str:
        return ", ".join(self.c.describe(i) for i in spec.counted)

    def _emit_count_relative(self, spec, p):
        arg, ref = self.ref(spec.uses[0])
        cats, rel = phrasing.plural(p["category"]), phrasing.RELATION_WORDS[p["relation"]]
        s = self._t("count_relative", cats=cats, rel=rel, ref=ref)
        sid = self.hop_step[self._cur] = self.step(
            "count", {"filter": {"category": p["category"]}, "relation": p["relation"], "anchor": arg})
        return s, lambda env: f"{_there_are(env[sid])}: {self._counted(spec)}."

    def _emit_count_same_color(self, spec, p):
        arg, ref = self.ref(spec.uses[0])
        s = self._t("count_same_color", cats=phrasing.plural(p["category"]), ref=ref)
        color = self.step("attribute", {"instance": arg, "name": "color"})
        sid = self.hop_step[self._cur] = self.step(
            "count", {"filter": {"category": p["category"], "color": {"ref": color}}})
        return s, lambda env: f"That colour is {env[color]}; {_there_are(env[sid]).lower()}: {self._counted(spec)}."

    def _question(self, spec, p) -> str:
        ref = self.ref_phrase  # the phrase the hop's own sentence used for its object
        if spec.op in ("count_parts",):
            cat = self.c.by_id[self.chain[spec.uses[0]].inst]["category"]
            fmt = {"parts": phrasing.parts_word(cat), "ref": ref}
        elif spec.op == "read_number":
            fmt = {"ref": ref}
        elif spec.op == "count_relative":
            fmt = {"cats": phrasing.plural(p["category"]), "rel": phrasing.RELATION_WORDS[p["relation"]], "ref": ref}
        else:
            fmt = {"cats": phrasing.plural(p["category"]), "ref": ref}
        q = phrasing.choose(phrasing.QUESTIONS[spec.op], self.rng).format(**fmt)
        return q[0].upper() + q[1:]

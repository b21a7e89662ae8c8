"""Chain composer: multi-hop queries over one image's instances, with programs, text and variants.

A chain is a list of hops (SPEC §1, §3):
  hop 0          an anchor: one instance picked out by Level-1 perception (its text, its part count,
                 its colour, its size class) or Level-2 comparison (largest, leftmost, most dots, ...);
                 always one of several instances of its category, so the pick is real perception work;
  1-2 link hops  instance-chain hops to a new instance through the previous ones (nearest / farthest /
                 directly left of / above ..., in front of / behind through occlusion, between two found
                 instances, same colour as a found instance);
  0-1 compare    of the last two found instances, the larger or smaller one (Level-2 size comparison);
  1-2 value hops numbers read off found instances: Level 1 (count its parts, read its number, count the
                 letters of its word) or Level 2 (count a set relative to it, up to `max_count`); the last
                 may combine with the earlier number (sum, difference, product), and that result is the
                 answer.
Every referring expression is resolved with the program executor (exactly one referent) and must also
pass clarity margins, so a person looking at the image picks the same instance: the runner-up is clearly
farther; for a direction, every object of the asked category lies well inside the direction's cone or
well outside it (a dead zone around the cone's edge); "between" keeps its one object well inside the
segment's band and every other clearly out; sizes are compared only between unoccluded objects at a
clear ratio. Named instances have distinct categories, so "that ladybug" is never ambiguous, and set
counts never count a named category.
No padding: a hop never re-asks what the question already states (a colour given in words, the text
that found a sign), an instance found through a colour is not used for that colour again, arithmetic
never multiplies by 1 or subtracts equal numbers, and every full chain passes the counterfactual check
(counterfactual.py) before it is offered.

Variants (SPEC §1): "full" keeps every hop, "half" the last ceil(n/2) hops, "single" the last hop.
Instances that the dropped hops used to establish are named directly ("the orange ladybug", "the
leftmost card") and arithmetic with a dropped number is dropped, so each variant has its own answer.

Answer balance (AnswerBalance, one per shard): `compose` makes up to `candidates_per_image` distinct
chains that are admissible — their answer under the `max_answer_share` cap and, with
`drop_blind_solvable`, not answerable by the text-only rule of stats.py — and keeps up to
`queries_per_image` of them, rarest answers and values first, each after its counterfactual check.
Value hops favour values their kind has produced least, and arithmetic the op whose result is rarest.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, Sequence

import numpy as np

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.counterfactual import counterfactual_failures
from hopchain_jax.synth.stats import blind_guess, blind_keys
from hopchain_jax.synth.program import DIRECTION_AXES, DIRECTIONS, Executor, ProgramError, occludes, superlative_key
from hopchain_jax.world.catalog import CATEGORIES
from hopchain_jax.variants import CHAIN_VARIANTS

VARIANTS = CHAIN_VARIANTS
LINK_FORM_WEIGHTS = {"relate": 1.0, "same_color": 1.0, "between": 2.0}
COMBINE_PENALTY = {"mul": 0, "sub": 1, "add": 2}  # added to an answer's count when choosing the arithmetic
# Hop forms (the composer's names) -> the program op of the hop's main step (the record's hops[].op).
HOP_OPS = {"select": "select", "superlative": "superlative", "relate": "relate", "between": "between",
           "same_color": "select", "compare": "compare", "count_parts": "count_parts",
           "read_number": "read_number", "count_letters": "count_letters", "count_relative": "count",
           "count_same_color": "count"}


@dataclasses.dataclass(frozen=True)
class ComposerConfig:
    """Chain shape, clarity margins and answer balance.

    queries_per_image: chains kept per image; candidates_per_image: distinct valid chains made per
    image to choose from (rarest answers first); max_attempts: random tries per image.
    min_instances/max_instances: distinct instances a full chain must use (SPEC: 3-6).
    p_*: probabilities of a superlative anchor, a second link hop, steering the links towards a
    `between` hop, a compare hop, a second value hop, combining. min_count/max_count: smallest/largest set count asked; max_product: largest product asked;
    max_answer_share: no answer may take more than this share of an image batch's kept chains.
    drop_blind_solvable: drop chains the text-only rule (stats.py), with the value priors of the chains
    kept so far, answers without the image: like the paper's calibration, which drops queries a weaker
    model always solves, it keeps guessable chains out of RL data. blind_top: the rule may take any of
    the blind_top most common values of each kind (2: robust to the priors of a batch differing from
    the dataset's).
    Margins only make references visually clear; execution never uses them. Pixel margins are for a
    600 px short image side and scale with it. Directions: members lie within `cone_inside_deg` of the
    stated direction, every other object of the category at least `cone_outside_deg` off it.
    """

    queries_per_image: int = 14
    candidates_per_image: int = 24
    max_attempts: int = 100
    min_instances: int = 3
    max_instances: int = 6
    p_superlative_anchor: float = 0.3
    p_two_links: float = 0.5
    p_between: float = 0.3
    p_compare: float = 0.3
    p_two_values: float = 0.95
    p_combine: float = 0.95
    min_count: int = 1
    max_count: int = 6
    max_answer_share: float = 0.07
    drop_blind_solvable: bool = True
    blind_top: int = 2
    max_product: int = 120
    relate_ratio: float = 1.25
    relate_gap_px: float = 15.0
    min_separation_px: float = 30.0
    cone_inside_deg: float = 30.0
    cone_outside_deg: float = 60.0
    superlative_position_px: float = 40.0
    superlative_area_ratio: float = 1.3
    compare_area_ratio: float = 1.6
    between_min_length_px: float = 150.0


class Reject(Exception):
    """This attempt cannot make a clear, valid chain; the composer tries another."""


@dataclasses.dataclass
class HopSpec:
    """One hop of a full chain before it is turned into text and program steps.

    form: hop form (a key of HOP_OPS); kind/level: SPEC §3 labels; inst: the instance an instance hop
    establishes (None for value hops); uses: earlier hops whose instances it refers to; counted:
    instances a counting hop counts; params: form details; known: what the question's words already
    give away about `inst` ("color", "size", "parts", "number", "text"); combine: (arith op, earlier
    hop, a_first) or None; value: the hop's own result (instance id or int); combined: the result after
    `combine` (None without one). Both are checked against execution.
    """

    form: str
    kind: str
    level: int
    value: Any
    inst: str | None = None
    uses: tuple[int, ...] = ()
    counted: tuple[str, ...] = ()
    params: dict = dataclasses.field(default_factory=dict)
    known: frozenset = frozenset()
    combine: tuple[str, int, bool] | None = None
    combined: int | None = None

    @property
    def op(self) -> str:
        return HOP_OPS[self.form]

    def instance_ids(self, chain: Sequence["HopSpec"]) -> list[str]:
        ids = [chain[h].inst for h in self.uses] + ([self.inst] if self.inst else []) + list(self.counted)
        return list(dict.fromkeys(ids))


@dataclasses.dataclass
class RealizedQuery:
    """One variant ready for a record: schema-v2 hops, program, question, answer and rationale."""

    variant: str
    hops: list[dict]
    program: dict
    question: str
    answer: int
    rationale: str
    step_values: dict = dataclasses.field(default_factory=dict, repr=False)  # step id -> value (not stored)


class ChainComposer:
    """Composes verified multi-hop chains over one image's instances (schema-v2 instance dicts)."""

    def __init__(self, instances: Sequence[dict], width: int, height: int, config: ComposerConfig = ComposerConfig()):
        self.instances = list(instances)
        self.width, self.height = width, height
        self.cfg = config
        self.px = min(width, height) / 600.0  # pixel margins are given for a 600 px short side
        self.ex = Executor(self.instances, width, height)
        self.geo = self.ex.geo
        self.by_id = self.ex.by_id
        self.by_cat: dict[str, list[dict]] = {}
        for inst in self.instances:
            self.by_cat.setdefault(inst["category"], []).append(inst)
        self._balance = AnswerBalance()  # compose() swaps in the caller's running balance
        self.occluded = {i["id"] for inst in self.instances for i in map(self.by_id.get, inst.get("occludes") or ()) if i}
        # Pairwise geometry in one numpy pass, kept as nested lists (fast scalar lookups): dist[a][c],
        # off-axis angle[relation][a][c] in degrees of c seen from a. Only clarity checks and the local
        # counterfactual read these; every composed program is then run by the executor itself.
        self.index = {inst["id"]: k for k, inst in enumerate(self.instances)}
        xy = np.array([self.geo.center(inst) for inst in self.instances], dtype=np.float64).reshape(-1, 2)
        dx = xy[None, :, 0] - xy[:, None, 0]
        dy = xy[None, :, 1] - xy[:, None, 1]
        self._dist = np.hypot(dx, dy).tolist()
        self._angle = {}
        for relation, (ux, uy) in DIRECTION_AXES.items():
            along, across = dx * ux + dy * uy, np.abs(dx * uy - dy * ux)
            self._angle[relation] = np.degrees(np.arctan2(across, along)).tolist()

    # ------------------------------------------------------------------------------------------------
    # public
    def compose(self, rng: np.random.Generator, balance: "AnswerBalance | None" = None
                ) -> list[dict[str, RealizedQuery]]:
        """Up to cfg.queries_per_image distinct chains, each as {variant: RealizedQuery}.

        balance: running histograms of what was kept so far (updated here); of the candidates, the
        chains kept are those whose answer and values it holds least often, so answers spread out."""
        balance = self._balance = balance if balance is not None else AnswerBalance()
        candidates, seen = [], set()
        for _ in range(self.cfg.max_attempts):
            if len(candidates) >= self.cfg.candidates_per_image:
                break
            try:
                chain = self._chain(rng)
                key = tuple((h.form, tuple(h.instance_ids(chain))) for h in chain)
                if key in seen:
                    continue
                seen.add(key)
                full = self.realize(chain, "full", rng)
            except Reject:
                continue
            if not self._admissible(full, balance):
                continue
            candidates.append((chain, full))
        out = []
        while candidates and len(out) < self.cfg.queries_per_image:
            scores = [balance.score(full) for _, full in candidates]
            pool = [k for k, sc in enumerate(scores) if sc == min(scores)]
            chain, full = candidates.pop(pool[int(rng.integers(len(pool)))])
            if not self.passes_counterfactual(full):  # checked only for the chains about to be kept
                continue
            try:
                variants = {"full": full, **{v: self.realize(chain, v, rng) for v in VARIANTS[1:]}}
            except Reject:
                continue
            balance.add(full)
            out.append(variants)
            # Only the cap is rechecked as chains are kept; the blind rule judged each candidate once.
            candidates = [c for c in candidates if not balance.over_cap(c[1], self.cfg.max_answer_share)]
        return out

    def _admissible(self, full: RealizedQuery, balance: "AnswerBalance") -> bool:
        """Its answer is under the cap, and (drop_blind_solvable) no blind rule gets it."""
        if balance.over_cap(full, self.cfg.max_answer_share):
            return False
        return not (self.cfg.drop_blind_solvable and full.answer in balance.blind_guesses(full, self.cfg.blind_top))

    def passes_counterfactual(self, full: RealizedQuery) -> bool:
        record = {"image": {"width": self.width, "height": self.height}, "instances": self.instances,
                  "program": full.program}
        return not counterfactual_failures(record, first_only=True)

    # ------------------------------------------------------------------------------------------------
    # clarity-checked geometry
    def _cone_members(self, anchor: dict, relation: str, category: str) -> list[dict]:
        """Instances of `category` in the direction's cone from `anchor`; Reject when any of them lies
        in the dead zone around the cone's edge or too close to the anchor to judge."""
        members = self._cone_cached(anchor["id"], relation, category)
        if members is None:
            raise Reject
        return list(members)

    @functools.lru_cache(maxsize=None)
    def _cone_cached(self, anchor_id: str, relation: str, category: str) -> tuple | None:
        a = self.index[anchor_id]
        dist, angle = self._dist[a], self._angle[relation][a]
        near = self.cfg.min_separation_px * self.px
        members = []
        for c in self.by_cat.get(category, []):
            k = self.index[c["id"]]
            if k == a:
                continue
            if dist[k] < near or self.cfg.cone_inside_deg < angle[k] < self.cfg.cone_outside_deg:
                return None
            if angle[k] <= self.cfg.cone_inside_deg:
                members.append(c)
        return tuple(members)

    def _clear_extreme(self, cands: list[dict], anchor: dict, farthest: bool) -> dict:
        dist = self._dist[self.index[anchor["id"]]]
        cands = sorted(cands, key=lambda c: dist[self.index[c["id"]]], reverse=farthest)
        if not cands:
            raise Reject
        if len(cands) > 1:
            d1, d2 = dist[self.index[cands[0]["id"]]], dist[self.index[cands[1]["id"]]]
            near, far = (d2, d1) if farthest else (d1, d2)
            if far < self.cfg.relate_ratio * near + self.cfg.relate_gap_px * self.px:
                raise Reject
        return cands[0]

    def _clear_relate(self, anchor: dict, relation: str, category: str) -> dict:
        others = [c for c in self.by_cat.get(category, []) if c["id"] != anchor["id"]]
        if relation in DIRECTIONS:
            return self._clear_extreme(self._cone_members(anchor, relation, category), anchor, False)
        if relation in ("nearest", "farthest"):
            return self._clear_extreme(others, anchor, relation == "farthest")
        if relation == "in_front_of":
            found = [c for c in others if occludes(c, anchor)]
        else:  # behind
            found = [c for c in others if occludes(anchor, c)]
        if len(found) != 1:
            raise Reject
        return found[0]

    def _clear_between(self, a: dict, b: dict, category: str) -> dict:
        if self.geo.dist(a, b) < self.cfg.between_min_length_px * self.px:
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
        members = self.by_cat.get(category, [])
        if key == "area" and any(c["id"] in self.occluded for c in members):
            raise Reject  # a partly hidden object's visible area is not its size
        scored = [(superlative_key(c, key, self.geo), c) for c in members]
        scored = sorted(((v, c) for v, c in scored if v is not None), key=lambda vc: vc[0], reverse=order == "max")
        if len(scored) < 2:
            raise Reject
        (v1, best), (v2, _) = scored[0], scored[1]
        if key == "area":
            ok = max(v1, v2) >= self.cfg.superlative_area_ratio * min(v1, v2)
        elif key in ("center_x", "center_y"):
            ok = abs(v1 - v2) >= self.cfg.superlative_position_px * self.px
        else:
            ok = v1 != v2
        if not ok:
            raise Reject
        return best

    def _clear_count_relative(self, anchor: dict, category: str, relation: str) -> list[dict]:
        counted = self._cone_members(anchor, relation, category)
        if not self.cfg.min_count <= len(counted) <= self.cfg.max_count:
            raise Reject
        return counted

    def _unique(self, filt: dict) -> dict | None:
        found = self.ex.matches(filt)
        return found[0] if len(found) == 1 else None

    # ------------------------------------------------------------------------------------------------
    # chain generation
    @functools.cached_property
    def _anchor_selects(self) -> list[HopSpec]:
        """A Level-1 select for every instance a description picks out alone among several of its
        category (a unique text, part count, colour or size class)."""
        options = []
        for cat, members in self.by_cat.items():
            if len(members) < 2:
                continue  # picking the only one of its kind is no perception work
            for inst in members:
                attrs = inst["attributes"]
                for mode, key, known in (("text", "text", {"text", "number"}), ("part_count", "part_count", {"parts"}),
                                         ("color", "color", {"color"}), ("size", "size", {"size"})):
                    value = attrs.get(key)
                    if value is None or (mode == "size" and inst["id"] in self.occluded):
                        continue
                    filt = {"category": cat, key: value}
                    if self._unique(filt):
                        options.append(HopSpec("select", "perception", 1, inst["id"], inst["id"],
                                               params={"filter": filt, "mode": mode}, known=frozenset(known)))
        return options

    @functools.cached_property
    def _anchor_superlatives(self) -> list[HopSpec]:
        """A Level-2 superlative for every clear (category, key, order) of a category with several instances."""
        options = []
        for cat, members in sorted(self.by_cat.items()):
            if len(members) < 2:
                continue
            keys = ["area", "center_x", "center_y"]
            if CATEGORIES[cat].part:
                keys.append("part_count")
            if CATEGORIES[cat].text == "number":
                keys.append("number")
            for key in keys:
                for order in ("max", "min"):
                    try:
                        best = self._clear_superlative(cat, key, order)
                    except Reject:
                        continue
                    known = {"part_count": {"parts"}, "number": {"number"}}.get(key, set())
                    options.append(HopSpec("superlative", "perception", 2, best["id"], best["id"],
                                           params={"category": cat, "key": key, "order": order}, known=frozenset(known)))
        return options

    def _anchor(self, rng: np.random.Generator) -> HopSpec:
        # Only anchors a link can leave from (the others end every chain at once).
        selects = [h for h in self._anchor_selects if self._single_links(h.inst)]
        superlatives = [h for h in self._anchor_superlatives if self._single_links(h.inst)]
        if superlatives and (rng.random() < self.cfg.p_superlative_anchor or not selects):
            return dataclasses.replace(superlatives[int(rng.integers(len(superlatives)))])
        if not selects:
            raise Reject
        return dataclasses.replace(selects[int(rng.integers(len(selects)))])

    def _last_instance_hop(self, chain: list[HopSpec]) -> int:
        return max(i for i, h in enumerate(chain) if h.inst)

    def _links_from(self, anchor_id: str, other_id: str | None) -> tuple:
        """(form, target id, params) of every clear instance-chain step from `anchor_id` (and, for
        `between`, `other_id`) to an instance of another category that has several instances."""
        return self._single_links(anchor_id) + (self._between_links(other_id, anchor_id) if other_id else ())

    @functools.lru_cache(maxsize=None)
    def _single_links(self, anchor_id: str) -> tuple:
        """The relate and same-colour steps from one instance (see _links_from)."""
        anchor = self.by_id[anchor_id]
        out = []
        for cat in sorted(self.by_cat):
            if cat == anchor["category"] or len(self.by_cat[cat]) < 2:
                continue
            for relation in ("nearest", "farthest", *DIRECTIONS, "in_front_of", "behind"):
                try:
                    target = self._clear_relate(anchor, relation, cat)
                except Reject:
                    continue
                if self._pick_matters(anchor, target, lambda alt: self._relate_from(alt, relation, cat)):
                    out.append(("relate", target["id"], (("category", cat), ("relation", relation))))
            target = self._unique({"category": cat, "color": anchor["attributes"]["color"]})
            if target is not None and self._pick_matters(
                    anchor, target, lambda alt: self.ex.op_select({}, {"category": cat, "color": self.by_id[alt]["attributes"]["color"]})):
                out.append(("same_color", target["id"], (("category", cat),)))
        return tuple(out)

    @functools.lru_cache(maxsize=None)
    def _between_links(self, other_id: str, anchor_id: str) -> tuple:
        """The `between` steps from the segment other -> anchor (see _links_from)."""
        anchor, other = self.by_id[anchor_id], self.by_id[other_id]
        if other["category"] == anchor["category"]:
            return ()
        out = []
        for cat in sorted(self.by_cat):
            if cat in (anchor["category"], other["category"]) or len(self.by_cat[cat]) < 2:
                continue
            try:
                target = self._clear_between(other, anchor, cat)
            except Reject:
                continue
            if self._pick_matters(anchor, target, lambda alt: self.ex.op_between({}, other_id, alt, {"category": cat})):
                out.append(("between", target["id"], (("category", cat),)))
        return tuple(out)

    def _relate_from(self, anchor_id: str, relation: str, category: str) -> str | None:
        """What `relate` yields from anchor_id (None: no candidate or a tie), from the pairwise tables."""
        a = self.index[anchor_id]
        cands = [c for c in self.by_cat.get(category, []) if c["id"] != anchor_id]
        if relation in DIRECTIONS:
            angle = self._angle[relation][a]
            cands = [c for c in cands if angle[self.index[c["id"]]] < 45.0]
        elif relation == "in_front_of":
            cands = [c for c in cands if occludes(c, self.by_id[anchor_id])]
        elif relation == "behind":
            cands = [c for c in cands if occludes(self.by_id[anchor_id], c)]
        if not cands:
            return None
        dist = self._dist[a]
        ds = sorted((dist[self.index[c["id"]]], c["id"]) for c in cands)
        if relation == "farthest":
            ds.reverse()
        if len(ds) > 1 and ds[0][0] == ds[1][0]:
            return None
        return ds[0][1]

    def _count_from(self, anchor_id: str, relation: str, category: str) -> int:
        """What `count` with a direction yields from anchor_id, from the pairwise tables."""
        angle = self._angle[relation][self.index[anchor_id]]
        return sum(1 for c in self.by_cat.get(category, []) if c["id"] != anchor_id and angle[self.index[c["id"]]] < 45.0)

    def _pick_matters(self, inst: dict, result: Any, step_from: Callable[[str], Any]) -> bool:
        """A local counterfactual: a reader who took another instance of inst's category for `inst`
        gets a different result from `step_from` (or none at all). The chain's full check
        (counterfactual.py) decides; this only keeps hopeless chains from being composed."""
        result = result["id"] if isinstance(result, dict) else result
        for alt in self.by_cat[inst["category"]]:
            if alt["id"] == inst["id"]:
                continue
            try:
                if step_from(alt["id"]) == result:
                    return False
            except ProgramError:
                pass
        return True

    def _link(self, chain: list[HopSpec], rng: np.random.Generator, towards_between: bool = False,
              onward: bool = False) -> HopSpec:
        """The next instance-chain hop. towards_between: when some targets would allow a `between`
        hop next (between them and the current instance), pick among those; when the chain already has
        two instances and a `between` is possible, take it. onward: another link follows, so only
        targets with links of their own; otherwise only targets with value hops about them."""
        named_cats = {self.by_id[h.inst]["category"] for h in chain if h.inst}
        last = self._last_instance_hop(chain)
        instance_hops = [i for i, h in enumerate(chain) if h.inst]
        other = instance_hops[-2] if len(instance_hops) >= 2 else None
        options = [o for o in self._links_from(chain[last].inst, chain[other].inst if other is not None else None)
                   if self.by_id[o[1]]["category"] not in named_cats
                   and not (o[0] == "same_color" and "color" in chain[last].known)]  # colour already in words
        if onward:
            options = [o for o in options if any(self.by_id[x[1]]["category"] not in named_cats | {self.by_id[o[1]]["category"]}
                                                 for x in self._single_links(o[1]))]
        else:
            options = [o for o in options if self._values_about(o[1], frozenset({"color"}) if o[0] == "same_color" else frozenset(), False)]
        if not options:
            raise Reject
        if towards_between:
            if any(o[0] == "between" for o in options):
                options = [o for o in options if o[0] == "between"]
            else:
                leading = [o for o in options if o[0] != "same_color" and any(
                    x[0] == "between" and self.by_id[x[1]]["category"] not in named_cats | {self.by_id[o[1]]["category"]}
                    for x in self._between_links(chain[last].inst, o[1]))]
                options = leading or options
        # A form first, then a relation, then a target: between and occlusion are not crowded out.
        forms = sorted({o[0] for o in options})
        weights = np.array([LINK_FORM_WEIGHTS[f] for f in forms])
        form = forms[int(rng.choice(len(forms), p=weights / weights.sum()))]
        options = [o for o in options if o[0] == form]
        if form == "relate":
            relations = sorted({dict(o[2])["relation"] for o in options})
            relation = relations[int(rng.integers(len(relations)))]
            options = [o for o in options if dict(o[2])["relation"] == relation]
        _, target, params = options[int(rng.integers(len(options)))]
        params = dict(params)
        if form == "between":
            return HopSpec("between", "instance_chain", 2, target, target, uses=(other, last), params=params)
        if form == "same_color":
            return HopSpec("same_color", "instance_chain", 1, target, target, uses=(last,), params=params,
                           known=frozenset({"color"}))
        return HopSpec("relate", "instance_chain", 2, target, target, uses=(last,), params=params)

    def _compare(self, chain: list[HopSpec], rng: np.random.Generator) -> HopSpec:
        a_hop, b_hop = [i for i, h in enumerate(chain) if h.inst][-2:]
        a, b = self.by_id[chain[a_hop].inst], self.by_id[chain[b_hop].inst]
        if a["id"] in self.occluded or b["id"] in self.occluded:
            raise Reject
        if max(a["area"], b["area"]) < self.cfg.compare_area_ratio * min(a["area"], b["area"]):
            raise Reject
        order = str(rng.choice(["max", "min"]))
        pick = a if (a["area"] > b["area"]) == (order == "max") else b
        known = chain[a_hop if pick is a else b_hop].known
        return HopSpec("compare", "perception", 2, pick["id"], pick["id"], uses=(a_hop, b_hop),
                       params={"order": order}, known=known)

    def _value_options(self, chain: list[HopSpec], hop: int) -> list[HopSpec]:
        """Every clear value hop about the instance that hop `hop` established."""
        spec = chain[hop]
        return [HopSpec(form, "perception", level, value, uses=(hop,), counted=counted, params=dict(params))
                for form, level, value, counted, params in self._values_about(spec.inst, spec.known, spec.form == "compare")]

    @functools.lru_cache(maxsize=None)
    def _values_about(self, inst_id: str, known: frozenset, compared: bool) -> tuple:
        """(form, level, value, counted ids, params) of every clear value hop about one instance that
        re-asks nothing the words already give (`known`) and whose value a mistaken pick changes.
        compared: the instance is named only as "the larger/smaller one", so Level-1 reads (whose
        wording names its kind of part or text) are left out and no mistaken pick is checked here."""
        inst = self.by_id[inst_id]
        cat, attrs = inst["category"], inst["attributes"]

        def matters(value_of: Callable[[str], Any], value: Any) -> bool:
            return compared or self._pick_matters(inst, value, value_of)

        options = []
        if not compared:
            if attrs.get("part_count") is not None and "parts" not in known and matters(
                    lambda alt: self.by_id[alt]["attributes"]["part_count"], attrs["part_count"]):
                options.append(("count_parts", 1, attrs["part_count"], (), ()))
            if CATEGORIES[cat].text == "number" and not {"number", "text"} & known and matters(
                    lambda alt: int(self.by_id[alt]["attributes"]["text"]), int(attrs["text"])):
                options.append(("read_number", 1, int(attrs["text"]), (), ()))
            if CATEGORIES[cat].text == "word" and "text" not in known and matters(
                    lambda alt: len(self.by_id[alt]["attributes"]["text"]), len(attrs["text"])):
                options.append(("count_letters", 1, len(attrs["text"]), (), ()))
        for form, value, counted, params in self._set_counts(inst_id):
            if form == "count_same_color" and "color" in known:
                continue
            p = dict(params)
            if form == "count_relative":
                value_of = lambda alt, p=p: self._count_from(alt, p["relation"], p["category"])
            else:
                value_of = lambda alt, p=p: self.ex.op_count(
                    {}, {"category": p["category"], "color": self.by_id[alt]["attributes"]["color"]})
            if matters(value_of, value):
                options.append((form, 2, value, counted, params))
        return tuple(options)

    @functools.lru_cache(maxsize=None)
    def _set_counts(self, inst_id: str) -> tuple:
        """(form, count, counted ids, params) of every clear Level-2 count about one instance."""
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
            if self.cfg.min_count <= len(same) <= self.cfg.max_count and len(same) < len(self.by_cat[other]):
                out.append(("count_same_color", len(same), tuple(c["id"] for c in same), (("category", other),)))
        return tuple(out)

    def _chain(self, rng: np.random.Generator) -> list[HopSpec]:
        chain = [self._anchor(rng)]
        towards_between = rng.random() < self.cfg.p_between
        n_links = 2 if towards_between or rng.random() < self.cfg.p_two_links else 1
        for k in range(n_links):
            chain.append(self._link(chain, rng, towards_between, onward=k < n_links - 1))
        if rng.random() < self.cfg.p_compare:
            try:
                chain.append(self._compare(chain, rng))
            except Reject:
                pass  # the two objects are too alike in size to compare: no compare hop
        last_inst = len(chain) - 1
        # Set counts never count a category the chain names ("count the houses ..." after "the large
        # house" leaves open whether that house counts, and "that house" after it whether it is one of them).
        named_cats = {self.by_id[h.inst]["category"] for h in chain if h.inst}
        # The last found instance must matter: the first value hop is about it.
        first = [o for o in self._value_options(chain, last_inst) if o.params.get("category") not in named_cats]
        if not first:
            raise Reject
        chain.append(self._pick_value(first, chain, rng))
        # SPEC: a Level-1 and a Level-2 perception hop; the second value hop supplies what is missing.
        need = {(1, "perception"), (2, "perception")} - {(h.level, h.kind) for h in chain}
        if need or rng.random() < self.cfg.p_two_values:
            pool = [o for h in range(last_inst + 1) if chain[h].form != "compare" or h == last_inst
                    for o in self._value_options(chain, h)
                    if (o.form, o.uses, o.params) != (chain[-1].form, chain[-1].uses, chain[-1].params)
                    and o.params.get("category") not in named_cats
                    and (len(need) != 1 or (o.level, o.kind) in need)]
            if pool:
                second = self._pick_value(pool, chain, rng)
                if rng.random() < self.cfg.p_combine:
                    second.combine = self._combine(chain[-1].value, second.value, len(chain) - 1, rng)
                    second.combined = _apply(second.combine, chain[-1].value, second.value)
                chain.append(second)
        self._check_invariants(chain)
        return chain

    def _pick_value(self, options: list[HopSpec], chain: list[HopSpec], rng: np.random.Generator) -> HopSpec:
        """An option with weight (1 - share)^4 / (options of its form): forms are equally likely a
        priori (plentiful set counts do not crowd out Level-1 reads and part counts), and a value its
        kind has produced often so far (share) is avoided; this keeps e.g. "1" from dominating set
        counts, so no blind prior per kind of value is worth much."""
        per_form = collections.Counter(o.form for o in options)
        kinds = self._balance.kinds

        def share(o: HopSpec) -> float:
            """How often this kind of value (its op and relation, any category) came out as o.value."""
            kind = self._value_kind(o, chain)
            seen = kinds.get((kind[0], None, kind[2]))
            return seen[o.value] / sum(seen.values()) if seen else 0.0
        weights = np.array([((1.0 - share(o)) ** 4 + 1e-3) / per_form[o.form] for o in options])
        return options[int(rng.choice(len(options), p=weights / weights.sum()))]

    def _value_kind(self, spec: HopSpec, chain: list[HopSpec]) -> tuple:
        """The kind of a value hop as stats.blind_keys names it: (program op, category, how)."""
        p = dict(spec.params)
        if spec.form == "count_relative":
            return ("count", p["category"], p["relation"])
        if spec.form == "count_same_color":
            return ("count", p["category"], "same_color")
        subject = chain[spec.uses[0]]
        return (spec.op, None if subject.form == "compare" else self.by_id[subject.inst]["category"], "")

    def _combine(self, first: int, second: int, first_hop: int, rng) -> tuple[str, int, bool]:
        """An arithmetic step that does real work (no product with 1, no difference of equal numbers),
        the op whose result is the rarest answer so far (ties at random)."""
        results = {"add": first + second}
        if first != second:
            results["sub"] = abs(first - second)
        if min(first, second) >= 2 and first * second <= self.cfg.max_product:
            results["mul"] = first * second
        seen = self._balance.answers
        # Products of two readings are the hardest to guess blind, sums of two small counts the easiest.
        cost = {op: seen[v] + COMBINE_PENALTY[op] for op, v in results.items()}
        ops = sorted(op for op in results if cost[op] == min(cost.values()))
        op = ops[int(rng.integers(len(ops)))]
        return op, first_hop, (first > second if op == "sub" else True)

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
        if inst["id"] not in self.occluded and self._unique({"category": cat, "size": attrs["size"]}):
            return ("select", {"filter": {"category": cat, "size": attrs["size"]}},
                    f"the {phrasing.SIZE_WORDS[attrs['size']]} {cat}")
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
        program = {"steps": r.steps, "output": r.out_step[n - 1]}
        try:
            answer, env = self.ex.run(program)
        except ProgramError as e:  # a composer bug, never a scene property: fail loudly
            raise AssertionError(f"composed program does not execute: {e}\n{program}") from e
        hops = []
        for new_index, h in enumerate(range(start, n)):
            spec, value = chain[h], env[r.hop_step[h]]
            if variant == "full" and value != spec.value:
                raise AssertionError(f"hop {h} ({spec.form}) executes to {value!r}, composed as {spec.value!r}")
            combine = None
            if r.combined[h]:
                if variant == "full" and env[r.out_step[h]] != spec.combined:
                    raise AssertionError(f"hop {h} combines to {env[r.out_step[h]]!r}, composed as {spec.combined!r}")
                combine = {"op": spec.combine[0], "with_hop": spec.combine[1] - start, "value": env[r.out_step[h]]}
            depends = sorted({d - start for d in spec.uses + ((spec.combine[1],) if r.combined[h] else ())
                              if d >= start})
            if new_index > 0 and not depends:
                raise Reject  # this cut of the chain would leave a hop hanging on nothing
            hops.append({"index": new_index, "kind": spec.kind, "level": spec.level, "op": spec.op,
                         "instance_ids": spec.instance_ids(chain), "depends_on": depends,
                         "text": r.sentences[h], "value": value, "combine": combine})
        rationale = " ".join(f"Step {i + 1}: {r.sentences[h]} {r.explain[h](env)}" for i, h in enumerate(range(start, n)))
        rationale += f" The answer is \\boxed{{{answer}}}."
        return RealizedQuery(variant, hops, program, " ".join(r.question_parts), int(answer), rationale, env)

    def describe(self, inst_id: str) -> str:
        inst = self.by_id[inst_id]
        cx, cy = self.geo.center(inst)
        return f"the {inst['attributes']['color']} {inst['category']} in the {phrasing.region_words(cx, cy, self.width, self.height)}"


class AnswerBalance:
    """Running histograms of kept full chains: their answers and, per kind of value step (program op,
    category, relation as stats.blind_keys names it), the values those steps produced.

    A candidate's score is (blind, spread): blind is 1 when the text-only rule of stats.py, with the
    priors seen so far, would answer it without the image (such a query is trivially easy: the paper's
    calibration drops queries a weaker model always solves, for the same reason); spread is the count
    of its answer plus the mean count of its step values. The lowest score is kept first, which
    flattens both the answers and what a blind rule could learn about each kind of value."""

    def __init__(self):
        self.answers: collections.Counter = collections.Counter()
        self.values: collections.Counter = collections.Counter()  # (kind, value) -> count
        self.kinds: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)

    @staticmethod
    def _value_keys(query: RealizedQuery) -> list[tuple]:
        said = blind_keys(query.program)
        return [(key, query.step_values[sid]) for sid, key in said.items() if isinstance(key, tuple)]

    def blind_guesses(self, query: RealizedQuery, top: int = 2) -> set:
        """The answers the text-only rule of stats.py would give if each value step took any of the
        `top` most common values of its kind seen so far (a kind seen fewer than 3 times borrows the
        values of its op and relation over all categories, so the rule is as strong early in a batch
        as over a whole dataset). A chain whose answer is among them is guessable without the image."""
        said = blind_keys(query.program)
        steps = [sid for sid, kind in said.items() if isinstance(kind, tuple)]
        choices = []
        for sid in steps:
            kind = said[sid]
            seen = self.kinds.get(kind)
            if not seen or sum(seen.values()) < 3:
                seen = self.kinds.get((kind[0], None, kind[2]))
            ranked = [v for v, _ in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))][:top] if seen else [1]
            choices.append(ranked)
        guesses = set()
        for values in itertools.product(*choices):
            pick = dict(zip(steps, values))
            guesses.add(blind_guess(query.program, said, pick.__getitem__))
        return guesses

    def score(self, query: RealizedQuery) -> tuple[int, float]:
        keys = self._value_keys(query)
        spread = self.answers[query.answer] + (sum(self.values[k] for k in keys) / len(keys) if keys else 0.0)
        return int(query.answer in self.blind_guesses(query, top=1)), spread

    def over_cap(self, query: RealizedQuery, max_share: float, slack: int = 3) -> bool:
        """Keeping `query` would give its answer more than `max_share` of the kept chains plus `slack`
        (the slack lets the first chains of a batch in; it weighs less as the batch grows)."""
        total = sum(self.answers.values())
        return self.answers[query.answer] + 1 > max_share * (total + 1) + slack

    def add(self, query: RealizedQuery) -> None:
        self.answers[query.answer] += 1
        for key, value in self._value_keys(query):
            self.values[key, value] += 1
            self.kinds[key][value] += 1
            if key[1] is not None:
                self.kinds[key[0], None, key[2]][value] += 1


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
        self.hop_step: dict[int, str] = {}  # hop -> step holding the hop's own result
        self.out_step: dict[int, str] = {}  # hop -> step holding its result after `combine`
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
            if self.chain[hop].form == "compare":
                self.ref_phrase = "the " + ("larger" if self.chain[hop].params["order"] == "max" else "smaller") + " one"
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
        spec = self.chain[h]
        self._hop = h - self.kept.start
        self._cur = h
        p = spec.params
        is_last = h == self.kept.stop - 1
        sentence, explain = getattr(self, f"_emit_{spec.form}")(spec, p)
        self.out_step[h] = self.hop_step[h]
        self.combined[h] = False
        question = sentence
        if spec.combine is not None and spec.combine[1] in self.kept:
            op, other, first_is_a = spec.combine
            first, second = {"ref": self.out_step[other]}, {"ref": self.hop_step[h]}
            a, b = (first, second) if first_is_a else (second, first)
            self.out_step[h] = self.step(op, {"a": a, "b": b})
            self.combined[h] = True
            key = op if op != "sub" else ("sub_first_minus_second" if first_is_a else "sub_second_minus_first")
            question = f"{sentence} {phrasing.choose(phrasing.COMBINE[key], self.rng)}"
            symbol = {"add": "+", "sub": "-", "mul": "×"}[op]
            inner, out = explain, self.out_step[h]
            explain = lambda env, inner=inner: (
                f"{inner(env)} Combining the two numbers: {env[a['ref']]} {symbol} {env[b['ref']]} = {env[out]}.")
        elif is_last and spec.form in phrasing.QUESTIONS:
            question = self._question(spec, p)
        self.sentences[h] = sentence
        self.explain[h] = explain
        self.question_parts.append(question)

    # -- one emitter per hop form; each returns (sentence, explain(env) -> rationale text) -----------
    def _found(self, h_value_step: str) -> Callable[[dict], str]:
        return lambda env: f"It is {self.c.describe(env[h_value_step])}."

    def _emit_select(self, spec, p):
        f = p["filter"]
        cat = f["category"]
        if p["mode"] == "text":
            s = self._t("select_text_word" if CATEGORIES[cat].text == "word" else "select_text_number", text=f["text"])
        elif p["mode"] == "part_count":
            s = self._t("select_part_count", cat=cat, n=f["part_count"], parts=phrasing.parts_word(cat, f["part_count"]))
        elif p["mode"] == "size":
            s = self._t("select_size", cat=cat, cats=phrasing.plural(cat), size=phrasing.SIZE_WORDS[f["size"]])
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
        if rel in DIRECTIONS:
            s = self._t("relate_direction", cat=cat, cats=phrasing.plural(cat), ref=ref, rel=phrasing.RELATION_WORDS[rel])
        else:
            s = self._t(f"relate_{rel}", cat=cat, cats=phrasing.plural(cat), ref=ref)
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

    def _emit_compare(self, spec, p):
        arg_a, ref_a = self.ref(spec.uses[0])
        arg_b, ref_b = self.ref(spec.uses[1])
        bigger = "larger" if p["order"] == "max" else "smaller"
        s = self._t("compare_area", ref_a=ref_a, ref_b=ref_b, bigger=bigger)
        sid = self.hop_step[self._cur] = self.step(
            "compare", {"a": arg_a, "b": arg_b, "key": "area", "order": p["order"]})
        return s, lambda env: f"The {bigger} one is {self.c.describe(env[sid])}."

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

    def _emit_count_letters(self, spec, p):
        arg, ref = self.ref(spec.uses[0])
        s = self._t("count_letters", ref=ref)
        sid = self.hop_step[self._cur] = self.step("count_letters", {"instance": arg})
        word = self.c.by_id[self.chain[spec.uses[0]].inst]["attributes"]["text"]
        return s, lambda env: f'The word is "{word}", which has {env[sid]} letters.'

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
        if spec.form == "count_parts":
            cat = self.c.by_id[self.chain[spec.uses[0]].inst]["category"]
            fmt = {"parts": phrasing.parts_word(cat), "ref": ref}
        elif spec.form in ("read_number", "count_letters"):
            fmt = {"ref": ref}
        elif spec.form == "count_relative":
            fmt = {"cats": phrasing.plural(p["category"]), "rel": phrasing.RELATION_WORDS[p["relation"]], "ref": ref}
        else:
            fmt = {"cats": phrasing.plural(p["category"]), "ref": ref}
        q = phrasing.choose(phrasing.QUESTIONS[spec.form], self.rng).format(**fmt)
        return q[0].upper() + q[1:]

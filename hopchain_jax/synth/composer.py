"""Chain composer: samples multi-hop chains over one image's instances and keeps the balanced ones.

A chain is a list of hops (SPEC §1, §3), each of a registered hop form (hops/):
  hop 0          an anchor (role "anchor": select, superlative): one instance picked out by Level-1
                 perception (its text, its part count, its colour, its size class) or Level-2
                 comparison (largest, leftmost, most dots, ...); always one of several instances of its
                 category, so the pick is real perception work;
  1-2 link hops  instance-chain hops (role "link": relate, same_color, between) to a new instance through
                 the previous ones;
  0-1 compare    of the last two found instances, the larger or smaller one (Level-2 size comparison);
  1-2 value hops numbers read off found instances (role "value"): Level 1 (count its parts, read its
                 number, count the letters of its word) or Level 2 (count a set relative to it, up to
                 `max_count`); the last may combine with the earlier number (sum, difference, product),
                 and that result is the answer.
Every reference passes the clarity margins of clarity.py. Named instances have distinct categories, so
"that ladybug" is never ambiguous, and set counts never count a named category.
No padding: a hop never re-asks what the question already states (a form's `asks` against what earlier
words gave away), arithmetic never multiplies by 1, subtracts equal numbers, combines a count with a
count of the same objects, or subtracts two counts that share an object (removing it would cancel out),
and every full chain passes the counterfactual check (counterfactual.py) before it is offered. No two
candidate chains of an image compute the same thing (signature.py: the same instances, values and
arithmetic in another order or wording).

The module split: chain sampling here; clarity geometry (clarity.py); answer balance (balance.py);
realisation of the variants full / half / single (realize.py); each form's options, wording and program
steps (hops/).

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
from typing import Sequence

import numpy as np

from hopchain_jax.synth.balance import AnswerBalance
from hopchain_jax.synth.clarity import ClearScene, Reject
from hopchain_jax.synth.composer_config import ComposerConfig
from hopchain_jax.synth.counterfactual import counterfactual_failures
from hopchain_jax.synth.hops import HOP_FORMS, HopSpec, forms
from hopchain_jax.synth.realize import RealizedQuery, realize
from hopchain_jax.synth.signature import computation_signature
from hopchain_jax.variants import CHAIN_VARIANTS

VARIANTS = CHAIN_VARIANTS
COMBINE_PENALTY = {"mul": 0, "sub": 1, "add": 2}  # added to an answer's count when choosing the arithmetic

__all__ = ["AnswerBalance", "ChainComposer", "ComposerConfig", "HopSpec", "RealizedQuery", "Reject", "VARIANTS"]


class ChainComposer:
    """Composes verified multi-hop chains over one image's instances (schema-v2 instance dicts)."""

    def __init__(self, instances: Sequence[dict], width: int, height: int, config: ComposerConfig = ComposerConfig()):
        self.scene = ClearScene(instances, width, height, config)
        self.instances, self.width, self.height, self.cfg = self.scene.instances, width, height, config
        self.by_id, self.by_cat = self.scene.by_id, self.scene.by_cat
        self._balance = AnswerBalance()  # compose() swaps in the caller's running balance
        self._anchors = {f.name: f for f in forms("anchor", config.opt_in_forms)}
        self._links = forms("link", config.opt_in_forms)
        self._values = forms("value", config.opt_in_forms)

    # ------------------------------------------------------------------------------------------------
    # public
    def compose(self, rng: np.random.Generator, balance: "AnswerBalance | None" = None
                ) -> list[dict[str, RealizedQuery]]:
        """Up to cfg.queries_per_image distinct chains, each as {variant: RealizedQuery}.

        balance: running histograms of what was kept so far (updated here); of the candidates, the
        chains kept are those whose answer and values it holds least often, so answers spread out."""
        balance = self._balance = balance if balance is not None else AnswerBalance()
        candidates, seen, computed = [], set(), set()
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
            signature = computation_signature(full.hops)
            if signature in computed:
                continue  # the same computation as a candidate already made, in another order or wording
            computed.add(signature)
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
            candidates = [c for c in candidates if not balance.over_share(c[1], self.cfg.max_answer_share)]
        return out

    def realize(self, chain: list[HopSpec], variant: str, rng: np.random.Generator) -> RealizedQuery:
        """One variant of a composed chain (realize.py)."""
        return realize(self.scene, chain, variant, rng)

    def describe(self, inst_id: str) -> str:
        return self.scene.describe(inst_id)

    def _admissible(self, full: RealizedQuery, balance: "AnswerBalance") -> bool:
        """Its answer is under the cap, and (drop_blind_solvable) no blind rule gets it."""
        if balance.over_share(full, self.cfg.max_answer_share):
            return False
        return not (self.cfg.drop_blind_solvable and full.answer in balance.blind_guesses(full, self.cfg.blind_top))

    def passes_counterfactual(self, full: RealizedQuery) -> bool:
        record = {"image": {"width": self.width, "height": self.height}, "instances": self.instances,
                  "program": full.program}
        return not counterfactual_failures(record, first_only=True)

    # ------------------------------------------------------------------------------------------------
    # options of each role, from the registered forms
    @functools.cached_property
    def _anchor_options(self) -> dict[str, list[HopSpec]]:
        return {name: f.anchor_options(self.scene) for name, f in self._anchors.items()}

    @functools.lru_cache(maxsize=None)
    def _single_links(self, anchor_id: str) -> tuple:
        """(form, target id, params) of every clear link from one instance (link forms of arity 1)."""
        return tuple((f.name, target, params) for f in self._links if f.arity == 1
                     for target, params in f.link_options(self.scene, anchor_id, None))

    @functools.lru_cache(maxsize=None)
    def _pair_links(self, other_id: str, anchor_id: str) -> tuple:
        """(form, target id, params) of every clear link from two instances (arity 2: between)."""
        return tuple((f.name, target, params) for f in self._links if f.arity == 2
                     for target, params in f.link_options(self.scene, anchor_id, other_id))

    def _links_from(self, anchor_id: str, other_id: str | None) -> tuple:
        """Every clear instance-chain step from `anchor_id` (and, for two-instance forms, `other_id`) to an
        instance of another category that has several instances."""
        return self._single_links(anchor_id) + (self._pair_links(other_id, anchor_id) if other_id else ())

    @functools.lru_cache(maxsize=None)
    def _values_about(self, inst_id: str, known: frozenset, compared: bool) -> tuple:
        """(form, level, value, counted ids, params) of every clear value hop about one instance that
        re-asks nothing the words already give (`known` against each form's `asks`) and whose value a
        mistaken pick changes. compared: the instance is named only as "the larger/smaller one", so
        forms whose wording names its kind of part or text are left out and no mistaken pick is checked.
        Order: the instance reads in registration order, then the set counts by counted category."""
        inst = self.by_id[inst_id]
        options = []
        for f in self._values:
            if (compared and f.names_kind) or f.asks & known:
                continue
            for value, counted, params in f.value_options(self.scene, inst_id):
                if compared or self.scene.pick_matters(inst, value, lambda alt, f=f, p=dict(params): f.value_from(self.scene, alt, p)):
                    options.append((f.name, f.level, value, counted, params))
        order = lambda o: (0, "") if HOP_FORMS[o[0]].scope == "instance" else (1, dict(o[4])["category"])
        return tuple(sorted(options, key=order))

    # ------------------------------------------------------------------------------------------------
    # chain sampling
    def _anchor(self, rng: np.random.Generator) -> HopSpec:
        # Only anchors a link can leave from (the others end every chain at once).
        usable = {name: [h for h in options if self._single_links(h.inst)] for name, options in self._anchor_options.items()}
        selects, superlatives = usable.get("select", []), usable.get("superlative", [])
        if superlatives and (rng.random() < self.cfg.p_superlative_anchor or not selects):
            return dataclasses.replace(superlatives[int(rng.integers(len(superlatives)))])
        if not selects:
            raise Reject
        return dataclasses.replace(selects[int(rng.integers(len(selects)))])

    def _last_instance_hop(self, chain: list[HopSpec]) -> int:
        return max(i for i, h in enumerate(chain) if h.inst)

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
                   and not HOP_FORMS[o[0]].asks & chain[last].known]  # e.g. its colour already in words
        if onward:
            options = [o for o in options if any(self.by_id[x[1]]["category"] not in named_cats | {self.by_id[o[1]]["category"]}
                                                 for x in self._single_links(o[1]))]
        else:
            options = [o for o in options if self._values_about(o[1], HOP_FORMS[o[0]].gives, False)]
        if not options:
            raise Reject
        if towards_between:
            if any(HOP_FORMS[o[0]].arity == 2 for o in options):
                options = [o for o in options if HOP_FORMS[o[0]].arity == 2]
            else:
                # Steer through links whose words give nothing away about their target (not same_color).
                leading = [o for o in options if not HOP_FORMS[o[0]].gives and any(
                    self.by_id[x[1]]["category"] not in named_cats | {self.by_id[o[1]]["category"]}
                    for x in self._pair_links(chain[last].inst, o[1]))]
                options = leading or options
        # A form first, then a relation, then a target: between and occlusion are not crowded out.
        names = sorted({o[0] for o in options})
        weights = np.array([HOP_FORMS[name].weight for name in names])
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        options = [o for o in options if o[0] == name]
        if "relation" in dict(options[0][2]):
            relations = sorted({dict(o[2])["relation"] for o in options})
            relation = relations[int(rng.integers(len(relations)))]
            options = [o for o in options if dict(o[2])["relation"] == relation]
        _, target, params = options[int(rng.integers(len(options)))]
        f = HOP_FORMS[name]
        uses = (other, last) if f.arity == 2 else (last,)
        return HopSpec(name, f.kind, f.level, target, target, uses=uses, params=dict(params), known=f.gives)

    def _compare(self, chain: list[HopSpec], rng: np.random.Generator) -> HopSpec:
        a_hop, b_hop = [i for i, h in enumerate(chain) if h.inst][-2:]
        a, b = self.by_id[chain[a_hop].inst], self.by_id[chain[b_hop].inst]
        if a["id"] in self.scene.occluded or b["id"] in self.scene.occluded:
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
        return [HopSpec(name, HOP_FORMS[name].kind, level, value, uses=(hop,), counted=counted, params=dict(params))
                for name, level, value, counted, params in self._values_about(spec.inst, spec.known, spec.form == "compare")]

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
            first_value = chain[-1]
            pool = [o for h in range(last_inst + 1) if chain[h].form != "compare" or h == last_inst
                    for o in self._value_options(chain, h)
                    if (o.form, o.uses, o.params) != (first_value.form, first_value.uses, first_value.params)
                    and not (o.counted and o.op == first_value.op and set(o.counted) == set(first_value.counted))
                    and o.params.get("category") not in named_cats
                    and (len(need) != 1 or (o.level, o.kind) in need)]
            if pool:
                second = self._pick_value(pool, chain, rng)
                if rng.random() < self.cfg.p_combine:
                    shared = bool(set(first_value.counted) & set(second.counted))
                    second.combine = self._combine(first_value.value, second.value, len(chain) - 1, rng, shared)
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
        subject = chain[spec.uses[0]]
        subject_category = None if subject.form == "compare" else self.by_id[subject.inst]["category"]
        return HOP_FORMS[spec.form].blind_kind(spec, subject_category)

    def _combine(self, first: int, second: int, first_hop: int, rng, shared: bool = False) -> tuple[str, int, bool]:
        """An arithmetic step that does real work (no product with 1, no difference of equal numbers, no
        difference of two counts that share an object: removing it would leave the answer unchanged), the
        op whose result is the rarest answer so far (ties at random)."""
        results = {"add": first + second}
        if first != second and not shared:
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


def _apply(combine: tuple[str, int, bool], first: int, second: int) -> int:
    op, _, first_is_a = combine
    a, b = (first, second) if first_is_a else (second, first)
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]

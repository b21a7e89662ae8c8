"""Realisation: a composed chain (HopSpecs) -> one variant's program steps, question and rationale.

Variants (SPEC §1): "full" keeps every hop, "half" the last ceil(n/2) hops, "single" the last hop.
Instances that the dropped hops used to establish are named directly ("the orange ladybug", "the
leftmost card") and arithmetic with a dropped number is dropped, so each variant has its own answer.
Each hop's sentence, program steps and rationale come from its registered form's `emit` (hops/); the
last value hop of a variant is asked as a question (its form's `questions`) unless it combines with an
earlier number (phrasing.COMBINE).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.clarity import ClearScene, Reject
from hopchain_jax.synth.hops import HOP_FORMS, HopSpec
from hopchain_jax.synth.program import ProgramError


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


def realize(scene: ClearScene, chain: list[HopSpec], variant: str, rng: np.random.Generator) -> RealizedQuery:
    """The `variant` of `chain`: executes its program, checks every full-chain hop value against the
    composed one (a mismatch is a composer bug: AssertionError), and Rejects a cut that leaves a hop
    depending on nothing."""
    n = len(chain)
    start = {"full": 0, "half": n - math.ceil(n / 2), "single": n - 1}[variant]
    r = Realizer(scene, chain, range(start, n), rng)
    for h in range(start, n):
        r.emit(h)
    program = {"steps": r.steps, "output": r.out_step[n - 1]}
    try:
        answer, env = scene.ex.run(program)
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


class Realizer:
    """Turns the kept hops of a chain into program steps and sentences, in order; the helpers a hop
    form's `emit(realizer, spec)` uses: say, ref, subject, step, main_step, found, counted."""

    def __init__(self, scene: ClearScene, chain: list[HopSpec], kept: range, rng: np.random.Generator):
        self.scene, self.chain, self.kept, self.rng = scene, chain, kept, rng
        self.steps: list[dict] = []
        self.hop_step: dict[int, str] = {}  # hop -> step holding the hop's own result
        self.out_step: dict[int, str] = {}  # hop -> step holding its result after `combine`
        self.direct: dict[str, str] = {}
        self.sentences: dict[int, str] = {}
        self.explain: dict[int, Callable[[dict], str]] = {}
        self.combined: dict[int, bool] = {}
        self.question_parts: list[str] = []
        self.ref_phrase = ""
        self._hop = 0
        self._cur = 0

    # -- helpers for the forms' emitters -------------------------------------------------------------
    def say(self, templates: tuple[str, ...], **fields) -> str:
        """One of `templates` (drawn from the run's rng), formatted, first letter capitalised."""
        return phrasing.say(templates, self.rng, **fields)

    def step(self, op: str, args: dict) -> str:
        """Append a program step of the current hop; returns its id."""
        sid = f"s{len(self.steps)}"
        self.steps.append({"id": sid, "op": op, "args": args, "hop": self._hop})
        return sid

    def main_step(self, op: str, args: dict) -> str:
        """Append the step holding the current hop's own result (its value in the record)."""
        sid = self.hop_step[self._cur] = self.step(op, args)
        return sid

    def ref(self, hop: int) -> tuple[dict, str]:
        """Program argument and phrase for the instance hop `hop` established: a ref to its step when
        that hop is kept, else a direct reference ("the orange ladybug") added once per instance."""
        inst_id = self.chain[hop].inst
        cat = self.scene.by_id[inst_id]["category"]
        self.ref_phrase = f"that {cat}"
        if hop in self.kept:
            if self.chain[hop].form == "compare":
                self.ref_phrase = "the " + ("larger" if self.chain[hop].params["order"] == "max" else "smaller") + " one"
            return {"ref": self.hop_step[hop]}, self.ref_phrase
        if inst_id in self.direct:
            return {"ref": self.direct[inst_id]}, self.ref_phrase
        op, args, phrase = self.scene.direct(self.scene.by_id[inst_id])
        self.direct[inst_id] = self.step(op, args)
        self.ref_phrase = phrase
        return {"ref": self.direct[inst_id]}, phrase

    def subject(self, spec: HopSpec) -> dict:
        """The instance a value hop is about (the one its first `uses` hop found)."""
        return self.scene.by_id[self.chain[spec.uses[0]].inst]

    def found(self, sid: str) -> Callable[[dict], str]:
        """Rationale of an instance hop: "It is the red mug in the top left."."""
        return lambda env: f"It is {self.scene.describe(env[sid])}."

    def counted(self, spec: HopSpec) -> str:
        """The instances a counting hop counts, as a rationale lists them."""
        return ", ".join(self.scene.describe(i) for i in spec.counted)

    # -- one hop ---------------------------------------------------------------------------------------
    def emit(self, h: int) -> None:
        spec = self.chain[h]
        form = HOP_FORMS[spec.form]
        self._hop = h - self.kept.start
        self._cur = h
        is_last = h == self.kept.stop - 1
        sentence, explain = form.emit(self, spec)
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
        elif is_last and form.questions:
            question = self.say(form.questions, **form.question_fields(self, spec))
        self.sentences[h] = sentence
        self.explain[h] = explain
        self.question_parts.append(question)


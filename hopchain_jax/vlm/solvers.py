"""Stage 4 with models: independent solvers must agree with the composer's answer, then a weaker
model's pass rate calibrates difficulty (paper: four annotators, unanimity; 8 samples of a weaker
model, queries it always solves dropped).

    verifier = AgreementVerifier([big_vlm], image_of=dataset.image_of, solver_samples=4,
                                 calibrator=small_vlm, calibration_samples=8)
    verdicts = verifier.verify_many(records)        # one batched call per model

Solvers see only the image and the question (with the training prompt's instruction to box a single
number). Agreement is the reward's numeric equivalence (`hopchain_jax.rl.reward.is_equivalent`), so a
kept query is one the RL reward would score the same way. Any backend with `model` and
`complete(requests) -> results` (openai_backend.OpenAIChatBackend, or a local engine wrapped the same
way) can be a solver or the calibrator.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

import numpy as np

from hopchain_jax.data.prompts import DEFAULT_INSTRUCTION_SUFFIX
from hopchain_jax.rl.reward import is_equivalent
from hopchain_jax.synth.stages import Verification
from hopchain_jax.vlm.chat import ChatRequest, ChatResult, user_message


class ChatBackend(Protocol):
    model: str

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]: ...


def solver_request(image: np.ndarray, question: str, n: int, temperature: float, max_tokens: int,
                   salt: str = "") -> ChatRequest:
    """What a solver sees: the image and the question with the training prompt's instruction."""
    return ChatRequest([user_message(question + DEFAULT_INSTRUCTION_SUFFIX, images=[image])], n=n,
                       temperature=temperature, max_tokens=max_tokens, salt=salt)


@dataclasses.dataclass
class AgreementVerifier:
    """QueryVerifier for model-written queries.

    solvers: one or several backends; solver_samples (default 4, the paper's four annotators) are spread
    over them round-robin. Every sample is a request of its own (n = 1, salt "solver-sample-k": its own
    cache key and seed), so the samples are independent even when one model gives them all or one model is
    listed twice; `required` of them (default: all, the paper's unanimity) must give the record's answer.
    The record says which kind of independence it had: "distinct models" or "independent samples of one
    model". calibrator: the weaker model; of its calibration_samples answers, if all are right the query is
    too easy and is dropped. image_of: record -> uint8 [H, W, 3] (or give the images to verify_many)."""

    solvers: Sequence[ChatBackend]
    image_of: Callable[[dict], np.ndarray] | None = None
    solver_samples: int = 4
    calibrator: ChatBackend | None = None
    calibration_samples: int = 8
    temperature: float = 0.6
    max_tokens: int = 4096
    name: str = "agreement"
    required: int | None = None

    def __post_init__(self):
        if not self.solvers or self.solver_samples < 1:
            raise ValueError("AgreementVerifier: give at least one solver and solver_samples >= 1")
        if self.required is not None and not 1 <= self.required <= self.solver_samples:
            raise ValueError(f"AgreementVerifier: required={self.required} must lie in 1..solver_samples="
                             f"{self.solver_samples} (--solvers-required)")

    def _shares(self) -> list[int]:
        k, m = self.solver_samples, len(self.solvers)
        return [k // m + (j < k % m) for j in range(m)]

    def verify(self, record: dict) -> Verification:
        return self.verify_many([record])[0]

    def verify_many(self, records: Sequence[dict], images: Sequence[np.ndarray] | None = None) -> list[Verification]:
        """One verdict per record, in order. images: each record's uint8 [H, W, 3] pixels (default:
        image_of(record)). Backend failures reject the record with the reason."""
        if images is None:
            if self.image_of is None:
                raise ValueError("AgreementVerifier.verify_many: give images= or construct with image_of=")
            images = [self.image_of(r) for r in records]
        answers: list[list[tuple[str, ChatResult]]] = [[] for _ in records]
        first = 0   # sample k over all solvers: its own salt, so a model listed twice samples independently
        for solver, share in zip(self.solvers, self._shares()):
            if share == 0:
                continue
            samples = range(first, first + share)
            first += share
            results = solver.complete([solver_request(im, r["question"], 1, self.temperature, self.max_tokens,
                                                      salt=f"solver-sample-{k}")
                                       for im, r in zip(images, records) for k in samples])
            for i, got in enumerate(answers):
                got.extend((solver.model, res) for res in results[i * share:(i + 1) * share])
        required = self.solver_samples if self.required is None else self.required
        verdicts: list[Verification | None] = []
        calibrate = []
        for k, (record, got) in enumerate(zip(records, answers)):
            failed = [f"{model}: {res.error}" for model, res in got if res.error]
            if failed:
                verdicts.append(Verification(False, {}, "solver error: " + "; ".join(failed),
                                             transient=any(res.transient for _, res in got if res.error)))
                continue
            texts = [t for _, res in got for t in res.texts]
            agreeing = sum(is_equivalent(t, record["answer"]) for t in texts)
            if agreeing < required:
                verdicts.append(Verification(False, {}, f"solvers disagree: {agreeing} of {len(texts)} give "
                                                        f"the answer {record['answer']} ({required} required)"))
                continue
            models = list(dict.fromkeys(m for m, _ in got))
            verdicts.append(Verification(True, {
                "method": "agreement", "solvers": models, "samples": len(texts), "agreeing": agreeing,
                "required": required,
                "independence": "distinct models" if len(models) > 1 else "independent samples of one model",
                "calibration": None}))
            calibrate.append(k)
        if self.calibrator is not None and calibrate:
            results = self.calibrator.complete([
                solver_request(images[k], records[k]["question"], self.calibration_samples, 1.0, self.max_tokens,
                               salt="calibration") for k in calibrate])
            for k, res in zip(calibrate, results):
                if res.error:
                    verdicts[k] = Verification(False, {}, f"calibration error: {self.calibrator.model}: {res.error}",
                                               transient=res.transient)
                    continue
                correct = sum(is_equivalent(t, records[k]["answer"]) for t in res.texts)
                field = dict(verdicts[k].record_field, calibration={
                    "model": self.calibrator.model, "samples": len(res.texts), "correct": correct})
                if correct == len(res.texts):
                    verdicts[k] = Verification(False, field, f"too easy: the calibration model solved it "
                                                             f"{correct} of {len(res.texts)} times")
                else:
                    verdicts[k] = Verification(True, field)
        return verdicts

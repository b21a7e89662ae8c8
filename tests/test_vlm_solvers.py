"""Stage 4 with models: solver agreement and difficulty calibration, with scripted backends."""
import numpy as np
import pytest

from hopchain_jax.vlm.chat import ChatResult
from hopchain_jax.vlm.solvers import AgreementVerifier


class Scripted:
    """A backend answering each question from a table: question -> list of answers, the i-th answer a
    question gets (over all its requests and samples) is table[i % len(table)]."""

    def __init__(self, model, answers, error_for=()):
        self.model, self.answers, self.error_for, self.requests = model, answers, set(error_for), []
        self.asked = {}

    def complete(self, requests):
        self.requests += list(requests)
        out = []
        for req in requests:
            question = req.messages[0]["content"][-1]["text"].split("\n")[0]
            if question in self.error_for:
                out.append(ChatResult([], [], {}, error="RateLimitError: slow down"))
                continue
            table, texts = self.answers[question], []
            for _ in range(req.n):
                i = self.asked[question] = self.asked.get(question, -1) + 1
                texts.append(f"... so the answer is \\boxed{{{table[i % len(table)]}}}.")
            out.append(ChatResult(texts, ["stop"] * req.n, {}))
        return out


def rec(question, answer):
    return {"question": question, "answer": answer, "image": {"width": 4, "height": 4}}


IMAGE = lambda record: np.zeros((4, 4, 3), np.uint8)  # noqa: E731


def test_unanimous_solvers_keep_a_query_and_one_dissent_drops_it():
    big = Scripted("big", {"Q1": [7], "Q2": [7, 7, 7, 8]})
    verdicts = AgreementVerifier([big], IMAGE).verify_many([rec("Q1", 7), rec("Q2", 7)])
    assert verdicts[0].accepted and verdicts[0].record_field == {
        "method": "agreement", "solvers": ["big"], "samples": 4, "agreeing": 4, "required": 4,
        "independence": "independent samples of one model", "calibration": None}
    assert not verdicts[1].accepted and "3 of 4" in verdicts[1].reason
    # one batched call; every sample its own request with its own salt (cache key and seed)
    assert [r.n for r in big.requests] == [1] * 8
    assert [r.salt for r in big.requests] == [f"solver-sample-{k}" for k in range(4)] * 2
    # solvers see the image and the question with the boxed-answer instruction, nothing else
    content = big.requests[0].messages[0]["content"]
    assert content[0]["type"] == "image_url" and "\\boxed{}" in content[1]["text"]


def test_samples_are_spread_over_several_solvers():
    a, b, c = (Scripted(m, {"Q": [5]}) for m in "abc")
    verdict = AgreementVerifier([a, b, c], IMAGE, solver_samples=4).verify(rec("Q", 5))
    assert verdict.accepted and verdict.record_field["solvers"] == ["a", "b", "c"]
    assert verdict.record_field["independence"] == "distinct models"
    assert [len(a.requests), len(b.requests), len(c.requests)] == [2, 1, 1]
    assert [r.salt for r in a.requests + b.requests + c.requests] == [f"solver-sample-{k}" for k in range(4)]


def test_one_model_listed_twice_samples_independently_and_required_sets_the_bar():
    big = Scripted("big", {"Q": [5, 5, 5, 6]})
    verdict = AgreementVerifier([big, big], IMAGE).verify(rec("Q", 5))      # --solver X --solver X
    assert len({r.salt for r in big.requests}) == 4 and not verdict.accepted and "(4 required)" in verdict.reason
    big = Scripted("big", {"Q": [5, 5, 5, 6]})
    verdict = AgreementVerifier([big], IMAGE, required=3).verify(rec("Q", 5))
    assert verdict.accepted and verdict.record_field["agreeing"] == 3 and verdict.record_field["required"] == 3
    with pytest.raises(ValueError, match="--solvers-required"):
        AgreementVerifier([big], IMAGE, required=5)


def test_calibration_drops_what_the_weaker_model_always_solves():
    big = Scripted("big", {"easy": [3], "hard": [12]})
    small = Scripted("small", {"easy": [3], "hard": [12, 11, 10, 12]})
    easy, hard = AgreementVerifier([big], IMAGE, calibrator=small).verify_many([rec("easy", 3), rec("hard", 12)])
    assert not easy.accepted and "8 of 8" in easy.reason
    assert hard.accepted and hard.record_field["calibration"] == {"model": "small", "samples": 8, "correct": 4}
    assert [r.n for r in small.requests] == [8, 8] and small.requests[0].temperature == 1.0


def test_backend_errors_reject_the_item_with_the_reason():
    big = Scripted("big", {"Q": [1], "R": [2]}, error_for={"Q"})
    v_q, v_r = AgreementVerifier([big], IMAGE).verify_many([rec("Q", 1), rec("R", 2)])
    assert not v_q.accepted and "RateLimitError" in v_q.reason and v_r.accepted


def test_numeric_equivalence_is_the_reward_s():
    big = Scripted("big", {"Q": ["2.50", "5/2", "2.5"]})
    assert AgreementVerifier([big], IMAGE, solver_samples=3).verify(rec("Q", 2.5)).accepted
    with pytest.raises(ValueError, match="solver"):
        AgreementVerifier([], IMAGE)


def test_stage_one_lists_categories_or_says_why_not():
    from hopchain_jax.synth.stages import ImageInput
    from hopchain_jax.vlm.categories import SkipImage, VLMCategoryIdentifier

    class Lister:
        model = "lister"

        def __init__(self, replies):
            self.replies = replies

        def complete(self, requests):
            return [ChatResult([text], [finish], {}, error=err) for text, finish, err in self.replies[:len(requests)]]

    images = [ImageInput(np.zeros((4, 4, 3), np.uint8), f"img{k}.jpg") for k in range(4)]
    lister = Lister([('```json\n["Dogs", "traffic lights", "dog"]\n```', "stop", None),
                     ("I cannot tell.", "stop", None),
                     ('["car", "bus', "length", None),
                     ("", "stop", "APITimeoutError: Request timed out.")])
    parses = VLMCategoryIdentifier(lister).identify_many(images)
    assert parses[0].categories == ["dog", "traffic light"] and parses[0].problem is None
    assert "no JSON list" in parses[1].problem
    assert "cut off" in parses[2].problem
    assert "APITimeoutError" in parses[3].problem
    with pytest.raises(SkipImage, match="img0.jpg: no JSON list"):
        VLMCategoryIdentifier(Lister([("I cannot tell.", "stop", None)])).identify(images[0])


GOOD_QUERY = """<think>the card reads 7...</think>
```json
{"question": "Find the card showing 7. Which ball is nearest to it? How many dots does the ladybug directly above that ball have?",
 "answer": "4",
 "hops": [{"level": 1, "kind": "perception", "instances": ["i0"], "depends_on": [], "text": "the card showing 7"},
          {"level": 2, "kind": "instance_chain", "instances": ["i0", "i3"], "depends_on": [0], "text": "nearest ball"},
          {"level": 2, "kind": "perception", "instances": ["i3", "i5"], "depends_on": [1], "text": "ladybug above"},
          {"level": 1, "kind": "perception", "instances": ["i5"], "depends_on": [2], "text": "count its dots"}]}
```"""


def test_stage_three_output_is_held_to_the_chain_rules():
    from hopchain_jax.vlm.query_check import check_query
    ids = ["i0", "i1", "i3", "i5"]
    ok = check_query(GOOD_QUERY, ids)
    assert ok.problems == [] and ok.answer == 4 and len(ok.hops) == 4 and ok.hops[1]["instance_ids"] == ["i0", "i3"]
    bad = check_query(GOOD_QUERY.replace("Find the card showing 7.", "Find the card in box (120, 40).")
                      .replace('"depends_on": [1]', '"depends_on": []').replace('"i5"]', '"i9"]'), ids)
    assert any("does not see: ['box']" in p for p in bad.problems)
    assert any("coordinates" in p for p in bad.problems)
    assert any("hop 2 must depend" in p for p in bad.problems)
    assert any("unknown instances ['i9']" in p for p in bad.problems)
    short = check_query('{"question": "How many balls?", "answer": "several", "hops": []}', ids)
    assert {"the answer 'several' is not a single number", "0 hops; a chain needs at least 3",
            "no instance-chain hop"} <= set(short.problems)
    assert check_query("Sorry, I cannot.", ids).problems == ["no JSON object with a question in the output"]

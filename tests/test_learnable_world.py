"""The learnable world (synth/learnable.py, preset "learnable"): few large objects, 1-2 hop questions
with small balanced answers that a tiny VLM can learn from the image, as valid schema-v2 records."""
import collections
import json
import os
import re
import sys

import pytest

from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.synth.learnable import LearnableConfig, variant_report
from hopchain_jax.synth.pipeline import SynthConfig, format_summary, run_synthesis, synthesize_shard
from hopchain_jax.synth.presets import PRESETS, learnable_config, preset
from hopchain_jax.synth.program import execute
from hopchain_jax.synth.record import validate_record
from hopchain_jax.synth.stats import dataset_stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from independent_executor import run_program  # noqa: E402

CONFIG = learnable_config(seed=0, num_images=24, images_per_shard=24)
MAX_SHARE = 0.35  # no answer above this share of a variant's records (the most-common blind baseline)


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    root = tmp_path_factory.mktemp("learnable")
    summary = run_synthesis(root, CONFIG, workers=1, progress=False)
    records = list(HopChainDataset(root).records())
    return summary, records


def test_reachable_through_run_synthesis(synthesized):
    summary, records = synthesized
    assert summary["chains"] == "learnable" and summary["images_seen"] == 24
    assert len(records) >= 24 * 2
    assert set(summary["variants"]) == {"single", "half"}
    text = format_summary(summary)
    assert "hops per question" in text and "single (" in text and "half (" in text


def test_records_validate_and_programs_reexecute(synthesized):
    _, records = synthesized
    for rec in records:
        assert validate_record(rec) == [], rec["question"]
        assert rec["verification"]["method"] == "program"
        exported = json.loads(json.dumps(rec))  # as a consumer reads it
        assert execute(exported) == rec["answer"]
        assert run_program(exported) == rec["answer"], rec["question"]


def test_one_and_two_hop_questions(synthesized):
    _, records = synthesized
    by_variant = collections.Counter(r["variant"] for r in records)
    assert set(by_variant) == {"single", "half"} and min(by_variant.values()) >= 12
    ops = collections.Counter()
    for rec in records:
        hops = rec["hops"]
        assert len(hops) == {"single": 1, "half": 2}[rec["variant"]]
        assert rec["variant_of"]
        if len(hops) == 2:
            assert hops[1]["depends_on"] == [0]
        steps = re.findall(r"Step (\d+): ", rec["rationale"])
        assert steps == [str(i + 1) for i in range(len(hops))]
        assert rec["rationale"].endswith(f"The answer is \\boxed{{{rec['answer']}}}.")
        for hop in hops:
            assert hop["text"] in rec["rationale"]
        ops.update(s["op"] for s in rec["program"]["steps"])
    # the forms are spread: counting, reading parts and numbers, picking by position / relation / colour
    assert {"count", "count_parts", "select", "add"} <= set(ops), ops
    assert ops["relate"] + ops["superlative"] >= 5, ops


def test_answers_small_and_balanced(synthesized):
    _, records = synthesized
    lo, hi = CONFIG.learnable.answer_range
    stats = dataset_stats(records)
    for variant in ("single", "half"):
        answers = {int(a): n for a, n in stats["answers"][variant].items()}
        assert set(answers) <= set(range(lo, hi + 1))
        assert len(answers) >= 4, answers
        assert max(answers.values()) / sum(answers.values()) <= MAX_SHARE, (variant, answers)


def test_blind_baselines_stay_low(synthesized):
    """Blind (no image) rules: the most common answer of each variant, and the text-only rule of
    stats.py (most common value per kind of step, fitted leave-one-out on the variant's records)."""
    _, records = synthesized
    report = variant_report(records)
    for variant, r in report.items():
        assert r["most_common"]["share"] <= MAX_SHARE, (variant, r)
        assert r["text_only"] <= 0.4, (variant, r)


def test_instances_large_few_and_unoccluded(synthesized):
    _, records = synthesized
    for rec in records:
        insts = rec["instances"]
        assert 2 <= len(insts) <= 5
        assert len({i["category"] for i in insts}) <= 3
        assert rec["image"]["width"] == rec["image"]["height"] == 448
        for inst in insts:
            x0, y0, x1, y1 = inst["bbox"]
            assert (x1 - x0) * (y1 - y0) >= 35_000, inst  # >= 3.5% of the image (units of 1/1000 per side)
            assert inst["area"] >= 0.02 * 448 * 448
            assert not inst.get("occludes")


def test_deterministic_and_config_round_trip():
    small = learnable_config(seed=4, num_images=3, images_per_shard=3)
    a, b = synthesize_shard(small, 0)[2], synthesize_shard(small, 0)[2]
    assert [r["id"] for r in a] == [r["id"] for r in b] and a
    data = json.loads(json.dumps(small.to_json()))
    assert SynthConfig.from_json(data) == small
    # the default world's config.json is what it always was (no learnable fields)
    assert "chains" not in SynthConfig().to_json() and "learnable" not in SynthConfig().to_json()
    assert PRESETS["learnable"].chains == "learnable" and PRESETS["default"] == SynthConfig()
    assert preset("learnable", seed=2, num_images=5).num_images == 5
    with pytest.raises(ValueError):
        SynthConfig(chains="nope")
    with pytest.raises(ValueError):
        LearnableConfig(half_forms=("nope",))


def test_cli_synth_preset_learnable(tmp_path, capsys):
    from hopchain_jax.cli import main
    assert main(["synth", "--preset", "learnable", "--out", str(tmp_path / "l"), "--num-images", "6", "--workers", "1",
                 "--images-per-shard", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "queries per variant: full=0" in out
    variants = {r["variant"] for r in HopChainDataset(tmp_path / "l").records()}
    assert variants == {"half", "single"}
    assert main(["synth", "--preset", "learnable", "--out", str(tmp_path / "m"), "--queries-per-image", "3"]) == 2

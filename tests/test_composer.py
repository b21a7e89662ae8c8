"""Chains satisfy SPEC §3 on many scenes; references are unique; variants carry their own answers."""
import collections
import re

import numpy as np
import pytest

from hopchain_jax.synth.composer import ChainComposer
from hopchain_jax.synth.pipeline import SynthConfig, synthesize_shard
from hopchain_jax.synth.program import Executor
from hopchain_jax.synth.record import FORBIDDEN_WORDS, validate_record

CONFIG = SynthConfig(seed=3, num_images=24, images_per_shard=24)


@pytest.fixture(scope="module")
def shard():
    return synthesize_shard(CONFIG, 0)


def test_every_record_meets_the_schema_invariants(shard):
    _, _, records, stats = shard
    assert stats["queries"]["full"] >= 40  # most scenes yield several chains
    for rec in records:
        assert validate_record(rec) == [], (rec["id"], rec["question"])
        assert rec["verification"] == {"method": "program", "solvers": 1, "agreeing": 1, "calibration": None}


def test_full_chains_have_the_paper_shape(shard):
    for rec in (r for r in shard[2] if r["variant"] == "full"):
        hops = rec["hops"]
        used = {i for h in hops for i in h["instance_ids"]}
        assert 3 <= len(used) <= 6 and len(hops) >= 3
        assert {("perception", 1), ("perception", 2)} <= {(h["kind"], h["level"]) for h in hops}
        assert any(h["kind"] == "instance_chain" for h in hops)
        assert all(h["depends_on"] and max(h["depends_on"]) < h["index"] for h in hops[1:])
        assert (hops[-1]["combine"] or hops[-1])["value"] == rec["answer"]
        assert not FORBIDDEN_WORDS.search(rec["question"])
        assert not re.search(r"\bi\d+\b", rec["question"])  # no instance ids leak into text
        assert not re.search(r"\b(\w+) \1\b", rec["question"]), rec["question"]  # no "that that"


def test_each_chain_comes_with_half_and_single_variants(shard):
    records = shard[2]
    for k in range(0, len(records), 3):
        full, half, single = records[k:k + 3]
        assert (full["variant"], half["variant"], single["variant"]) == ("full", "half", "single")
        assert full["image"] == half["image"] == single["image"]
        n = len(full["hops"])
        assert len(half["hops"]) == -(-n // 2) and len(single["hops"]) == 1
        # the kept hops are the last ones of the full chain, same ops in the same order
        assert [h["op"] for h in half["hops"]] == [h["op"] for h in full["hops"][n - len(half["hops"]):]]
        assert single["hops"][0]["op"] == full["hops"][-1]["op"]


def test_every_referring_step_resolves_to_exactly_one_instance(shard):
    """Re-run each step alone: select/relate/between/superlative return one instance or raise."""
    for rec in shard[2]:
        ex = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"])
        _, env = ex.run(rec["program"])
        for step in rec["program"]["steps"]:
            if step["op"] == "select":
                flt = {k: (env[v["ref"]] if isinstance(v, dict) and "ref" in v else v) for k, v in step["args"]["filter"].items()}
                assert len(ex.matches(flt)) == 1


def test_named_objects_have_distinct_categories(shard):
    """'that ladybug' is only unambiguous if the chain names one ladybug."""
    for rec in (r for r in shard[2] if r["variant"] == "full"):
        by_id = {i["id"]: i for i in rec["instances"]}
        named = [h["value"] for h in rec["hops"] if isinstance(h["value"], str) and h["op"] != "compare"]
        cats = [by_id[i]["category"] for i in named]
        assert len(cats) == len(set(cats))


def test_variants_answer_their_own_question(shard):
    differing = 0
    records = shard[2]
    for k in range(0, len(records), 3):
        full, half, single = records[k:k + 3]
        differing += full["answer"] != single["answer"]
    assert differing > 0  # dropping the combine step changes answers in some chains


def test_composition_is_deterministic():
    a = synthesize_shard(SynthConfig(seed=5, num_images=3, images_per_shard=3), 0)[2]
    b = synthesize_shard(SynthConfig(seed=5, num_images=3, images_per_shard=3), 0)[2]
    assert [r["id"] for r in a] == [r["id"] for r in b] and a == b


def test_too_few_instances_yield_no_chain():
    insts = [{"id": "i0", "category": "ball", "bbox": [0, 0, 100, 100], "area": 10, "score": 1.0,
              "attributes": {"color": "red", "size": "small", "text": None, "part": None, "part_count": None}}]
    assert ChainComposer(insts, 800, 600).compose(np.random.default_rng(0)) == []


def test_record_ids_are_unique(shard):
    ids = [r["id"] for r in shard[2]]
    assert len(ids) == len(set(ids))


def test_hop_values_are_their_own_results_and_combines_are_real_work(shard):
    """Each hop's value is what its own main step yields; arithmetic never multiplies by 1 or
    subtracts equal numbers; half/single records link to their full record."""
    by_id = {r["id"]: r for r in shard[2]}
    for rec in shard[2]:
        ex = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"])
        _, env = ex.run(rec["program"])
        for hop in rec["hops"]:
            own = [s for s in rec["program"]["steps"] if s["hop"] == hop["index"] and s["op"] == hop["op"]]
            assert own and env[own[-1]["id"]] == hop["value"], (rec["question"], hop)
            if hop["combine"]:
                a, b = rec["hops"][hop["combine"]["with_hop"]]["value"], hop["value"]
                op = hop["combine"]["op"]
                assert not (op == "mul" and 1 in (a, b)) and not (op == "sub" and a == b), hop
        if rec["variant"] == "full":
            assert rec["variant_of"] is None
        else:
            assert by_id[rec["variant_of"]]["variant"] == "full"
        assert "0..1000" in rec["box_convention"]


def test_directions_are_clear_to_a_reader(shard):
    """Every object of the asked category lies well inside the stated direction's cone (the hop
    counts or picks it) or well outside it: none sits near the cone's 45-degree edge."""
    from hopchain_jax.synth.program import DIRECTIONS
    checked = 0
    for rec in (r for r in shard[2] if r["variant"] == "full"):
        ex = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"])
        _, env = ex.run(rec["program"])
        for step in rec["program"]["steps"]:
            relation = step["args"].get("relation")
            if relation not in DIRECTIONS:
                continue
            anchor = ex._instance(step["args"]["anchor"], env)
            for c in ex.matches({"category": step["args"]["filter"]["category"]}):
                if c["id"] != anchor["id"]:
                    angle = ex.geo.off_axis_degrees(c, anchor, relation)
                    assert angle <= 30 or angle >= 60, (rec["question"], c["id"], angle)
                    checked += 1
    assert checked > 20


def test_every_full_chain_passes_the_counterfactual_check(shard):
    from hopchain_jax.synth.counterfactual import counterfactual_failures
    for rec in (r for r in shard[2] if r["variant"] == "full"):
        assert counterfactual_failures(rec) == [], rec["question"]


def test_instance_chain_hops_pick_one_of_several(shard):
    """B can only be found through A: a link hop's target category has other instances too."""
    for rec in (r for r in shard[2] if r["variant"] == "full"):
        by_id = {i["id"]: i for i in rec["instances"]}
        for hop in rec["hops"]:
            if hop["kind"] == "instance_chain":
                cat = by_id[hop["value"]]["category"]
                assert sum(i["category"] == cat for i in rec["instances"]) >= 2


def test_answers_are_balanced_and_not_guessable_blind(shard):
    """Goals of the data: no answer dominates, and the text-only rule of stats.py (which never sees the
    image) does poorly. The first generator scored 22% and 39% here; the dataset-level goals are
    10% and 15% (checked in benchmarks, on the default 240-image run)."""
    from hopchain_jax.synth.stats import blind_baselines
    blind = blind_baselines(shard[2])
    assert blind["queries"] >= 100
    assert blind["most_common"] <= 0.12 and blind["text_only"] <= 0.22, blind
    set_counts = [h["value"] for r in shard[2] if r["variant"] == "full" for h in r["hops"] if h["op"] == "count"]
    assert max(set_counts) >= 4 and set_counts.count(1) / len(set_counts) < 0.6
    # the answer cap (ComposerConfig.max_answer_share) holds over the whole shard, not just up to a slack
    full = collections.Counter(r["answer"] for r in shard[2] if r["variant"] == "full")
    assert full.most_common(1)[0][1] <= max(CONFIG.composer.max_answer_share * sum(full.values()), 3), full.most_common(3)


def test_no_two_full_chains_of_an_image_compute_the_same_thing(shard):
    """No near-duplicates (signature.py): the same instances, values and arithmetic in another order or
    wording; no count combined with a count of the same objects; no subtraction of two counts sharing an
    object (removing it would leave the answer unchanged)."""
    from hopchain_jax.synth.signature import computation_signature
    seen = set()
    for rec in (r for r in shard[2] if r["variant"] == "full"):
        key = (rec["image"]["sha256"], computation_signature(rec["hops"]))
        assert key not in seen, rec["question"]
        seen.add(key)
        ex = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"])
        found = {v for v in ex.run(rec["program"])[1].values() if isinstance(v, str)}
        for hop in rec["hops"]:
            if hop["combine"]:
                other = rec["hops"][hop["combine"]["with_hop"]]
                counted, other_counted = set(hop["instance_ids"]) - found, set(other["instance_ids"]) - found
                assert not (counted and hop["op"] == other["op"] and counted == other_counted), rec["question"]
                if hop["combine"]["op"] == "sub":
                    assert not counted & other_counted, rec["question"]


def test_the_signature_sees_through_hop_order_and_only_that():
    from hopchain_jax.synth.signature import computation_signature

    def hops(first, second, op, value):
        return [{"op": "select", "instance_ids": ["i1"], "value": "i1", "combine": None},
                dict(first, combine=None), dict(second, combine={"op": op, "with_hop": 1, "value": value})]
    pips = {"op": "count_parts", "instance_ids": ["i1"], "value": 5}
    balls = {"op": "count", "instance_ids": ["i1", "i2", "i3"], "value": 2}
    sig = computation_signature
    assert sig(hops(pips, balls, "add", 7)) == sig(hops(balls, pips, "add", 7))
    assert sig(hops(pips, balls, "sub", 3)) == sig(hops(balls, pips, "sub", 3))       # 5 - 2 either way round
    assert sig(hops(pips, balls, "sub", 3)) != sig(hops(pips, balls, "add", 7))
    assert sig(hops(pips, balls, "mul", 10)) != sig(hops(pips, dict(balls, value=3), "mul", 15))
    assert sig(hops(pips, balls, "add", 7)) != sig(hops(pips, dict(balls, instance_ids=["i1", "i4", "i3"]), "add", 7))


def test_two_counts_sharing_an_object_are_never_subtracted():
    from hopchain_jax.synth.composer import ChainComposer
    composer = ChainComposer([], 600, 400)
    ops = {shared: {composer._combine(5, 1, 1, np.random.default_rng(seed), shared)[0] for seed in range(20)}
           for shared in (False, True)}   # 5 x 1 is never asked; of 5 - 1 and 5 + 1 the difference is preferred
    assert ops == {False: {"sub"}, True: {"add"}}


def test_size_classes_are_named_only_where_the_area_order_shows_them(shard):
    """"the medium-sized star" is never the smallest or largest star in sight, "the large star" is the
    largest and "the small star" the smallest, each by a clear margin; of exactly two, "the larger of the two"."""
    named = 0
    for rec in shard[2]:
        ex = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"])
        _, env = ex.run(rec["program"])
        for step in rec["program"]["steps"]:
            size = (step["args"].get("filter") or {}).get("size") if step["op"] == "select" else None
            if not isinstance(size, str):
                continue
            inst = ex.by_id[env[step["id"]]]
            others = [c["area"] for c in ex.by_category[inst["category"]] if c is not inst]
            larger = [a for a in others if a > inst["area"]]
            smaller = [a for a in others if a < inst["area"]]
            assert {"large": not larger, "small": not smaller, "medium": larger and smaller}[size], rec["question"]
            assert all(max(a, inst["area"]) >= 1.3 * min(a, inst["area"]) for a in others), rec["question"]
            named += 1
    assert named >= 10
    assert not any(re.search(r"\b(largest|smallest) (\w+)\b", r["question"]) and
                   sum(i["category"] == re.search(r"\b(?:largest|smallest) (\w+)\b", r["question"]).group(1)
                       for i in r["instances"]) == 2 for r in shard[2])

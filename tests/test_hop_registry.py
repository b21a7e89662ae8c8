"""The hop-form registry (synth/hops/): every form is complete and in its own module, bad forms are refused
by name, and a form added through it (count_side, opt-in) composes records that validate, re-execute
with the spec-only oracle and pass the counterfactual check, while the default data never composes it."""
import dataclasses
import os
import sys

import numpy as np
import pytest

from hopchain_jax.synth.composer_config import ComposerConfig
from hopchain_jax.synth.counterfactual import counterfactual_failures
from hopchain_jax.synth.hops import HOP_FORMS, HopForm, form, forms, register_form, templates
from hopchain_jax.synth.pipeline import SynthConfig, synthesize_shard
from hopchain_jax.synth.program import INSTANCE_OPS, NUMBER_OPS, Executor, ProgramError
from hopchain_jax.synth.record import FORBIDDEN_WORDS, validate_record
from hopchain_jax.synth.stats import blind_keys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from independent_executor import run_program  # noqa: E402

OPT_IN = SynthConfig(seed=5, num_images=12, images_per_shard=12, composer=ComposerConfig(opt_in_forms=("count_side",)))


@pytest.fixture(scope="module")
def opt_in_records():
    return synthesize_shard(OPT_IN, 0)[2]


def test_every_form_is_complete_and_lives_in_its_own_module():
    assert {"select", "superlative", "relate", "same_color", "between", "compare", "count_parts", "read_number",
            "count_letters", "count_relative", "count_same_color", "count_side"} <= set(HOP_FORMS)
    for name, f in HOP_FORMS.items():
        assert f.emit.__module__ == f"hopchain_jax.synth.hops.{name}", name
        assert callable(getattr(Executor, f"op_{f.op}")) and f.op in INSTANCE_OPS | NUMBER_OPS
        assert f.value_kind == ("number" if f.role == "value" else "instance"), name
        for key, options in f.sentences.items():
            assert templates(key) is options and len(options) >= 2, key
            assert not any(FORBIDDEN_WORDS.search(t) for t in options), key
        if f.role == "value":
            assert f.questions and not any(FORBIDDEN_WORDS.search(t) for t in f.questions)
    assert [f.name for f in forms("value")] == ["count_parts", "read_number", "count_letters", "count_relative",
                                                "count_same_color"]
    assert forms("value", ("count_side",))[-1].name == "count_side"


def _toy(**kw) -> HopForm:
    base = dict(name="toy", op="count", role="value", kind="perception", level=2, sentences={"toy": ("a", "b")},
                emit=lambda r, spec: ("", lambda env: ""), questions=("q?",), value_options=lambda s, i: [],
                value_from=lambda s, a, p: 0, blind_kind=lambda spec, cat: ("count", cat, ""),
                question_fields=lambda r, spec: {})
    return HopForm(**{**base, **kw})


@pytest.mark.parametrize("change, words", [
    (dict(name="select"), "already registered"),
    (dict(op="count_to_ten"), "Executor.op_count_to_ten"),
    (dict(op="attribute"), "INSTANCE_OPS or NUMBER_OPS"),
    (dict(role="bridge"), "role must be one of"),
    (dict(value_from=None), "needs the hooks ['value_from']"),
    (dict(questions=()), "needs question templates"),
    (dict(sentences={"count_parts": ("a", "b")}), "belong to ['count_parts']"),
])
def test_bad_forms_are_refused_by_name(change, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        register_form(_toy(**change))
    assert "toy" not in HOP_FORMS


def test_unknown_or_default_opt_in_forms_are_refused():
    with pytest.raises(ValueError, match="unknown hop form 'count_sides'.*registered"):
        ComposerConfig(opt_in_forms=("count_sides",))
    with pytest.raises(ValueError, match="composed by default already"):
        ComposerConfig(opt_in_forms=("relate",))
    with pytest.raises(ValueError, match="unknown hop form 'nope'"):
        form("nope")
    # a JSON round trip gives a list back: still the same config
    assert ComposerConfig(opt_in_forms=["count_side"]) == OPT_IN.composer
    assert SynthConfig.from_json(OPT_IN.to_json()) == OPT_IN


def test_default_data_never_composes_an_opt_in_form():
    records = synthesize_shard(SynthConfig(seed=5, num_images=6, images_per_shard=6), 0)[2]
    assert records and not any(s["op"] == "count_side" for r in records for s in r["program"]["steps"])


def test_count_side_composed_through_the_registry(opt_in_records):
    from hopchain_jax.inspect.gallery import counted_only
    side = [r for r in opt_in_records if any(h["op"] == "count_side" for h in r["hops"])]
    assert {r["variant"] for r in side} == {"full", "half", "single"}
    for rec in opt_in_records:
        assert not validate_record(rec), validate_record(rec)
        assert run_program(rec) == rec["answer"]
        if rec["variant"] == "full":
            assert not counterfactual_failures(rec)
    for rec in side:
        assert "half of the picture" in rec["question"] or "side of the picture" in rec["question"]
        env = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"]).run(rec["program"])[1]
        for step in rec["program"]["steps"]:
            if step["op"] == "count_side":
                said = blind_keys(rec["program"])[step["id"]]
                assert said == ("count_side", step["args"]["filter"]["category"], step["args"]["axis"])
        # the gallery draws dashed exactly the instances only counted: here count_side's set (and any other count's)
        hop = next(h for h in rec["hops"] if h["op"] == "count_side")
        found = {v for v in env.values() if isinstance(v, str)}
        counted = set(hop["instance_ids"]) - found
        assert len(counted) == hop["value"]
        dashed = counted_only(rec)
        assert counted <= dashed and not dashed & found
        assert dashed <= {i for h in rec["hops"] if h["op"] in ("count", "count_side") for i in h["instance_ids"]}


def _scene(rng, n=9, width=600, height=400):
    insts = []
    for k in range(n):
        x, y = rng.uniform(20, 980, 2)
        insts.append({"id": f"i{k}", "category": ("ball", "card")[k % 2], "bbox": [x - 10, y - 10, x + 10, y + 10],
                      "area": 100, "attributes": {"color": "red", "size": "small", "text": None, "part": None,
                                                  "part_count": None}})
    return {"image": {"width": width, "height": height}, "instances": insts}


def test_count_side_matches_the_spec_oracle_on_random_scenes():
    rng = np.random.default_rng(1234)
    checked = 0
    for _ in range(40):
        rec = _scene(rng)
        rec["instances"][2]["bbox"][0::2] = [490, 510]   # a ball on the vertical middle line: in no half
        for anchor in rec["instances"][:2] + rec["instances"][3:]:
            for axis in ("x", "y"):
                rec["program"] = {"steps": [{"id": "s0", "op": "count_side", "hop": 0, "args": {
                    "filter": {"category": "ball"}, "anchor": anchor["id"], "axis": axis}}], "output": "s0"}
                ex = Executor(rec["instances"], 600, 400)
                k, middle = (0, 300.0) if axis == "x" else (1, 200.0)
                side = ex.geo.center(anchor)[k] < middle
                want = sum(1 for c in rec["instances"] if c["category"] == "ball" and c is not anchor
                           and (ex.geo.center(c)[k] < middle) == side and ex.geo.center(c)[k] != middle)
                assert ex.run(rec["program"])[0] == want == run_program(rec)
                checked += 1
    assert checked == 40 * 8 * 2
    rec = _scene(rng)
    rec["instances"][0]["bbox"] = [490, 100, 510, 120]    # center exactly on the vertical middle line
    ex = Executor(rec["instances"], 600, 400)
    with pytest.raises(ProgramError, match="middle line"):
        ex.op_count_side({}, {"category": "ball"}, "i0", "x")
    with pytest.raises(ProgramError, match="axis must be"):
        ex.op_count_side({}, {"category": "ball"}, "i1", "z")


def test_a_form_added_in_a_test_is_composed_when_opted_in():
    """A new value form registered from outside the package: only runs that opt in compose it."""
    from hopchain_jax.synth import phrasing
    from hopchain_jax.synth.hops import there_are

    def options(scene, inst_id):
        inst = scene.by_id[inst_id]
        return [(len(scene.by_cat[c]), tuple(i["id"] for i in scene.by_cat[c]), (("category", c),))
                for c in sorted(set(scene.by_cat) - {inst["category"]}) if 2 <= len(scene.by_cat[c]) <= 6]

    def emit(r, spec):
        cats = phrasing.plural(spec.params["category"])
        sid = r.main_step("count", {"filter": {"category": spec.params["category"]}})
        return r.say(("Count all the {cats}.", "Count every {cat} in the picture."), cats=cats,
                     cat=spec.params["category"]), lambda env: f"{there_are(env[sid])}: {r.counted(spec)}."

    toy = _toy(name="count_all_test", sentences={"count_all_test": ("Count all the {cats}.", "x")}, emit=emit,
               value_options=options, questions=("How many {cats} are there?", "How many {cats} are in the picture?"),
               question_fields=lambda r, spec: {"cats": phrasing.plural(spec.params["category"])},
               scope="set", default=False)
    register_form(toy)
    try:
        config = SynthConfig(seed=2, num_images=6, images_per_shard=6,
                             composer=ComposerConfig(opt_in_forms=("count_all_test",)))
        records = synthesize_shard(config, 0)[2]
        texts = [h["text"] for r in records for h in r["hops"]]
        assert any(t.startswith(("Count all the", "Count every")) for t in texts)
        assert all(run_program(r) == r["answer"] and not validate_record(r) for r in records)
    finally:
        del HOP_FORMS["count_all_test"]


def test_cli_refuses_an_unknown_hop_form_by_name(tmp_path, capsys):
    from hopchain_jax.cli import main
    assert main(["synth", "--out", str(tmp_path / "d"), "--num-images", "2", "--hop-forms", "count_sides"]) == 2
    assert "unknown hop form 'count_sides'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()   # refused before anything is written


def test_every_template_reads_right_with_every_category():
    """Articles and plurals: every sentence and question template of every form, filled for every category
    (its part word for 1 and for several), has no "a umbrella" and no "1 dots" / "3 dot"."""
    import re
    import string
    from hopchain_jax.synth import phrasing
    from hopchain_jax.world.catalog import CATEGORIES
    checked = 0
    for f in HOP_FORMS.values():
        for text in [t for options in f.sentences.values() for t in options] + list(f.questions):
            fields = {name for _, name, _, _ in string.Formatter().parse(text) if name}
            for cat, spec in CATEGORIES.items():
                for n in (1, 3):
                    values = {"cat": cat, "cats": phrasing.plural(cat), "a_cat": phrasing.with_article(cat),
                              "n": n, "parts": phrasing.parts_word(cat, n) if spec.part else "dots" if n > 1 else "dot",
                              "ref": "that card", "ref_a": "that card", "ref_b": "the red mug", "color": "orange",
                              "size": "large", "sup": "largest", "most": "most", "rel": "directly above", "text": "7",
                              "bigger": "larger", "halves": "left or right", "extreme": phrasing.extreme_phrase(
                                  "area", "max", cat, 2), "comp": "larger"}
                    line = text.format(**{k: values[k] for k in fields})
                    assert not re.search(r"\ba [aeiou]", line, re.IGNORECASE), line
                    assert not re.search(r"\b1 \w+s\b", line) and not re.search(r"\b3 (dot|eye|petal|pip|window|point)\b", line), line
                    checked += 1
    assert checked > 500

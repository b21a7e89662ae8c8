"""`hopchain eval`: exact accuracies (mean/pass/maj@k) from a scripted backend, breakdowns, intervals,
truncation and format failures, crash-safe resume, refused setting changes, the CLI's flag checks."""
import argparse
import collections
import dataclasses
import json
import math

import pytest

from hopchain_jax.eval.cli import add_eval_parser, settings_from_args
from hopchain_jax.eval.run import EvalSettings, breakdown_keys, evaluate_dataset, select_records, swapped_images
from hopchain_jax.eval.scoring import (ResponseScore, answer_range, item_metrics, length_bucket, mean_interval,
                                       score_response, wilson_interval)
from hopchain_jax.vlm.chat import ChatResult, image_part

K = 4


@pytest.fixture(scope="module")
def ds(two_scene_dataset):
    return two_scene_dataset


class Scripted:
    """Answers record i (by its question) with plan[i] correct responses of K, the rest a wrong number; a
    response is truncated (finish "length") when the plan says so. crash_at: this call raises."""

    def __init__(self, records, plan, truncate=(), crash_at=None, model="scripted"):
        self.by_question = {r["question"]: (r, plan[r["id"]]) for r in records}
        self.truncate, self.crash_at, self.model, self.calls, self.asked = set(truncate), crash_at, model, 0, []

    def complete(self, requests):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        out = []
        for req in requests:
            text = req.messages[0]["content"][-1]["text"]
            rec, correct = next(v for q, v in self.by_question.items() if text.startswith(q))
            self.asked.append(rec["id"])
            a = rec["answer"]
            texts = [f"so \\boxed{{{a}}}" if i < correct else ("no idea" if i == K - 1 else f"\\boxed{{{a + 1}}}")
                     for i in range(req.n)]
            reasons = ["length" if rec["id"] in self.truncate and i == 0 else "stop" for i in range(req.n)]
            out.append(ChatResult(texts, reasons, {}))
        return out


def test_scores_intervals_and_buckets():
    s = score_response("thus \\boxed{7}", 7)
    assert s.correct and not s.format_failure and not s.truncated and s.parsed == "7"
    assert not score_response("thus \\boxed{7}", 7, "length").correct                 # truncated: wrong by default
    assert score_response("thus \\boxed{7}", 7, "length", count_truncated=True).correct
    assert score_response("I cannot tell", 7).format_failure
    assert score_response("\\boxed{2.50}", 2.5).correct
    m = item_metrics([score_response(t, 3) for t in ("\\boxed{3}", "\\boxed{4}", "\\boxed{4}", "x")], 3)
    assert m == {"mean": 0.25, "pass": 1.0, "maj": 0.0, "format_failure": 0.25, "truncated": 0.0}
    # maj: a tie goes to the answer that came first
    assert item_metrics([score_response(t, 3) for t in ("\\boxed{3}", "\\boxed{4}")], 3)["maj"] == 1.0
    assert item_metrics([ResponseScore("3", False, False, True, counted=False),
                         ResponseScore("4", False, False, False)], 3)["maj"] == 0.0   # a truncated one does not vote
    # Wilson: 0 of 10 -> (0, 0.2775), 5 of 10 -> (0.2366, 0.7634) (textbook values)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    lo, hi = mean_interval([0.0, 0.5, 1.0, 0.5])
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(1.959964 * math.sqrt(1 / 6 / 4), rel=1e-4)
    assert [length_bucket(n) for n in (0, 63, 64, 300, 5000)] == ["0-63", "0-63", "64-127", "256-511", "4096+"]
    assert [answer_range(a) for a in (-1, 0, 7, 19, 150, 2.5)] == ["<0", "0-4", "5-9", "10-19", "100+",
                                                                   "non-integer"]


def test_eval_exact_accuracies_breakdowns_and_resume(ds, tmp_path):
    records = select_records(ds.records(), ("full",))
    assert len(records) > 10
    plan = {r["id"]: i % (K + 1) for i, r in enumerate(records)}
    truncate = {records[0]["id"], records[4]["id"]}   # plan 0 and 4: their first response is cut off
    settings = EvalSettings(samples=K, temperature=1.0, max_tokens=64, variants=("full",))
    out = tmp_path / "eval"
    crashing = Scripted(records, plan, truncate, crash_at=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(ds, crashing, out, settings, batch_size=4, progress=False)
    kept = [json.loads(line)["id"] for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(kept) == 4   # the first batch is on disk
    backend = Scripted(records, plan, truncate)
    summary = evaluate_dataset(ds, backend, out, settings, batch_size=4, progress=False)
    assert sorted(backend.asked) == sorted(r["id"] for r in records if r["id"] not in kept)   # nothing asked twice
    # exact expectations from the plan
    correct = {r["id"]: plan[r["id"]] - (r["id"] in truncate and plan[r["id"]] > 0) for r in records}
    n = len(records)
    overall = summary["overall"]
    assert overall["items"] == n and summary["errors"] == 0
    assert overall[f"mean@{K}"]["value"] == pytest.approx(sum(correct.values()) / (K * n), abs=1e-4)
    assert overall[f"pass@{K}"]["value"] == pytest.approx(sum(c > 0 for c in correct.values()) / n, abs=1e-4)
    # majority: right votes (the untruncated correct ones) against the \boxed{a + 1} votes (responses plan..K-2;
    # "no idea" and truncated responses never vote); a tie goes to the right answer, which comes first
    def maj(rec):
        p, cut = plan[rec["id"]], rec["id"] in truncate
        right = p - (cut and p > 0)
        wrong = max(0, K - 1 - p) - (cut and p == 0)
        return right > 0 and right >= wrong
    expect_maj = sum(maj(r) for r in records)
    assert overall[f"maj@{K}"]["value"] == pytest.approx(expect_maj / n, abs=1e-4)
    assert overall["truncated"] == pytest.approx(len(truncate) / (K * n), abs=1e-4)
    assert overall[f"pass@{K}"]["low"] <= overall[f"pass@{K}"]["value"] <= overall[f"pass@{K}"]["high"]
    # every breakdown covers the items (op: each item under each of its ops)
    by = summary["by"]
    assert sum(v["items"] for v in by["variant"].values()) == n
    assert sum(v["items"] for v in by["hops"].values()) == n
    assert sum(v["items"] for v in by["answer_range"].values()) == n
    assert sum(v["responses"] for v in by["length"].values()) == K * n
    assert sum(v["items"] for v in by["op"].values()) == sum(len(breakdown_keys(r)["op"]) for r in records)
    for hops, v in by["hops"].items():   # per group, the same exact mean
        mine = [r for r in records if str(len(r["hops"])) == hops]
        assert v[f"mean@{K}"]["value"] == pytest.approx(sum(correct[r["id"]] for r in mine) / (K * len(mine)), abs=1e-4)
    assert summary["blind"]["text_only_queries"] == n and 0 <= summary["blind"]["text_only"] <= 1
    md = (out / "summary.md").read_text()
    assert "## by op" in md and f"mean@{K}" in md and "blind baselines" in md
    assert json.loads((out / "summary.json").read_text())["overall"] == overall
    # a finished run asks nothing again; other settings are refused, naming the difference
    again = Scripted(records, plan, truncate)
    evaluate_dataset(ds, again, out, settings, batch_size=4, progress=False)
    assert again.asked == []
    with pytest.raises(ValueError, match="samples"):
        evaluate_dataset(ds, again, out, EvalSettings(samples=2, temperature=1.0, variants=("full",)), progress=False)


class ReadsImage:
    """Answers every sample right when the request shows the record's own image, else gold + 1: a model
    whose accuracy comes from the image."""

    def __init__(self, ds, records):
        self.model, self.calls = "reads-image", 0
        self.by_question = {r["question"]: r for r in records}
        self.url = {r["id"]: image_part(ds.image_of(r))["image_url"]["url"] for r in records}

    def complete(self, requests):
        self.calls += 1
        out = []
        for req in requests:
            parts = req.messages[0]["content"]
            rec = next(r for q, r in self.by_question.items() if parts[-1]["text"].startswith(q))
            own = parts[0]["image_url"]["url"] == self.url[rec["id"]]
            out.append(ChatResult([f"\\boxed{{{rec['answer'] + (0 if own else 1)}}}"] * req.n, ["stop"] * req.n, {}))
        return out


def test_image_control_tells_a_model_that_reads_the_image_from_one_that_does_not(ds, tmp_path):
    records = select_records(ds.records(), ("full",))
    swap = swapped_images(records)
    assert all(swap[r["id"]]["image"]["sha256"] != r["image"]["sha256"] for r in records)   # always another image
    settings = EvalSettings(samples=2, temperature=1.0, max_tokens=64, variants=("full",), image_control=True)
    s = evaluate_dataset(ds, ReadsImage(ds, records), tmp_path / "reads", settings, batch_size=8, progress=False)
    c = s["image_control"]
    assert s["overall"]["mean@2"]["value"] == 1.0 and c["mean@2"]["value"] == 0.0 and c["items"] == len(records)
    assert c["needs_image"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert c["by_variant"]["full"]["needs_image"]["value"] == 1.0
    lines = [json.loads(x) for x in (tmp_path / "reads" / "control.jsonl").read_text().splitlines()]
    assert {x["image_from"] for x in lines} == {swap[r["id"]]["id"] for r in records}
    assert "image control" in (tmp_path / "reads" / "summary.md").read_text()
    # a model that answers from the question alone scores the same with either image: nothing needs it
    plan = {r["id"]: i % 3 for i, r in enumerate(records)}
    blind = evaluate_dataset(ds, Scripted(records, plan), tmp_path / "blind",
                             dataclasses.replace(settings, samples=K), batch_size=8, progress=False)
    assert blind["image_control"]["needs_image"]["value"] == 0.0
    assert blind["image_control"]["mean@4"] == {k: v for k, v in blind["overall"]["mean@4"].items()}
    # resumed: nothing is asked again; without the flag, a run made with it is refused
    again = ReadsImage(ds, records)
    evaluate_dataset(ds, again, tmp_path / "reads", settings, batch_size=8, progress=False)
    assert again.calls == 0
    with pytest.raises(ValueError, match="image_control"):
        evaluate_dataset(ds, again, tmp_path / "reads", dataclasses.replace(settings, image_control=False),
                         progress=False)


def test_limit_is_a_fixed_prefix_and_cli_flags(ds):
    records = list(ds.records())
    small, large = select_records(records, ("full",), 3), select_records(records, ("full",), 6)
    assert [r["id"] for r in large[:3]] == [r["id"] for r in small]
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    parse = lambda *a: settings_from_args(parser.parse_args(["eval", "d", "--model", "m", "--out", "o", *a]))
    assert parse().temperature == 0 and parse().samples == 1                         # greedy by default
    assert parse("--image-control").image_control and not parse().image_control
    assert parse("--samples", "8").temperature == 1.0
    with pytest.raises(ValueError, match="--greedy"):
        parse("--greedy", "--samples", "4")
    with pytest.raises(ValueError, match="identical"):
        EvalSettings(samples=4, temperature=0.0)


class FailsOneHop:
    """A model that answers every full chain wrong and, asked hop by hop, gets right every probe in which
    hop `fail[id]` is given solved, and wrong every probe that asks it (an arithmetic slip when fail is
    "arithmetic")."""

    def __init__(self, records, fail):
        from hopchain_jax.eval.localize import chain_probes
        self.model, self.fail = "fails-one-hop", fail
        self.full = {r["question"]: r for r in records}
        self.probes = {p["question"]: (r, p) for r in records for p in chain_probes(r)}

    def complete(self, requests):
        out = []
        for req in requests:
            text = req.messages[0]["content"][-1]["text"]
            full = next((r for q, r in self.full.items() if text.startswith(q)), None)
            if full is not None:
                out.append(ChatResult([f"\\boxed{{{full['answer'] + 1}}}"] * req.n, ["stop"] * req.n, {}))
                continue
            rec, probe = next(v for q, v in self.probes.items() if text.startswith(q))
            j = self.fail[rec["id"]]
            asked = range(probe["hop"], probe.get("through", probe["hop"]) + 1) if probe["probe"] != "C" else []
            wrong = (j == "arithmetic" and probe["probe"] == "C") or j in asked
            out.append(ChatResult([f"\\boxed{{{probe['gold'] + wrong}}}"] * req.n, ["stop"] * req.n, {}))
        return out


def test_localize_finds_the_hop_a_model_cannot_do(ds, tmp_path):
    from hopchain_jax.eval.localize import chain_probes, hop_kind
    records = select_records(ds.records(), ("full",))
    fail, expect = {}, {}
    for i, rec in enumerate(records):
        probes = chain_probes(rec)
        combined = bool(rec["hops"][-1]["combine"])   # most full chains end in arithmetic, not every one
        assert probes and (probes[-1]["probe"] == "C") == combined
        assert probes[-1]["gold"] == rec["answer"]
        hops = sorted({p["hop"] for p in probes if p["probe"] != "C"})
        picks = hops + ["arithmetic"] * combined
        pick = picks[i % len(picks)]
        fail[rec["id"]] = pick
        hop = rec["hops"][pick] if pick != "arithmetic" else None
        expect[rec["id"]] = ("arithmetic", rec["hops"][-1]["combine"]["op"]) if hop is None else (hop_kind(hop), hop["op"])
    backend = FailsOneHop(records, fail)
    summary = evaluate_dataset(ds, backend, tmp_path / "loc", EvalSettings(variants=("full",)), batch_size=8,
                               progress=False, localize=True)
    assert summary["overall"]["mean@1"]["value"] == 0
    lines = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "loc" / "localize.jsonl").read_text().splitlines()}
    assert set(lines) == {r["id"] for r in records}
    for rid, (kind, op) in expect.items():
        got = lines[rid]["first_wrong"]
        assert (got["kind"], got["op"]) == (kind, op), (rid, fail[rid], got)
    loc = summary["localize"]
    kinds = collections.Counter(k for k, _ in expect.values())
    assert {g: v["chains"] for g, v in loc["first_wrong"]["kind"].items()} == dict(kinds)
    assert set(loc["probe_error_rate"]["kind"]) <= {"level1", "level2", "instance_chain", "arithmetic"}
    assert "where wrong full chains fail" in (tmp_path / "loc" / "summary.md").read_text()


def test_cli_against_a_live_endpoint_jsonl_import_and_usage_errors(ds, tmp_path, capsys):
    from PIL import Image

    from hopchain_jax.cli import main
    from test_calibrate import AnswerEndpoint
    records = select_records(ds.records(), ("full",))
    # a user's JSONL: two of the images with questions of their own
    for k in range(2):
        Image.fromarray(ds.image_of(records[k])).save(tmp_path / f"im{k}.png")
    mine = [{"image": f"im{k}.png", "question": f"How many things are in picture {k}?", "answer": k + 3} for k in range(2)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mine))
    endpoint = AnswerEndpoint({**{r["question"]: r["answer"] for r in records},
                               **{m["question"]: m["answer"] for m in mine}})
    try:
        out = tmp_path / "out"
        argv = [str(ds.root), "--model", f"weak@{endpoint.url}", "--samples", "2", "--out", str(out),
                "--variant", "full", "--limit", "5", "--no-progress"]
        assert main(["eval", *argv, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["overall"]["items"] == 5 and summary["overall"]["mean@2"]["value"] == 1.0
        assert summary["model"] == "weak" and summary["samples"] == 2 and summary["temperature"] == 1.0
        calls = endpoint.calls
        assert main(["eval", *argv]) == 0   # finished: asks nothing, prints the tables
        assert endpoint.calls == calls and "| **overall** | 5 |" in capsys.readouterr().out
        assert main(["eval", str(tmp_path / "mine.jsonl"), "--model", f"weak@{endpoint.url}", "--out",
                     str(tmp_path / "mine"), "--no-progress", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["overall"]["items"] == 2 and got["overall"]["mean@1"]["value"] == 1.0
        assert list(got["by"]["source"]) == ["external"]
    finally:
        endpoint.server.shutdown()
    assert main(["eval", str(ds.root), "--model", "m@http://x/v1", "--out", str(tmp_path / "o"), "--greedy",
                 "--samples", "3"]) == 2
    assert "--greedy" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing"), "--model", "m@http://x/v1", "--out", str(tmp_path / "o")]) == 2
    assert "hopchain import" in capsys.readouterr().err
    assert main(["eval", str(ds.root), "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "MODEL@URL" in capsys.readouterr().err

"""Difficulty calibration of a dataset (hopchain calibrate): exact counts, crash safety, per-item errors,
and the export filter; scripted backends plus one run against a live local OpenAI-compatible endpoint."""
import argparse
import json
import subprocess
import sys
import textwrap
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hopchain_jax.data.export import add_export_calibration_args, export_dataset, format_export_summary
from hopchain_jax.data.prompts import DEFAULT_INSTRUCTION_SUFFIX
from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.synth.record import validate_record
from hopchain_jax.vlm.calibrate import (apply_calibration, calibrate_dataset, default_sidecar, load_calibration,
                                        model_slug)
from hopchain_jax.vlm.calibrate_cli import add_calibrate_parser
from hopchain_jax.vlm.chat import ChatResult
from hopchain_jax.vlm.solvers import solver_request

SAMPLES = 4


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """Two small procedural scenes (400x300, so requests encode fast): 27 full records."""
    from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis
    from hopchain_jax.world.scene import SceneConfig
    root = tmp_path_factory.mktemp("calib") / "ds"
    run_synthesis(root, SynthConfig(num_images=2, images_per_shard=2, scene=SceneConfig(resolutions=((400, 300),))),
                  workers=1, progress=False)
    return HopChainDataset(root)


def _key(request):
    content = request.messages[0]["content"]
    return content[0]["image_url"]["url"], content[-1]["text"]


@pytest.fixture(scope="module")
def full(ds):
    """The full records, each with the key its calibration request will have and a planned number of
    correct answers (0..SAMPLES, cycling)."""
    records = [r for r in ds.records() if r["variant"] == "full"]
    plan = {}
    for k, r in enumerate(records):
        plan[_key(solver_request(ds.image_of(r), r["question"], 1, 1.0, 8))] = (r, k % (SAMPLES + 1))
    assert len(plan) == len(records) > 10
    return records, plan


class Planned:
    """Answers each request with its record's planned number of correct answers (in several equivalent
    spellings), the rest off by one. error_ids: these records fail; short_ids: too few samples come back;
    crash_at: the call (1-based) that raises `crash` instead."""

    def __init__(self, plan, model="small-vlm", error_ids=(), short_ids=(), crash_at=None, crash=KeyboardInterrupt):
        self.plan, self.model = plan, model
        self.error_ids, self.short_ids = set(error_ids), set(short_ids)
        self.crash_at, self.crash = crash_at, crash
        self.calls, self.requests, self.ids = 0, [], []

    def complete(self, requests):
        self.calls += 1
        if self.crash_at is not None and self.calls >= self.crash_at:
            raise self.crash("scripted crash")
        out = []
        for req in requests:
            record, good = self.plan[_key(req)]
            self.requests.append(req)
            self.ids.append(record["id"])
            if record["id"] in self.error_ids:
                out.append(ChatResult([], [], {}, error="RateLimitError: slow down"))
                continue
            a = record["answer"]
            right = [f"so \\boxed{{{a}}}", f"The answer is {a}.0", f"\\boxed{{{a}.00}}"]
            texts = [right[i % 3] if i < good else f"\\boxed{{{a + 1}}}" for i in range(req.n)]
            out.append(ChatResult(texts[:-1] if record["id"] in self.short_ids else texts, ["stop"] * req.n, {}))
        return out


def expected(records, plan, skip=()):
    counts = {r["id"]: good for r, good in plan.values()}
    hist = [0] * (SAMPLES + 1)
    for r in records:
        if r["id"] not in skip:
            hist[counts[r["id"]]] += 1
    return hist


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def run(ds, backend, out, **kw):
    return calibrate_dataset(ds, backend, samples=SAMPLES, out=out, progress=False, **{"batch_size": 5, **kw})


def test_counts_histogram_and_too_easy_are_exact(ds, full, tmp_path):
    records, plan = full
    backend = Planned(plan)
    summary = run(ds, backend, tmp_path / "c.jsonl")
    hist = expected(records, plan)
    assert summary["histogram"] == hist and summary["too_easy"] == hist[SAMPLES]
    assert summary["records"] == summary["calibrated"] == summary["new"] == len(records) and summary["errors"] == 0
    # only the full variant by default, one request per record, batched, as a solver sees it
    assert sorted(backend.ids) == sorted(r["id"] for r in records) and backend.calls == -(-len(records) // 5)
    req = backend.requests[0]
    assert req.n == SAMPLES and req.temperature == 1.0 and req.salt == "calibration"
    assert req.messages[0]["content"][-1]["text"].endswith(DEFAULT_INSTRUCTION_SUFFIX)
    entries = load_calibration(tmp_path / "c.jsonl")
    assert [e["id"] for e in lines(tmp_path / "c.jsonl")] == [r["id"] for r in records]
    for r, good in plan.values():
        e = entries[r["id"]]
        assert (e.model, e.samples, e.correct, e.error) == ("small-vlm", SAMPLES, good, None)
        assert e.too_easy is (good == SAMPLES)
    # applying an entry fills verification.calibration and says whether the record is too easy
    rec = dict(records[0], verification={"method": "program", "calibration": None})
    assert apply_calibration(rec, entries[rec["id"]]) is (plan_good(plan, rec) == SAMPLES)
    assert rec["verification"] == {"method": "program", "calibration": {
        "model": "small-vlm", "samples": SAMPLES, "correct": plan_good(plan, rec)}}
    # a rerun has nothing left to do
    again = Planned(plan)
    assert run(ds, again, tmp_path / "c.jsonl")["new"] == 0 and again.calls == 0


def plan_good(plan, record):
    return next(good for r, good in plan.values() if r["id"] == record["id"])


def test_default_sidecar_is_named_after_the_model(ds, full):
    records, plan = full
    backend = Planned(plan, model="org/Weak VLM:7b")
    summary = calibrate_dataset(ds, backend, samples=SAMPLES, variants=("external",), progress=False)
    path = default_sidecar(ds.root, "org/Weak VLM:7b")
    try:
        assert path.name == "calibration-org-Weak-VLM-7b.jsonl" == f"calibration-{model_slug('org/Weak VLM:7b')}.jsonl"
        assert summary["sidecar"] == str(path) and summary["records"] == 0 and backend.calls == 0
    finally:
        path.unlink()


def test_a_crash_mid_run_then_a_rerun_loses_and_repeats_nothing(ds, full, tmp_path):
    records, plan = full
    out = tmp_path / "c.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(ds, Planned(plan, crash_at=3), out)  # two batches of 5 finished, the third never returned
    first = [e["id"] for e in lines(out)]
    assert first == [r["id"] for r in records[:10]]
    backend = Planned(plan)
    summary = run(ds, backend, out)
    assert backend.ids == [r["id"] for r in records[10:]]  # only the missing ones
    assert [e["id"] for e in lines(out)] == [r["id"] for r in records]  # each exactly once
    assert summary["histogram"] == expected(records, plan) and summary["new"] == len(records) - 10


KILLER = textwrap.dedent("""
    import os, signal, sys
    from hopchain_jax.vlm.calibrate import calibrate_dataset
    from hopchain_jax.vlm.chat import ChatResult

    class Killer:  # answers 0 every time; the third call kills the whole process, as kill -9 would
        model, calls = "small-vlm", 0

        def complete(self, requests):
            self.calls += 1
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return [ChatResult(["0"] * r.n, ["stop"] * r.n, {}) for r in requests]

    calibrate_dataset(sys.argv[1], Killer(), samples=4, out=sys.argv[2], batch_size=5, progress=False)
""")


def test_kill_9_mid_run_keeps_every_finished_batch(ds, full, tmp_path):
    records, plan = full
    out = tmp_path / "c.jsonl"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(ds.root), str(out)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert [e["id"] for e in lines(out)] == [r["id"] for r in records[:10]]  # both batches were durable
    backend = Planned(plan)
    summary = run(ds, backend, out)
    assert backend.ids == [r["id"] for r in records[10:]] and summary["calibrated"] == len(records)
    assert [e["id"] for e in lines(out)] == [r["id"] for r in records]


def test_a_torn_last_line_is_dropped_with_a_warning_and_recomputed(ds, full, tmp_path):
    records, plan = full
    out = tmp_path / "c.jsonl"
    run(ds, Planned(plan), out)
    data = out.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(data[:cut + 17])  # kill -9 while the last line was being written
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert len(load_calibration(out)) == len(records) - 1
    assert out.read_bytes() == data[:cut + 17]  # reading does not touch the file
    backend = Planned(plan)
    with pytest.warns(RuntimeWarning, match="torn last line"):
        summary = run(ds, backend, out)
    assert backend.ids == [records[-1]["id"]]
    assert [e["id"] for e in lines(out)] == [r["id"] for r in records]
    assert summary["histogram"] == expected(records, plan)
    # a whole last line without its newline is kept, and the next line does not run into it
    entries = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(entries[:-2]) + entries[-2].rstrip(b"\n"))
    backend = Planned(plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(ds, backend, out)
    assert backend.ids == [records[-1]["id"]] and [e["id"] for e in lines(out)] == [r["id"] for r in records]
    # damage anywhere else is not guessed at
    text = out.read_text().splitlines()
    out.write_text("\n".join(text[:3] + ["{not json"] + text[3:]) + "\n")
    with pytest.raises(ValueError, match="line 4 of .* fix or delete that line"):
        run(ds, Planned(plan), out)


def test_item_errors_are_recorded_not_raised_and_retried_on_a_rerun(ds, full, tmp_path):
    records, plan = full
    out = tmp_path / "c.jsonl"
    bad = {records[1]["id"], records[7]["id"], records[20]["id"]}
    short = {records[4]["id"]}
    summary = run(ds, Planned(plan, error_ids=bad, short_ids=short), out)
    assert summary["errors"] == 4 and summary["calibrated"] == len(records) - 4
    assert summary["histogram"] == expected(records, plan, skip=bad | short)
    errors = {e["id"]: e["error"] for e in lines(out) if e["error"]}
    assert set(errors) == bad | short and "RateLimitError" in errors[records[1]["id"]]
    assert "asked for 4 samples" in errors[records[4]["id"]]
    backend = Planned(plan)
    summary = run(ds, backend, out)
    assert sorted(backend.ids) == sorted(bad | short)  # only the failed items are asked again
    assert summary["errors"] == 0 and summary["histogram"] == expected(records, plan) and summary["compacted"] == 4
    assert sorted(e["id"] for e in lines(out)) == sorted(r["id"] for r in records)  # superseded lines gone
    assert all(e["error"] is None for e in lines(out))


def test_a_backend_that_fails_every_batch_stops_the_run(ds, full, tmp_path):
    records, plan = full
    out = tmp_path / "c.jsonl"
    with pytest.raises(RuntimeError, match="failed 3 whole batches.*rerun"):
        run(ds, Planned(plan, crash_at=1, crash=ConnectionError), out)
    assert [e["id"] for e in lines(out)] == [r["id"] for r in records[:15]]
    assert all("backend failed the batch: ConnectionError" in e["error"] for e in lines(out))
    # another model, or another number of samples, does not mix into the same file
    with pytest.raises(ValueError, match="another output file"):
        run(ds, Planned(plan, model="other"), out)


def test_export_fills_calibration_and_drops_too_easy(ds, full, tmp_path):
    records, plan = full
    out = tmp_path / "c.jsonl"
    summary = run(ds, Planned(plan, error_ids={records[0]["id"]}), out)
    too_easy = summary["too_easy"]
    assert too_easy > 0
    plain = export_dataset(ds.root, tmp_path / "plain.jsonl", variants=("full", "half"), progress=False)
    assert plain.written == 2 * len(records) and plain.dropped_too_easy == 0
    assert all(r["verification"]["calibration"] is None for r in lines(tmp_path / "plain.jsonl"))
    kept = export_dataset(ds.root, tmp_path / "cal.jsonl", variants=("full", "half"), progress=False, calibration=out)
    assert (kept.written, kept.calibrated, kept.too_easy) == (2 * len(records), len(records) - 1, too_easy)
    by_id = {r["id"]: r for r in lines(tmp_path / "cal.jsonl")}
    for r, good in plan.values():
        cal = by_id[r["id"]]["verification"]["calibration"]
        assert cal == (None if r["id"] == records[0]["id"] else {"model": "small-vlm", "samples": SAMPLES,
                                                                  "correct": good})
    assert all(validate_record(r) == [] for r in by_id.values())
    dropped = export_dataset(ds.root, tmp_path / "hard.jsonl", variants=("full", "half"), progress=False,
                             calibration=out, drop_too_easy=True)
    assert dropped.dropped_too_easy == too_easy and dropped.written == 2 * len(records) - too_easy
    assert all(r["verification"]["calibration"]["correct"] < SAMPLES
               for r in lines(tmp_path / "hard.jsonl") if r["variant"] == "full" and r["id"] != records[0]["id"])
    assert f"left out: {too_easy}" in format_export_summary(dropped, "hard.jsonl")
    with pytest.raises(ValueError, match="--calibration"):
        export_dataset(ds.root, tmp_path / "x.jsonl", drop_too_easy=True, progress=False)
    with pytest.raises(FileNotFoundError, match="hopchain calibrate"):
        export_dataset(ds.root, tmp_path / "x.jsonl", calibration=tmp_path / "missing.jsonl", progress=False)
    from hopchain_jax.vlm import annotation_cli, calibrate, calibrate_cli
    assert calibrate_cli.DEFAULT_VARIANTS == annotation_cli.DEFAULT_VARIANTS == calibrate.DEFAULT_VARIANTS
    parser = argparse.ArgumentParser()
    add_export_calibration_args(parser)
    args = parser.parse_args(["--calibration", str(out), "--drop-too-easy"])
    assert args.calibration == str(out) and args.drop_too_easy and args.verdicts is None


# ------------------------------------------------------------------------------------------------ CLI

def cli(argv):
    parser = argparse.ArgumentParser(prog="hopchain")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


class AnswerEndpoint:
    """/v1/chat/completions answering every question with the answer of a record that asks it."""

    def __init__(self, answers):
        outer = self
        self.calls = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                text = body["messages"][-1]["content"][-1]["text"]
                answer = answers[text[:-len(DEFAULT_INSTRUCTION_SUFFIX)]]
                data = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": k, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f"\\boxed{{{answer}}}"}}
                                for k in range(body["n"])]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_cli_against_a_live_endpoint_and_usage_errors(ds, full, tmp_path, capsys):
    records, _ = full
    endpoint = AnswerEndpoint({r["question"]: r["answer"] for r in records})
    out = tmp_path / "c.jsonl"
    try:
        argv = [str(ds.root), "--endpoint", endpoint.url, "--endpoint-model", "weak", "--samples", "2",
                "--out", str(out), "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
        assert cli(["calibrate", *argv, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["records"] == summary["calibrated"] == len(records) and summary["model"] == "weak"
        assert sum(summary["histogram"]) == len(records) and summary["too_easy"] >= len(records) // 2
        calls = endpoint.calls
        assert cli(["calibrate", *argv]) == 0  # the rerun has nothing to do, and prints a table
        text = capsys.readouterr().out
        assert endpoint.calls == calls and "too easy (all 2 correct)" in text and "mean pass rate" in text
        assert "  2/2" in text and "  0/2" in text
        # the model as synth's flags spell it, MODEL@URL: the same backend, answered from the same cache
        assert cli(["calibrate", str(ds.root), "--model", f"weak@{endpoint.url}", "--samples", "2", "--out",
                    str(tmp_path / "d.jsonl"), "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"),
                    "--no-progress", "--json"]) == 0
        again = json.loads(capsys.readouterr().out)
        assert endpoint.calls == calls and again["model"] == "weak"
        assert (again["calibrated"], again["histogram"]) == (summary["calibrated"], summary["histogram"])
    finally:
        endpoint.server.shutdown()
    assert cli(["calibrate", str(ds.root)]) == 2
    err = capsys.readouterr().err
    assert "--model CKPT" in err and "MODEL@URL" in err and "--endpoint URL --endpoint-model NAME" in err
    assert cli(["calibrate", str(ds.root), "--model", "@http://x/v1"]) == 2
    assert "the model name before '@' is empty" in capsys.readouterr().err
    assert cli(["calibrate", str(ds.root), "--model", "m@http://x/v1", "--endpoint", "http://x/v1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli(["calibrate", str(ds.root), "--endpoint", "http://x/v1"]) == 2
    assert "--endpoint-model" in capsys.readouterr().err
    assert cli(["calibrate", str(ds.root), "--model", str(tmp_path), "--decode-mesh", "8,1"]) == 2
    assert "--decode-mesh '8,1': give three device counts" in capsys.readouterr().err
    assert cli(["calibrate", str(tmp_path / "nothing"), "--endpoint", "http://x/v1", "--endpoint-model", "m"]) == 2
    err = capsys.readouterr().err
    assert "holds no HopChain shards" in err and "hopchain import" in err

"""The one-call device suite (benchmarks/gpu_suite.sh) and the on-device check of benchmarks/kernels.py.

The suite's CPU dry run (SMALL=1) runs every stage at tiny sizes; the unit tests show that the
correctness check fails on a wrong implementation and that a case over its timeout is recorded
and the run goes on.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
STAGES = ["env", "lowering", "kernels", "generate", "sampler", "train_step"]
LOGS = {"sampler": "generate.log"}   # stages that append to another stage's log (8 files at most)

# benchmarks/kernels.py by path (its module name would shadow the kernels/ package)
_spec = importlib.util.spec_from_file_location("kernels_bench", ROOT / "benchmarks" / "kernels.py")
bench = sys.modules["kernels_bench"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_suite_dry_run(tmp_path):
    """SMALL=1: every stage exits 0, summary.json lists them, the kernel JSONL has one line per
    case (GPU-only kernels skipped with a reason, the others checked and passing), <= 8 files."""
    out = tmp_path / "out"
    env = dict(os.environ, SMALL="1", OUT=str(out), PY=sys.executable, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)   # the suite's processes see one CPU device, as a user's would
    proc = subprocess.run(["bash", str(SUITE)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == STAGES
    for s in summary["stages"]:
        assert (s["status"], s["rc"]) == ("ok", 0), (s, (out / s["log"]).read_text()[-2000:])
        assert 0 <= s["seconds"] <= s["budget_s"] + 3
        assert s["log"] == LOGS.get(s["name"], s["name"] + ".log")
        assert (out / s["log"]).stat().st_size > 0
    assert summary["ok"] is True and summary["small"] is True
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert set(files) >= {"summary.json", "kernels.jsonl", "tuned.json", "env.log"}

    rows = _jsonl(out / "kernels.jsonl")
    keys = [(r["kind"], r["impl"], r["mode"]) for r in rows]
    assert len(keys) == len(set(keys)), keys
    impls = ["mosaic", "chunked", "pallas", "fused_head", "fused_head:32xVxbf16"]
    expected = ({("env", "", "")} | {("probe", i, "") for i in ("mosaic", "pallas")}
                | {("check", i, "") for i in impls} | {("time", i, "fwd+bwd") for i in impls})
    assert set(keys) == expected
    has_head = bench.fused_head_module() is not None
    for r in rows:
        if r["impl"] in ("pallas", "mosaic") or (r["impl"] == "fused_head" and not has_head):
            assert r["status"] == "skipped" and r["reason"], r
            continue
        assert r["status"] == "ok", r
        if r["kind"] == "check":
            assert r["ok"] is True and r["ref_ok"] is True
            for res in r["variants"].values():
                assert res["ok"] and res["finite"] and res["signs"]
                assert set(res["passed"]) >= {"logp", "entropy", "dh", "dw"}
                assert all(res["passed"].values())
                assert all(res["errors"][k] <= bench.TOL[k] for k in res["errors"])
        if r["kind"] == "time":
            assert r["ms"] > 0 and r["iters"] == 2 and r["temp_bytes"] is not None
    tuned = json.loads((out / "tuned.json").read_text())
    assert tuned["records"]["cpu|cpu|bfloat16"]["order"] == ["chunked"]
    generate_log = (out / "generate.log").read_text()
    assert '"decode_tok_s"' in generate_log
    sampler_log = generate_log[generate_log.index("=== stage sampler ==="):]
    assert re.search(r"^\| plain(?: \| [\d.]+){4} \| \d/4 \|$", sampler_log, re.M), sampler_log
    assert "| mixed per-row |" in sampler_log
    assert '"mfu"' in (out / "train_step.log").read_text()
    assert re.search(r"\b[5-9] passed", (out / "lowering.log").read_text())


@pytest.mark.slow
def test_suite_rerun_of_chosen_stages(tmp_path):
    """ONLY= runs just the named stages (the rest recorded as skipped, the run still ok) and
    KERNEL_EXTRA's options override the stage's (a shorter second device call)."""
    out = tmp_path / "out"
    env = dict(os.environ, SMALL="1", OUT=str(out), PY=sys.executable, JAX_PLATFORMS="cpu",
               ONLY="env,kernels", KERNEL_EXTRA="--impls chunked --no-probe")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", str(SUITE)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [
        ("env", "ok"), ("lowering", "skipped"), ("kernels", "ok"), ("generate", "skipped"),
        ("sampler", "skipped"), ("train_step", "skipped")]
    assert summary["ok"] is True and not (out / "generate.log").exists()
    rows = _jsonl(out / "kernels.jsonl")
    assert {(r["kind"], r["impl"]) for r in rows} == {("env", ""), ("check", "chunked"),
                                                      ("time", "chunked")}
    assert all(r["status"] == "ok" for r in rows), rows


def test_suite_budgets_fit_one_device_call():
    """The full-size stage budgets (+3 s kill grace each) stay under 570 s of the 600 s call,
    and every stage has one."""
    text = SUITE.read_text()
    start = text.index("else\n  B_ENV")
    full = text[start:text.index("\nfi\n", start)]
    budgets = dict(re.findall(r"B_([A-Z]+)=\$\{B_\1:-(\d+)\}", full))
    stages = re.findall(r"^(?:LOG=\w+ )?stage (\w+) \"\$B_([A-Z]+)\"", text, re.M)
    assert [name for name, _ in stages] == STAGES, stages
    assert sorted(b for _, b in stages) == sorted(budgets), (stages, budgets)
    assert sum(map(int, budgets.values())) + 3 * len(budgets) < 570, budgets


def _drop_softmax_term(h, w, t):
    """logp with the log-normaliser's gradient cut (stop_gradient): the values are right, the
    gradient lacks the -p (softmax) term. Entropy is the reference's."""
    from hopchain_jax.kernels import logprob_entropy_reference
    z = jnp.dot(h, w, preferred_element_type=jnp.float32)
    lse = jax.lax.stop_gradient(jax.nn.logsumexp(z, axis=-1))
    logp = jnp.take_along_axis(z, t[:, None], axis=-1)[:, 0] - lse
    return logp, logprob_entropy_reference(h, w, t)[1]


def test_check_fails_on_a_wrong_implementation(monkeypatch):
    """The device check must be able to fail: the "chunked" case, run as the suite runs it but
    with a gradient that lacks the softmax term, passes the value checks and fails dh / dw in
    both variants. (The dry run above shows the correct op passing the same check.)"""
    monkeypatch.setattr(bench, "impl_fn", lambda impl, cfg, interpret: _drop_softmax_term)
    case = bench.Case("check", impl="chunked", n=32, d=32, v=300,
                      opts=dict(cfg=dict(chunk_v=128), logit_std=4.0, seed=0))
    row = bench.run_case(case)
    assert row["status"] == "fail" and row["ok"] is False, row
    assert row["ref_ok"] is True        # the oracle itself agrees with the textbook formula
    for variant in ("lp+ent", "lp"):
        passed = row["variants"][variant]["passed"]
        assert passed["logp"] and passed["entropy"], row
        assert not passed["dh"] and not passed["dw"], row


def test_case_timeout_is_recorded_and_the_run_goes_on(tmp_path):
    """A case process that outlives --case-timeout becomes a "timeout" row; the next case still
    runs and every row is appended to the JSONL as it finishes."""
    args = bench.parse_args(["--small", "--impls", "chunked", "--modes", "fwd", "--no-probe",
                             "--out", str(tmp_path / "rows.jsonl"), "--case-timeout", "0.2"])
    args.iters, args.cache_dir = 1, str(tmp_path)
    cases = bench.plan(args, bench.resolve_shape(args))
    assert [c.kind for c in cases] == ["env", "check", "time"]
    rows = bench.execute(cases, args)
    assert [r["status"] for r in rows] == ["timeout"] * 3
    assert [r["kind"] for r in _jsonl(tmp_path / "rows.jsonl")] == ["env", "check", "time"]


def test_tuned_record_from_rows(tmp_path):
    """Only implementations whose check passed are ranked; the record file merges per device."""
    env = dict(kind="env", status="ok", platform="gpu", device="NVIDIA H200")
    base = dict(n=4096, d=4096, v=151_936, dtype="bfloat16")
    rows = [env,
            dict(kind="check", impl="chunked", status="ok", **base),
            dict(kind="check", impl="mosaic", status="ok", **base),
            dict(kind="check", impl="pallas", status="fail", **base),
            dict(kind="time", impl="chunked", mode="fwd+bwd", status="ok", ms=21.0, **base),
            dict(kind="time", impl="mosaic", mode="fwd+bwd", status="ok", ms=18.0, **base),
            dict(kind="time", impl="pallas", mode="fwd+bwd", status="ok", ms=10.0, **base),
            dict(kind="time", impl="mosaic:64x128x64x3", mode="fwd+bwd", status="ok", ms=1.0,
                 **base)]
    path = tmp_path / "tuned.json"
    rec = bench.write_tuned(rows, str(path), "fwd+bwd")
    assert rec["order"] == ["mosaic", "chunked"] and rec["shape"] == [4096, 4096, 151_936]
    bench.write_tuned([{**env, "device": "NVIDIA H100"}] + rows[1:], str(path), "fwd+bwd")
    assert set(json.loads(path.read_text())["records"]) == {
        "gpu|NVIDIA H200|bfloat16", "gpu|NVIDIA H100|bfloat16"}
    assert bench.write_tuned(rows[:1], str(tmp_path / "none.json"), "fwd+bwd") is None


def test_impl_names_and_inputs():
    assert bench.parse_impl("mosaic:64x256x64x3") == ("mosaic", dict(
        mosaic_fwd_block_n=64, mosaic_fwd_block_v=256, mosaic_fwd_block_k=64, mosaic_fwd_stages=3))
    assert bench.fused_head_kwargs("fused_head:256xVxbf16", 1000) == dict(
        chunk_tokens=256, chunk_vocab=1000, dw_accum_dtype="bfloat16")
    assert bench.fused_head_kwargs("fused_head:autox96xf32", 1000) == dict(
        chunk_vocab=96, dw_accum_dtype="float32")
    assert bench.fused_head_kwargs("fused_head", 1000) == {}
    assert bench.make_config({}, "fused_head:8xVxauto") == bench.LogprobConfig()
    for bad in ("triton", "chunked:64x64x64x2", "mosaic:64x64", "fused_head:256xV",
                "fused_head:0xVxbf16", "fused_head:256xWxbf16", "fused_head:256xVxfp8"):
        with pytest.raises(ValueError):
            bench.parse_impl(bad)
    host = bench.host_inputs(16, 64, 500, "bfloat16", 4.0, 3)
    assert host["w"].dtype.name == "bfloat16" and host["h"].dtype.name == "bfloat16"
    z = np.asarray(host["h"], np.float32) @ np.asarray(host["w"], np.float32)
    assert 3.0 < z.std() < 5.0     # realistic logits: std ~ logit_std
    assert host["t"].max() < 500 and host["t"].dtype == np.int32


def _suite_kernel_args(small: bool) -> list[str]:
    """The benchmarks/kernels.py arguments gpu_suite.sh passes (SMALL=1 or full), $VARS expanded."""
    text = SUITE.read_text()
    start = text.index("export JAX_PLATFORMS=cpu")        # the SMALL / full settings block
    block = text[start:text.index("\nfi\n", start)]
    small_part, full_part = block.split("\nelse\n")
    part = small_part if small else full_part
    env = dict(re.findall(r"^\s*([A-Z_]+)=([^\s(]+)$", part, re.M), B_KERNELS="270")
    body = re.search(r"KERNEL_ARGS=\((.*?)\)\n", part, re.S).group(1)
    body = re.sub(r"\$\(\((.*?)\)\)", lambda m: str(eval(re.sub(r"\$?([A-Z_]+)",
                                                                    lambda v: env[v.group(1)], m.group(1)))), body)
    body = re.sub(r"\$([A-Z_]+)", lambda m: env[m.group(1)], body)
    return body.split()


@pytest.mark.parametrize("small", [True, False])
def test_suite_kernel_plan(small):
    """The suite's kernel arguments parse (every impl name, the checked subset); the plan times a
    fused head forward+backward only, checks just --check-impls, and orders cases as --impls."""
    args = bench.parse_args(_suite_kernel_args(small))
    cases = bench.plan(args, bench.resolve_shape(args))
    impls = args.impls.split(",")
    assert any(i.startswith("fused_head:") for i in impls)
    checked = impls if args.check_impls is None else args.check_impls.split(",")
    assert [c.impl for c in cases if c.kind == "check"] == [i for i in impls if i in checked]
    timed = [(c.impl, c.mode) for c in cases if c.kind == "time"]
    assert all(m == "fwd+bwd" for i, m in timed if i.startswith("fused_head"))
    assert [i for i, _ in timed] == sorted((i for i, _ in timed), key=impls.index)
    if not small:
        assert args.peak_tflops == 790 and (args.n, args.d, args.v) == ("4096", 4096, 151_936)
        assert {"chunked", "mosaic", "fused_head:256xVxbf16"} <= set(checked)
    narrowed = bench.parse_args(["--small", "--impls", "chunked", "--check-impls", "mosaic,chunked"])
    assert [c.kind for c in bench.plan(narrowed, bench.resolve_shape(narrowed))
            if c.impl] == ["check", "time", "time"]


def test_fused_head_variant_reaches_the_op(monkeypatch):
    """A fused_head:CxTxACC case runs sapo_loss_fused_forward with that chunking (check and time)."""
    from hopchain_jax.kernels import fused_head
    seen = []
    real = fused_head.sapo_loss_fused_forward

    def spy(*a, **kw):
        seen.append({k: kw.get(k) for k in ("chunk_tokens", "chunk_vocab", "dw_accum_dtype")})
        return real(*a, **kw)
    monkeypatch.setattr(fused_head, "sapo_loss_fused_forward", spy)
    common = dict(impl="fused_head:16xVxf32", n=32, d=32, v=300,
                  opts=dict(cfg=dict(chunk_v=128), logit_std=4.0, seed=0, iters=1))
    row = bench.run_case(bench.Case("check", **common))
    assert row["status"] == "ok", row
    row = bench.run_case(bench.Case("time", mode="fwd+bwd", **common))
    assert row["status"] == "ok", row
    assert seen and all(s == dict(chunk_tokens=16, chunk_vocab=300, dw_accum_dtype="float32")
                        for s in seen)


def test_goal_fields():
    """x floor and the extra memory (peak minus outputs, over the naive float32 logits)."""
    base = dict(kind="time", mode="fwd+bwd", n=4096, v=151_936, floor_ms=20.0)
    naive = 4 * 4096 * 151_936
    ok = bench.goal_fields(dict(base, ms=24.0, peak_bytes=int(0.05 * naive) + 10**9,
                                output_bytes=10**9))
    assert ok["x_floor"] == pytest.approx(1.2) and ok["extra_vs_naive"] == pytest.approx(0.05)
    assert ok["goal_speed"] and ok["goal_memory"] and ok["goal_met"]
    slow = bench.goal_fields(dict(base, ms=26.0, peak_bytes=int(0.2 * naive), output_bytes=0))
    assert not slow["goal_speed"] and not slow["goal_memory"] and not slow["goal_met"]
    assert bench.goal_cell({**base, **slow}) == "speed missed; memory missed"
    unknown = bench.goal_fields(dict(base, ms=10.0))         # no memory_stats(), no temp bytes
    assert unknown["goal_memory"] is None and unknown["goal_met"] is False
    assert bench.goal_cell({**base, **unknown}) == "memory not measured"
    # no exact peak (CPU; or the autotuner's peak at compile time): XLA's temp bytes decide
    cpu = bench.goal_fields(dict(base, ms=10.0, temp_bytes=int(0.08 * naive)))
    assert cpu["goal_memory_from"] == "xla_temp" and cpu["goal_met"] is True
    bound = bench.goal_fields(dict(base, ms=10.0, peak_bytes=naive, peak_exact=False,
                                   temp_bytes=int(0.2 * naive)))
    assert bound["goal_memory_from"] == "xla_temp" and bound["goal_memory"] is False
    assert bound["extra_vs_naive"] == pytest.approx(1.0)
    assert "goal_met" not in bench.goal_fields(dict(base, mode="fwd", ms=10.0))
    rows = [dict(kind="check", impl="a", status="ok"), dict(kind="check", impl="b", status="fail"),
            dict(base, impl="a", status="ok", ms=24.0, **ok), dict(base, impl="b", status="ok",
                                                                   ms=21.0, **{**ok, "x_floor": 1.05})]
    line = bench.goal_summary(rows, 790)
    assert "met by a;" in line and "fastest b at 1.05x" in line     # b is faster but failed its check

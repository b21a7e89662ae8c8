"""SAPO/SFT training: updates, NaN guard, frozen tower, exact kill-and-resume, two-process training."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest
from flax import nnx

from hopchain_jax.configs.models import tiny
from hopchain_jax.models.qwen_vl import QwenVL
from hopchain_jax.models.sharding import make_mesh, shard_model
from hopchain_jax.rl.config import TrainConfig
from hopchain_jax.rl.sequences import Prompt, pack
from hopchain_jax.rl.update import Updater

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(name="test", model="tiny", synth_images=8, prompts_per_step=2, group_size=2, minibatches=2,
            max_new_tokens=8, max_pixels=12544, steps=4, save_every=1, lr=3e-3, warmup_steps=1)


def _tiny_updater(cfg: TrainConfig):
    """An Updater of the tiny model (512-token vocabulary) on the (2, 2, 2) mesh, and its config."""
    mc = tiny(vocab_size=512)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    return Updater(shard_model(QwenVL(mc, rngs=nnx.Rngs(0)), mesh), cfg, mesh), mc


def _updater(cfg: TrainConfig):
    up, mc = _tiny_updater(cfg)
    rng = np.random.default_rng(0)
    grid = np.array([[1, 4, 6]])
    img = [1, 5, mc.vision_start_token_id] + [mc.image_token_id] * 6 + [mc.vision_end_token_id, 9]
    prompts = [Prompt(np.array(img), rng.normal(size=(24, mc.vision.patch_dim)).astype(np.float32), grid),
               Prompt(np.array([1, 7, 8, 9, 10]), None, None)]
    rows = [0, 0, 0, 0, 1, 1, 1, 1]
    responses = [list(rng.integers(10, 500, size=rng.integers(3, 12))) for _ in rows]
    return up, up.put_batch(pack(prompts, rows, responses, mc, length_bucket=16).arrays())


def _leaves(params, prefix):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)
            if jax.tree_util.keystr(p).startswith(prefix)}


def test_sapo_step_nan_guard_and_frozen_vision():
    up, batch = _updater(TrainConfig(freeze_vision=True, prompts_per_step=2, group_size=4))
    old, _ = up.score(batch)
    assert not _leaves(up.params, "['visual']")  # the frozen tower is not among the trained parameters
    before_vis, before_lm = _leaves(up.frozen, "['visual']"), _leaves(up.params, "['language_model']")
    assert before_vis
    m = up.rl_step(batch, old, np.array([1, -1, .5, -.5, 0, 0, 0, 0], np.float32))
    assert float(m["skipped"]) == 0 and float(m["gate_weight_mean"]) == pytest.approx(1.0)
    # on-policy SAPO objective = mean over sequences of f(1) * A = (2 / tau) * A (SPEC §4)
    expect = -np.mean([2 * 1, 2 / 1.05 * -1, 2 * .5, 2 / 1.05 * -.5, 0, 0, 0, 0])
    assert float(m["loss"]) == pytest.approx(expect, rel=1e-5)
    after_vis, after_lm = _leaves(up.frozen, "['visual']"), _leaves(up.params, "['language_model']")
    assert all(np.array_equal(before_vis[k], after_vis[k]) for k in before_vis)  # frozen tower untouched
    assert any(not np.array_equal(before_lm[k], after_lm[k]) for k in before_lm)
    snapshot = {**after_vis, **after_lm}
    m = up.rl_step(batch, old, np.full(8, np.nan, np.float32))
    assert float(m["skipped"]) == 1.0
    now = {**_leaves(up.frozen, "['visual']"), **_leaves(up.params, "['language_model']")}
    assert all(np.array_equal(snapshot[k], now[k]) for k in snapshot)  # a non-finite step changes nothing


def test_lm_head_on_the_loss_columns_only_equals_every_column():
    """pack's loss_cols let the head run on the response positions only: same log-probs, entropies, loss and
    gradients as the head over every position (tested on the (2, 2, 2) mesh)."""
    up, batch = _updater(TrainConfig(prompts_per_step=2, group_size=4))
    cols = batch["loss_cols"]
    assert cols is not None and cols.shape[-1] < batch["input_ids"].shape[-1]
    every = dict(batch, loss_cols=None)
    (a, ea), (b, eb) = up.score(batch), up.score(every)
    assert np.abs(np.asarray(a)).sum() > 0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ea), np.asarray(eb), atol=1e-5)
    adv = jax.numpy.asarray(np.array([1, -1, .5, -.5, 1, 0, -1, 0], np.float32))
    old = a + 0.05 * batch["loss_mask"][0]   # off-policy: r != 1, so the gate's weights matter
    (la, _, ga), (lb, _, gb) = (jax.jit(lambda p, bt: up._accumulate(up._rl_loss, p, up.frozen, bt, old, adv, None))(
        up.params, bt) for bt in (batch, every))
    assert float(la) == pytest.approx(float(lb), rel=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_training_loss_and_gradients_read_each_rows_own_image_as_a_plain_jax_reference_does():
    """The training path (packed rows of several images, flash attention, the LM head on the loss columns,
    the (2, 2, 2) mesh) against a plain one: each row scored alone, and the SFT gradient of every parameter,
    vision tower included, against the reference attention with a full log-softmax. A row's loss must change
    when its image is swapped (the image reaches the loss)."""
    up, mc = _tiny_updater(TrainConfig(prompts_per_step=2, group_size=4))
    rng = np.random.default_rng(1)
    grid = np.array([[1, 4, 6]])
    ids = np.array([1, 5, mc.vision_start_token_id] + [mc.image_token_id] * 6 + [mc.vision_end_token_id, 9])
    images = [rng.normal(size=(24, mc.vision.patch_dim)).astype(np.float32) for _ in range(2)]
    prompts = [Prompt(ids, images[0], grid), Prompt(ids, images[1], grid), Prompt(np.array([1, 7, 8, 9, 10]), None, None),
               Prompt(ids, images[1], grid)]
    rows = [0, 1, 2, 0, 1, 2, 0, 1]
    responses = [list(rng.integers(10, 500, size=rng.integers(3, 12))) for _ in rows]

    def score(prompt_of_row, resp):
        batch = pack(prompts, prompt_of_row, resp, mc, length_bucket=16, min_length=32, num_patches=64)
        return np.asarray(up.score(up.put_batch(batch.arrays()))[0])
    packed = score(rows, responses)
    for r in (0, 7):
        np.testing.assert_allclose(packed[r], score([rows[r]], [responses[r]])[0], atol=2e-5)
    swapped = score([3], [responses[0]])[0]   # row 0's tokens with prompt 1's image
    assert np.abs(swapped - packed[0]).sum() > 1e-3

    batch = up.put_batch(pack(prompts, rows, responses, mc, length_bucket=16).arrays())
    micro = jax.tree.map(lambda x: x[0], batch)
    model = up.model()
    model.attention_impl = "reference"
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def plain_loss(p):
        m = nnx.merge(graphdef, p, rest)
        out = m(micro["input_ids"], micro["position_ids"], micro["attention_mask"],
                image_features=m.encode_images(micro["vision"]), image_index=micro["image_index"], return_logits=True)
        # targets off the loss positions may be ids past this 512-token vocabulary (the image pads): clipped
        logp = jax.numpy.take_along_axis(jax.nn.log_softmax(out.logits.astype(np.float32), -1),
                                         micro["targets"][..., None], -1, mode="clip")[..., 0]
        mask = micro["loss_mask"]
        return -jax.numpy.where(mask, logp, 0.0).sum() / mask.sum()
    want_loss, want = jax.jit(jax.value_and_grad(plain_loss))(params)
    got_loss, got = jax.jit(jax.value_and_grad(lambda p: up._sft_loss(p, up.frozen, micro)[0]))(up.params)
    assert float(got_loss) == pytest.approx(float(want_loss), rel=1e-5)
    want, got = dict(nnx.to_flat_state(want)), dict(nnx.to_flat_state(got))
    assert set(got) == set(want) and any(path[0] == "visual" for path in got)
    for path in want:
        w, g = np.asarray(want[path][...]), np.asarray(got[path][...])
        assert np.abs(w).max() > 0, path
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-6 * np.abs(w).max(), err_msg=str(path))


def test_kl_penalty_and_sft_step():
    # a registered loss other than SAPO, chosen by config alone (rl/losses.py; its numbers: test_losses.py)
    up, batch = _updater(TrainConfig(kl_coef=0.1, prompts_per_step=2, group_size=4, loss="grpo"))
    old, _ = up.score(batch)
    m = up.rl_step(batch, old, np.zeros(8, np.float32), up.ref_score(batch))
    assert "clip_fraction" in m and "gate_weight_mean" not in m
    assert float(m["kl"]) == pytest.approx(0.0, abs=1e-6)  # the policy starts at the reference
    first = float(up.sft_step(batch)["loss"])
    for _ in range(3):
        last = float(up.sft_step(batch)["loss"])
    assert last < first
    # The reference is its own copy (the steps donate the live weights): it still scores, and the
    # moved policy now has a positive KL to it.
    assert all(a is not b for a, b in zip(jax.tree.leaves(up.ref_params), jax.tree.leaves(up.params)))
    m = up.rl_step(batch, old, np.zeros(8, np.float32), up.ref_score(batch))
    assert float(m["kl"]) > 0.0 and np.isfinite(float(m["entropy_mean"]))


def test_pack_refuses_a_response_holding_a_vision_id():
    mc = tiny()
    assert len(mc.vision_token_ids) == 5
    prompts = [Prompt(np.array([1, 7, 8, 9, 10]), None, None)]
    assert pack(prompts, [0], [[11, 12, 2]], mc).num_tokens == 8
    for vid in mc.vision_token_ids:
        with pytest.raises(ValueError, match="rows \\[1\\] hold vision placeholder ids"):
            pack(prompts, [0, 0], [[11, 12], [11, vid, 12]], mc)


def _run(args, out, env=None, **kw):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), *args, "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, env=env, **kw)


def _config(tmp_path, **kw):
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.json"
    path.write_text(json.dumps({**FAST, **kw}))
    return str(path)


def _log(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kill_after_step_k_and_resume_matches_uninterrupted(tmp_path):
    from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis
    # one step shape (the natural ones: 256 or 512 tokens, 128 or 256 patches): one compile per run
    cfg = _config(tmp_path, mode="sft", steps=3, out_dir=str(tmp_path / "unused"), pad_to_tokens=512,
                  pad_to_patches=256)
    data = tmp_path / "data"  # both runs read the same synthesized dataset
    train_cfg = TrainConfig.from_json(json.loads(Path(cfg).read_text()))
    run_synthesis(data, SynthConfig(seed=train_cfg.seed, num_images=train_cfg.synth_images), workers=1, progress=False)
    args = ["--config", cfg, "--data", f"{data}:1.0"]
    ref = _run(args, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "train.py"), *args, "--out", str(killed),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (killed / "checkpoints" / "1" / "commit_success.txt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "1").exists()
    resumed = _run(args + ["--resume"], killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stderr
    a, b = _log(tmp_path / "ref"), _log(killed)
    assert [m["step"] for m in b] == [1, 2, 3]
    assert [m["data"] for m in a] == [m["data"] for m in b]  # same data order
    assert [m["loss"] for m in a] == [m["loss"] for m in b]  # same losses, bit for bit
    assert len({m["data"] for m in a}) == 3


@pytest.mark.slow
def test_rl_resume_in_process_repeats_the_same_rollouts(tmp_path):
    from hopchain_jax.rl.trainer import Trainer
    # two decode slots for the 4 sequences of a step: rollouts refill slots as sequences end
    base = TrainConfig.from_json({**FAST, "mode": "rl", "steps": 2, "out_dir": str(tmp_path / "a"),
                                  "rollout_slots": 2, "pad_to_tokens": 256, "pad_to_patches": 256})
    straight = Trainer(base, progress=False)
    full = straight.train()
    straight.close()
    # the two steps' natural shapes differ (256 then 128 tokens and patches); padded, they compile once
    assert straight.updater._rl_step._cache_size() == 1 and straight.updater._score._cache_size() == 1
    # as if the run had died before checkpoint 2 committed: resume from checkpoint 1 of the same run
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "2")
    again = Trainer(base, progress=False)
    assert again.restore() and again.step == 1
    tail = again.train()
    again.close()
    for key in ("data", "rollout", "loss", "reward_mean", "zero_variance_groups"):
        assert tail[0][key] == full[1][key], key
    # the restored optimizer state too: step 2's update lands on the same weights, bit for bit
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(straight.updater.params),
                                                    jax.tree.leaves(again.updater.params)))
    assert all(m["rollout_prefill_rows"] >= 2 and 0 <= m["rollout_wasted_fraction"] < 1 for m in full)
    hf = straight.export_hf()  # the trained weights load back as a checkpoint (e.g. to start RL after SFT)
    from hopchain_jax.models.checkpoint import load_pretrained
    reloaded = load_pretrained(hf, progress=False)
    assert reloaded.config.arch == "qwen2_5_vl" and (hf / "tokenizer.json").exists()
    assert {"reward_mean", "accuracy", "zero_variance_groups", "response_length", "entropy", "gate_weight_mean",
            "logprob_gap", "tokens_per_s", "mfu"} <= set(full[0])
    assert (tmp_path / "a" / "tensorboard").exists()


@pytest.mark.slow
def test_two_local_processes_train_together(tmp_path):
    """Two JAX processes (2 CPU devices each) train on one 4-device mesh: multi-host rollouts from weights
    resharded to the replicated rollout layout (one decode slot per device), then the sharded SAPO
    updates. (SFT shares every multi-process piece but the rollouts; its step is covered in-process.)"""
    # padded to one shape, both minibatches share one compiled update (as in the resume test)
    cfg = _config(tmp_path, mode="rl", steps=1, out_dir=str(tmp_path / "mp"), rollout_mesh=[-1, 1, 1],
                  pad_to_tokens=256, pad_to_patches=256)
    port = portpicker.pick_unused_port()
    env = {**os.environ, "XLA_FLAGS": ""}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "launch" / "train.py"), "--config", cfg, "--no-progress",
                               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
                               "--local-devices", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    reports = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(r["process"] for r in reports) == [0, 1]
    assert reports[0]["losses"] == reports[1]["losses"] and all(np.isfinite(reports[0]["losses"]))
    assert (tmp_path / "mp" / "metrics.jsonl").exists()  # written by process 0 only


def _bias_towards(params, token: int):
    """Weights whose every next token is `token` unless it is masked: the residual stream carries a constant 1
    on feature 0 (every embedding's column 0), the final norm passes only that feature, and the LM head maps
    it to `token` with weight 1000."""
    def edit(path, x):
        key = jax.tree_util.keystr(path)
        if key.startswith("['language_model']['embed_tokens']"):
            return jax.device_put(x.at[:, 0].set(1.0), x.sharding)
        if key.startswith("['language_model']['norm']"):
            return jax.device_put(x.at[1:].set(0.0), x.sharding)
        if key.startswith("['lm_head']"):
            return jax.device_put(x.at[0, token].set(1000.0), x.sharding)
        return x
    return jax.tree_util.tree_map_with_path(edit, params)


@pytest.mark.slow
def test_rl_on_a_model_biased_to_image_pad_with_heldout_eval_export_and_hopchain_eval(tmp_path):
    """The README's RL crash: the sampler emitted <|image_pad|> and packing read it as an image. A model
    biased to emit it now trains two RL steps (the engine never samples vision ids; a response that holds
    one anyway is dropped and counted); the held-out split is never trained on and is evaluated before and
    after; the exported checkpoint keeps the training image size, and `hopchain eval` runs on it."""
    from hopchain_jax.cli import main
    from hopchain_jax.infer.engine import InferenceEngine, Request, SamplingParams
    from hopchain_jax.models.image_processor import from_pretrained_dir
    from hopchain_jax.models.tokenizer import IMAGE_PAD_ID
    from hopchain_jax.rl.trainer import Trainer
    cfg = TrainConfig.from_json({**FAST, "mode": "rl", "steps": 2, "out_dir": str(tmp_path / "run"),
                                 "pad_to_tokens": 256, "pad_to_patches": 256, "eval_every": 2, "eval_items": 3,
                                 "heldout_fraction": 0.25})
    t = Trainer(cfg, progress=False)
    t.updater.params = _bias_towards(t.updater.params, IMAGE_PAD_ID)
    vision = set(t.model_config.vision_token_ids)
    assert {IMAGE_PAD_ID, 151652, 151653, 151654, 151656} == vision
    prompt = t.eval_prompts[0]
    request = Request(prompt["prompt_ids"], prompt["pixel_values"], prompt["image_grid_thw"])
    # the bias works: without the mask every sampled token is <|image_pad|>
    unmasked = InferenceEngine(t.updater.model(), t.tokenizer, t.mesh, max_slots=2, suppressed_ids=())
    raw = unmasked.generate([request], SamplingParams(n=2, max_new_tokens=4, seed=1))
    assert all(o.token_ids == [IMAGE_PAD_ID] * 4 for o in raw)
    # one response of step 1 holds a vision id anyway (as from a sampler without the mask): dropped, counted
    real_generate, calls = t.engine.generate, []

    def generate(requests, params=SamplingParams()):
        outs = real_generate(requests, params)
        calls.append(params.temperature)
        if len(calls) == 2:   # call 1 is the step-0 evaluation
            outs[0].token_ids = outs[0].token_ids[:1] + [IMAGE_PAD_ID] + outs[0].token_ids[1:]
        for o in outs[1:] if len(calls) == 2 else outs:
            assert not vision.intersection(o.token_ids), o.token_ids   # the engine never samples them
        return outs
    t.engine.generate = generate
    history = t.train()
    assert [m["dropped_responses"] for m in history] == [1.0, 0.0]
    assert all(np.isfinite(m["loss"]) and 0 <= m["truncation_rate"] <= 1 for m in history)
    # held-out: whole images never trained on, evaluated at steps 0 and 2 (logged beside the reward)
    held = json.loads((tmp_path / "run" / "heldout.json").read_text())
    held_images = set(held["sources"][0]["heldout_images"])
    (train_source, _), = t.train_sources
    assert held_images and not held_images & set(train_source.image_hashes)
    assert len(held["eval_ids"]) == 3 and [e["step"] for e in t.eval_history] == [0, 2]
    logged = _log(tmp_path / "run")
    assert [m["step"] for m in logged if "eval_accuracy" in m] == [0, 2]
    assert "reward_mean" in logged[-1] and 0 <= logged[-1]["eval_accuracy"] <= 1
    # the export keeps the training image size; `hopchain eval` reads it and scores the checkpoint
    hf = t.export_hf()
    t.close()
    assert from_pretrained_dir(hf).max_pixels == FAST["max_pixels"]
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == list(t.model_config.eos_ids)
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "run" / "data"), "--model", str(hf), "--out", str(out), "--greedy",
                 "--limit", "2", "--max-tokens", "8", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["items"] == 2 and summary["overall"]["truncated"] == 1.0   # 8 tokens, no EOS

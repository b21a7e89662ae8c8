"""`hopchain synth --images` end to end with real components: the stage-1/3/4 VLM behind a live
OpenAI-compatible server (our `hopchain serve` app, answering from the procedural oracle through
tests/oracle_vlm.py), a tiny random SAM3 checkpoint for stage 2, and a tiny random Qwen-VL checkpoint
on our JAX engine as the calibration model."""
from __future__ import annotations

import json

import pytest

from hf_tiny import save_tiny_sam3
from engine_tiny import live_server, tiny_checkpoint
from oracle_vlm import OracleVLM, write_scene_photos

pytest.importorskip("transformers.models.sam3")


@pytest.fixture()
def oracle_server(tmp_path):
    from hopchain_jax.serve.app import build_app
    scenes = write_scene_photos(tmp_path / "photos", (0, 1))
    vlm = OracleVLM(scenes, model="oracle", wrong_solver=lambda q: False)
    app = build_app(vlm, batch_window_ms=2)
    with live_server(app) as url:
        yield f"oracle@{url}", vlm, tmp_path / "photos"


@pytest.mark.slow
def test_synth_images_command_with_a_served_vlm_and_tiny_sam3(oracle_server, tmp_path, tmp_path_factory, capsys):
    """The user's command: stages 1 and 3 over HTTP, SAM3 from a checkpoint directory, the calibrator
    on our engine. A random SAM3 finds few, arbitrary objects, so the writer finds no chain over them:
    every drafted query is rejected with its reason, and the run still ends cleanly."""
    from hopchain_jax.cli import main
    spec, vlm, photos = oracle_server
    sam3 = save_tiny_sam3(tmp_path / "sam3")
    ckpt, _ = tiny_checkpoint(tmp_path_factory)
    out = tmp_path / "out"
    argv = ["synth", "--images", str(photos), "--out", str(out), "--vlm", spec, "--sam3", str(sam3),
            "--sam3-score", "0", "--calibrator", str(ckpt), "--engine-max-pixels", "12544", "--max-tokens", "8",
            "--combos-per-image", "6", "--no-progress", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    st = summary["stages"]
    assert st["categories"] == {"in": 2, "accepted": 2, "rejected": {}}
    assert st["segmentation"]["in"] == 2 and summary["instances_kept"] >= 3   # tiny SAM3 at threshold 0
    assert summary["instances_dropped"]["duplicate"] > 0
    assert st["queries"]["in"] >= st["segmentation"]["accepted"] > 0
    assert sum(st["queries"]["rejected"].values()) == st["queries"]["in"] - st["queries"]["accepted"]
    # over HTTP: the probe, then each stage batched (every solver sample its own request)
    assert vlm.requests == 1 + 2 + st["queries"]["in"] + 4 * st["queries"]["accepted"]
    assert (out / "vlm-cache").is_dir() and any((out / "vlm-cache").rglob("*.json"))  # answers cached on disk
    calls = vlm.calls
    assert main(argv) == 0                                # a rerun finds every shard done and calls no model
    assert json.loads(capsys.readouterr().out)["shards_resumed"] == 1 and vlm.calls == calls


@pytest.mark.slow
def test_served_vlm_solvers_and_an_engine_calibrator_keep_verified_queries(oracle_server, tmp_path,
                                                                            tmp_path_factory):
    """Stages 1, 3 and 4 through the official openai client against the live server, the oracle's
    segmentation for stage 2, and the tiny Qwen-VL checkpoint on our JAX engine as the weaker model."""
    from hopchain_jax.data.store import HopChainDataset
    from hopchain_jax.vlm.categories import VLMCategoryIdentifier
    from hopchain_jax.vlm.engine_backend import EngineChatBackend
    from hopchain_jax.vlm.openai_backend import OpenAIChatBackend
    from hopchain_jax.vlm.photo_pipeline import PhotoStages, PhotoSynthConfig, run_photo_synthesis
    from hopchain_jax.vlm.query_writer import VLMQueryWriter
    from hopchain_jax.vlm.solvers import AgreementVerifier
    from oracle_vlm import OracleSceneSegmenter
    spec, vlm, photos = oracle_server
    model, url = spec.split("@", 1)
    http = OpenAIChatBackend(url, model, cache_dir=tmp_path / "cache")
    weak = EngineChatBackend(tiny_checkpoint(tmp_path_factory)[0], max_pixels=12544, name="tiny")
    stages = PhotoStages(VLMCategoryIdentifier(http), OracleSceneSegmenter(vlm.scenes),
                         VLMQueryWriter(http, combos_per_image=8, max_tokens=8),
                         AgreementVerifier([http], calibrator=weak, max_tokens=8))
    summary = run_photo_synthesis(tmp_path / "out", PhotoSynthConfig(images=str(photos)), stages, progress=False)
    st = summary["stages"]
    assert st["queries"]["accepted"] > 0 and st["verification"]["accepted"] > 0
    records = list(HopChainDataset(tmp_path / "out").records())
    assert len(records) == st["verification"]["accepted"]
    for rec in records:
        assert rec["verification"]["agreeing"] == 4
        cal = rec["verification"]["calibration"]
        assert cal["model"] == "tiny" and cal["samples"] == 8 and cal["correct"] < 8   # random: never all right
        assert vlm.book[rec["question"]] == rec["answer"]


def test_the_command_exits_nonzero_while_items_wait_and_stops_on_an_unreachable_endpoint(tmp_path, monkeypatch,
                                                                                         capsys):
    """Exit status and console of `hopchain synth --images`: 1 with the rerun instruction while items wait for
    the model (photo_pipeline's "pending"); 2, before any image, when the probe cannot reach the endpoint."""
    import portpicker

    from hopchain_jax.cli import main
    from hopchain_jax.vlm import photo_pipeline, sam3
    (tmp_path / "sam3").mkdir()
    (tmp_path / "sam3" / "config.json").write_text("{}")
    monkeypatch.setattr(sam3.Sam3Segmenter, "from_pretrained", classmethod(lambda cls, *a, **k: object()))
    write_scene_photos(tmp_path / "photos", (0,))
    dead = f"m@http://127.0.0.1:{portpicker.pick_unused_port()}/v1"
    argv = ["synth", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--vlm", dead,
            "--sam3", str(tmp_path / "sam3"), "--no-progress"]
    real = photo_pipeline.run_photo_synthesis

    def waiting(root, config, stages, progress=True):
        summary = {"out": str(root), "shards": 1, "shards_resumed": 0, "partial_shards_removed": 0,
                   "images_in_folder": 1, "unreadable": {}, "instances_kept": 0, "instances_dropped": {},
                   "stages": {s: {"in": 0, "accepted": 0, "rejected": {}} for s in photo_pipeline.STAGES},
                   "records": 0, "this_run": {"shards": 0, "records": 0, "seconds": 0.0},
                   "pending": {"shard": 0, "shards_left": 1, "items": 3, "by_stage": {"queries": 3},
                               "first": {"stage": "queries", "item": "scene-000.png [i0,i1,i2]",
                                         "reason": "model error: APIConnectionError: Connection refused"}}}
        return summary
    monkeypatch.setattr(photo_pipeline, "run_photo_synthesis", waiting)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "3 items could not reach the model: rerun the same command to retry" in out + err
    monkeypatch.setattr(photo_pipeline, "run_photo_synthesis", real)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "start the server or fix the URL" in err
    assert not list((tmp_path / "out" / "shards").glob("shard-*"))

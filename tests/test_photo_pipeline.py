"""`hopchain synth --images`: the four model-driven stages over a photo folder, with a scripted VLM that
answers from the procedural oracle (tests/oracle_vlm.py) standing in for a competent model."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.synth.record import validate_record
from hopchain_jax.vlm.categories import VLMCategoryIdentifier
from hopchain_jax.vlm.photo_pipeline import (PhotoStages, PhotoSynthConfig, format_photo_summary,
                                             prepare_photo_output, reason_key, run_photo_synthesis)
from hopchain_jax.vlm.query_writer import VLMQueryWriter, crop, instance_combinations
from hopchain_jax.vlm.solvers import AgreementVerifier

from oracle_vlm import OracleSceneSegmenter, OracleVLM, pixels_sha, write_scene_photos

SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    scenes = write_scene_photos(folder, SEEDS)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 30)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "tiny.png")
    return folder, scenes, [list(scenes)[1]]  # the second scene's stage-1 answer is prose


def make_stages(scenes, blind, calibrate=True):
    book: dict = {}
    vlm = OracleVLM(scenes, book=book, blind=blind)
    calibrator = OracleVLM(scenes, model="weak-vlm", book=book) if calibrate else None
    stages = PhotoStages(VLMCategoryIdentifier(vlm), OracleSceneSegmenter(scenes), VLMQueryWriter(vlm, combos_per_image=8),
                         AgreementVerifier([vlm], calibrator=calibrator))
    return stages, vlm, calibrator


def config(folder, **kw):
    return PhotoSynthConfig(images=str(folder), images_per_shard=2, models={"vlm": "oracle"}, **kw)


def test_four_stages_count_every_item_and_keep_only_verified_queries(photos, tmp_path):
    folder, scenes, blind = photos
    stages, vlm, calibrator = make_stages(scenes, blind)
    summary = run_photo_synthesis(tmp_path / "out", config(folder), stages, progress=False)
    st = summary["stages"]
    # unreadable files never reach a model; they are listed with their reason
    assert set(summary["unreadable"]) == {"broken.jpg", "tiny.png"}
    assert st["categories"] == {"in": 5, "accepted": 4, "rejected": {"no JSON list of category names in the output": 1}}
    assert st["segmentation"]["in"] == 4 and st["segmentation"]["accepted"] == 4
    assert st["queries"]["in"] == 4 * 8
    assert 0 < st["queries"]["accepted"] < st["queries"]["in"]
    assert sum(st["queries"]["rejected"].values()) == st["queries"]["in"] - st["queries"]["accepted"]
    assert st["queries"]["rejected"]["the question refers to things the solver does not see"] > 0
    assert st["queries"]["rejected"]["no JSON object with a question in the output"] > 0
    assert st["verification"]["in"] == st["queries"]["accepted"]
    rejected4 = st["verification"]["rejected"]
    assert set(rejected4) <= {"solvers disagree", "too easy"}
    # one batched call per stage and shard (3 shards of 2 photos), not one per item
    assert vlm.calls <= 3 * 4 and calibrator.calls <= 3
    ds = HopChainDataset(tmp_path / "out")
    records = list(ds.records())
    assert len(records) == summary["records"] == st["verification"]["accepted"] > 0
    for rec in records:
        assert validate_record(rec, check_program=False) == []
        assert rec["program"] is None and rec["variant"] == "full"
        v = rec["verification"]
        assert v["method"] == "agreement" and v["agreeing"] == v["samples"] == 4
        assert 0 < v["calibration"]["correct"] < v["calibration"]["samples"] == 8
        assert vlm.book[rec["question"]] == rec["answer"]
        assert pixels_sha(ds.image_of(rec)) in scenes      # the stored image is the photo, pixel for pixel
        assert rec["provenance"]["source"].startswith("scene-")
        assert not vlm.wrong_solver(rec["question"]) and not calibrator.easy(rec["question"])
    text = format_photo_summary(summary)
    for words in ("stage 1 categories: 5 images in, 4 accepted", "stage 2 segmentation", "stage 3 queries",
                  "stage 4 verification", "broken.jpg", "instances kept"):
        assert words in text


def test_rerun_resumes_and_a_changed_config_is_refused(photos, tmp_path):
    folder, scenes, blind = photos
    out = tmp_path / "out"
    stages, vlm, _ = make_stages(scenes, blind)
    first = run_photo_synthesis(out, config(folder), stages, progress=False)
    calls = vlm.calls
    again = run_photo_synthesis(out, config(folder), stages, progress=False)
    assert again["shards_resumed"] == 3 and again["this_run"]["records"] == 0 and vlm.calls == calls
    assert again["records"] == first["records"]
    with pytest.raises(ValueError, match="different config"):
        run_photo_synthesis(out, config(folder, max_image_side=512), stages, progress=False)


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from oracle_vlm import OracleSceneSegmenter, OracleVLM, write_scene_photos
    from test_photo_pipeline import config, make_stages
    from hopchain_jax.vlm.photo_pipeline import run_photo_synthesis
    folder = Path({folder!r})
    scenes = write_scene_photos(Path({scratch!r}), {seeds!r})   # same pixels as the photos
    stages, vlm, _ = make_stages(scenes, {blind!r})
    real = stages.verifier.verify_many
    shards = []
    def verify_then_die(records, images):
        shards.append(1)
        if len(shards) == 2:    # the second shard is in flight: kill -9
            os.kill(os.getpid(), signal.SIGKILL)
        return real(records, images)
    stages.verifier.verify_many = verify_then_die
    run_photo_synthesis({out!r}, config(folder), stages, progress=False)
""")


def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(photos, tmp_path):
    folder, scenes, blind = photos
    tests = str(Path(__file__).parent)
    script = KILLED_RUN.format(tests=tests, folder=str(folder), scratch=str(tmp_path / "scratch"), seeds=SEEDS,
                               blind=blind, out=str(tmp_path / "killed"))
    env = {**os.environ, "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    shards = tmp_path / "killed" / "shards"
    assert [p.name for p in shards.iterdir() if p.name.startswith("shard-")] == ["shard-00000"]
    stages, _, _ = make_stages(scenes, blind)
    resumed = run_photo_synthesis(tmp_path / "killed", config(folder), stages, progress=False)
    assert resumed["shards_resumed"] == 1
    stages, _, _ = make_stages(scenes, blind)
    clean = run_photo_synthesis(tmp_path / "clean", config(folder), stages, progress=False)
    ids = [r["id"] for r in HopChainDataset(tmp_path / "killed").records()]
    assert len(ids) == len(set(ids)) > 0
    assert sorted(ids) == sorted(r["id"] for r in HopChainDataset(tmp_path / "clean").records())
    assert resumed["stages"] == clean["stages"]


class FailingBackend:
    """Every item fails (as an endpoint returning HTTP 500 after its retries would)."""

    model = "down"

    def complete(self, requests):
        from hopchain_jax.vlm.chat import ChatResult
        return [ChatResult([], [], {}, error="InternalServerError: 500 upstream down") for _ in requests]


def test_model_errors_and_a_crashing_segmenter_are_reported_per_item(photos, tmp_path):
    folder, scenes, blind = photos
    stages, vlm, _ = make_stages(scenes, blind)
    stages.writer = VLMQueryWriter(FailingBackend())

    class Crashing(OracleSceneSegmenter):
        def segment_with_report(self, image, categories):
            if image.source.endswith("000.png"):
                raise RuntimeError("CUDA out of memory")
            seg, report = super().segment_with_report(image, categories)
            if image.source.endswith("002.png"):  # SAM3 found only two objects: the paper skips the image
                return dataclasses.replace(seg, instances=seg.instances[:2]), {"low_score": 5, "duplicate": 1}
            return seg, report

    stages.segmenter = Crashing(scenes)
    copy = tmp_path / "photos"
    shutil.copytree(folder, copy)
    prepare_photo_output(tmp_path / "out", config(copy))            # the image list is fixed here ...
    (copy / "scene-004.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)   # ... then a photo breaks
    summary = run_photo_synthesis(tmp_path / "out", config(copy), stages, progress=False)
    st = summary["stages"]
    assert st["categories"]["rejected"] == {"unreadable image": 1, "no JSON list of category names in the output": 1}
    assert st["segmentation"]["rejected"] == {"segmenter error": 1, "fewer than N instances": 1}
    assert summary["instances_dropped"]["low_score"] == 5 and summary["instances_dropped"]["duplicate"] == 1
    assert st["queries"]["in"] == 1 * 4 and st["queries"]["rejected"] == {"model error": 1 * 4}
    events = [e for p in sorted((tmp_path / "out" / "shards").glob("shard-*"))
              for e in json.loads((p / "shard.json").read_text())["events"]]
    assert any("CUDA out of memory" in e["reason"] and e["item"] == "scene-000.png" for e in events)
    assert any("500 upstream down" in e["reason"] for e in events)
    assert summary["records"] == 0


def test_reason_keys_group_reasons_that_differ_only_in_values():
    assert reason_key("hop 3 names unknown instances ['i9']") == reason_key("hop 1 names unknown instances ['i2']")
    assert reason_key("solvers disagree: 3 of 4 give the answer 5") == "solvers disagree"
    assert reason_key("fewer than 3 instances (2 found)") == "fewer than N instances"


def test_instance_sets_and_crops():
    instances = [{"id": f"i{k}", "category": "cup" if k < 5 else "dog", "bbox": [0, 0, 10, 10]} for k in range(8)]
    combos = instance_combinations(instances, 6, np.random.default_rng(0))
    assert len(combos) == len(set(combos)) == 6
    assert all(3 <= len(c) <= 6 for c in combos)
    assert all(len({instances[int(i[1:])]["category"] for i in c}) == 2 for c in combos)  # mixed first
    assert instance_combinations(instances[:2], 4, np.random.default_rng(0)) == []
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[20:40, 100:120] = 255
    piece = crop(pixels, [500, 200, 600, 400], margin=0.0, max_side=64, min_side=8)
    assert piece.shape == (20, 20, 3) and piece.min() == 255
    assert crop(pixels, [0, 0, 5, 5], margin=0.0, min_side=28).shape[:2] == (28, 28)

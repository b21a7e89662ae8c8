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
                return dataclasses.replace(seg, instances=seg.instances[:2]), {
                    "low_score": 5, "duplicate": 1, "empty_categories": ["kite"], "errors": {"mug": "ValueError: bad"}}
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
    # SAM3's categories without an instance and failing categories are not dropped instances
    assert not {"empty_categories", "errors"} & set(summary["instances_dropped"])
    assert summary["categories"] == {"without an instance": 1, "failed": 1}
    text = format_photo_summary(summary)
    assert "categories: 1 without an instance, 1 failed" in text and "mug: ValueError: bad [scene-002.png]" in text
    # each reason is printed with one real example, the model's first message verbatim
    assert "e.g. model error: InternalServerError: 500 upstream down [scene-" in text
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


class FlakyEndpoint:
    """An OracleVLM behind what OpenAIChatBackend gives the stages: successful responses cached, and while
    `down`, every third call not in the cache fails the way an endpoint that outlasts its retries does
    (ChatResult.transient). `sent`: the requests that reached the model (cache misses), by key."""

    def __init__(self, inner):
        self.inner, self.model, self.down = inner, inner.model, True
        self.cache, self.sent, self.calls = {}, [], 0

    @staticmethod
    def _key(req):
        return json.dumps([req.messages, req.n, req.temperature, req.max_tokens, req.salt], sort_keys=True)

    def complete(self, requests):
        from hopchain_jax.vlm.chat import ChatResult
        out = []
        for req in requests:
            key = self._key(req)
            if key in self.cache:
                out.append(self.cache[key])
                continue
            self.calls += 1
            if self.down and self.calls % 3 == 0:
                out.append(ChatResult([], [], {}, attempts=6, error="APIConnectionError: Connection refused",
                                      transient=True))
                continue
            self.sent.append(key)
            out.append(self.cache.setdefault(key, self.inner.complete([req])[0]))
        return out


def _flaky_stages(scenes, blind):
    stages, vlm, calibrator = make_stages(scenes, blind)
    flaky, flaky_cal = FlakyEndpoint(vlm), FlakyEndpoint(calibrator)
    stages.identifier.backend = stages.writer.backend = flaky
    stages.verifier = AgreementVerifier([flaky], calibrator=flaky_cal)
    return stages, flaky, flaky_cal


def _records(root):
    return sorted((r["image"]["sha256"], r["question"], r["answer"]) for r in HopChainDataset(root).records())


def test_an_endpoint_that_drops_calls_loses_nothing_and_a_rerun_matches_an_undisturbed_run(photos, tmp_path):
    folder, scenes, blind = photos
    calm, _, _ = make_stages(scenes, blind)
    run_photo_synthesis(tmp_path / "calm", config(folder), calm, progress=False)
    stages, flaky, flaky_cal = _flaky_stages(scenes, blind)
    out = tmp_path / "out"
    first = run_photo_synthesis(out, config(folder), stages, progress=False)
    pending = first["pending"]
    # the shard with a dropped call is not written, nor any after it; nothing was rejected for the outage
    assert pending and pending["items"] >= 1 and pending["first"]["reason"].startswith("model error: APIConnectionError")
    assert first["this_run"]["shards"] == pending["shard"] and pending["shards_left"] == 3 - pending["shard"]
    assert sorted(p.name for p in (out / "shards").glob("shard-*")) == [f"shard-{k:05d}" for k in range(pending["shard"])]
    assert all("APIConnection" not in k for st in first["stages"].values() for k in st["rejected"])
    text = format_photo_summary(first)
    assert f"{pending['items']} items could not reach the model: rerun the same command to retry" in text
    # the endpoint recovers: the same command finishes the run, repeating no completed call
    flaky.down = flaky_cal.down = False
    n, n_cal = len(flaky.sent), len(flaky_cal.sent)
    second = run_photo_synthesis(out, config(folder), stages, progress=False)
    assert second["pending"] is None and second["shards_resumed"] == pending["shard"]
    resent = (set(flaky.sent[n:]) | set(flaky_cal.sent[n_cal:])) & (set(flaky.sent[:n]) | set(flaky_cal.sent[:n_cal]))
    assert not resent and len(flaky.sent) > n
    assert _records(out) == _records(tmp_path / "calm") and _records(out)


def test_the_probe_stops_a_misconfigured_run_before_any_image(photos, tmp_path):
    folder, scenes, blind = photos
    stages, vlm, _ = make_stages(scenes, blind)

    class Misconfigured:
        model = "big-vlm"

        def probe(self, max_tokens):
            return f"big-vlm@http://x/v1 refuses max_tokens={max_tokens}: lower --max-tokens"

        def complete(self, requests):
            raise AssertionError("no image may reach a model that the probe refused")

    stages.identifier.backend = stages.writer.backend = Misconfigured()
    with pytest.raises(ValueError, match=r"cannot be used as configured:\n  - big-vlm@http://x/v1 refuses "
                                         r"max_tokens=4096: lower --max-tokens$"):   # one probe: the largest budget
        run_photo_synthesis(tmp_path / "out", config(folder), stages, progress=False)
    assert not list((tmp_path / "out" / "shards").glob("shard-*"))


@pytest.mark.parametrize("reason, key", [
    ("the last hop's value 'i1' is not the answer 7", "the last hop's value is not the answer N"),
    ("no Level-2 perception hop", "no Level-N perception hop"),
    ("no instance-chain hop", "no instance-chain hop"),
    ("the answer 'seven' is not a single number", "the answer is not a single number"),
    ("hop 2 has kind 'look' level 3", "hop N has kind level N"),
    ("the question refers to things the solver does not see: ['crop', 'i3']",
     "the question refers to things the solver does not see"),
    ("the chain uses 2 instances; it needs 3 to 6", "the chain uses N instances"),
    ("2 hops; a chain needs at least 3", "N hops"),
    ("the chain uses objects it was not given: ['i9']", "the chain uses objects it was not given"),
    ("model error: InternalServerError: Error code: 500", "model error"),
    ("solver error: big-vlm: BadRequestError: 400", "solver error"),
    ("solvers disagree: 3 of 4 give the answer 5", "solvers disagree"),
    ("too easy: the calibration model solved it 8 of 8 times", "too easy"),
    ("unreadable image: OSError: cannot identify image file", "unreadable image"),
    ("segmenter error: RuntimeError: CUDA out of memory", "segmenter error"),
    ("fewer than 3 instances (2 found)", "fewer than N instances"),
    ("the answer was cut off by max_tokens before the list ended",
     "the answer was cut off by max_tokens before the list ended"),
])
def test_reason_keys_stay_readable(reason, key):
    assert reason_key(reason) == key


def test_the_summary_warns_when_the_writer_grades_itself_or_calibration_is_skipped(photos):
    _, scenes, blind = photos
    stages, vlm, _ = make_stages(scenes, blind, calibrate=False)
    self_graded, skipped = stages.warnings()
    assert "query writer (oracle-vlm) also solves its own queries" in self_graded and "--solver" in self_graded
    assert "calibration was skipped (no --calibrator)" in skipped
    other = OracleVLM(scenes, model="other-vlm", book=vlm.book)
    stages.verifier = AgreementVerifier([other], calibrator=OracleVLM(scenes, model="weak", book=vlm.book))
    assert stages.warnings() == []
    text = format_photo_summary({"out": "o", "shards": 0, "shards_resumed": 0, "partial_shards_removed": 0,
                                 "images_in_folder": 0, "unreadable": {}, "instances_kept": 0,
                                 "instances_dropped": {}, "records": 0, "warnings": [skipped],
                                 "stages": {s: {"in": 0, "accepted": 0, "rejected": {}} for s in
                                            ("categories", "segmentation", "queries", "verification")},
                                 "this_run": {"shards": 0, "records": 0, "seconds": 0}})
    assert "warning: difficulty calibration was skipped" in text

"""`hopchain synth --images` on real photographs (scikit-image's bundled photos) through a live
OpenAI-compatible endpoint: a recorded run with exact per-stage counts, and an endpoint that drops calls
(the run loses nothing; after it recovers, the same command ends with the records of an undisturbed run).
The VLM behind the endpoint is scripted (tests/photo_script.py); stage 2 is a classical segmenter."""
from __future__ import annotations

import json

import pytest

from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.synth.record import validate_record
from hopchain_jax.vlm.categories import VLMCategoryIdentifier
from hopchain_jax.vlm.openai_backend import OpenAIChatBackend
from hopchain_jax.vlm.photo_pipeline import PhotoStages, PhotoSynthConfig, format_photo_summary, run_photo_synthesis
from hopchain_jax.vlm.query_writer import VLMQueryWriter
from hopchain_jax.vlm.solvers import AgreementVerifier

from engine_tiny import live_server
from photo_script import OtsuSegmenter, ScriptedPhotoVLM, write_photos

pytest.importorskip("skimage")


class Dropping:
    """The endpoint's model: while `down`, every third batch it is handed fails (the server answers 500)."""

    def __init__(self, inner):
        self.inner, self.model, self.down, self.batches = inner, inner.model, False, 0

    def complete(self, requests):
        self.batches += 1
        if self.down and self.batches % 3 == 0:
            raise RuntimeError("dropped by the test")
        return self.inner.complete(requests)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from hopchain_jax.serve.app import build_app
    folder = tmp_path_factory.mktemp("real") / "photos"
    vlm = ScriptedPhotoVLM(write_photos(folder))
    model = Dropping(vlm)
    with live_server(build_app(model, batch_window_ms=2)) as url:
        yield folder, vlm, model, url


def _stages(url, cache, **http):
    client = OpenAIChatBackend(url, "photo-script", cache_dir=cache, backoff_s=0.01, **http)
    return PhotoStages(VLMCategoryIdentifier(client), OtsuSegmenter(), VLMQueryWriter(client, max_tokens=256),
                       AgreementVerifier([client], max_tokens=256))


def _config(folder):
    return PhotoSynthConfig(images=str(folder), images_per_shard=2, models={"vlm": "photo-script@test"})


def _records(root):
    return sorted((r["provenance"]["source"], r["question"], r["answer"]) for r in HopChainDataset(root).records())


def test_a_recorded_run_on_real_photos_counts_every_stage_exactly(served, tmp_path):
    folder, vlm, _, url = served
    summary = run_photo_synthesis(tmp_path / "out", _config(folder), _stages(url, tmp_path / "cache"), progress=False)
    st = summary["stages"]
    # 5 photos; stage 2 finds the bright coins and stars (24 + 58 objects), nothing countable on the others;
    # 4 instance sets offered per photo; 3 drafts are prose; 3 of the 5 questions get a wrong solver answer
    assert st == {"categories": {"in": 5, "accepted": 5, "rejected": {}},
                  "segmentation": {"in": 5, "accepted": 2, "rejected": {"fewer than N instances": 3}},
                  "queries": {"in": 8, "accepted": 5, "rejected": {"no JSON object with a question in the output": 3}},
                  "verification": {"in": 5, "accepted": 2, "rejected": {"solvers disagree": 3}}}
    assert summary["instances_kept"] == 82 and summary["records"] == 2 and summary["pending"] is None
    assert summary["warnings"] and "calibration was skipped" in summary["warnings"][-1]
    for rec in HopChainDataset(tmp_path / "out").records():
        assert validate_record(rec, check_program=False) == []
        assert min(vlm.book[rec["question"]]) == rec["answer"] and rec["verification"]["agreeing"] == 4
        assert rec["provenance"]["source"] in ("coins.png", "hubble.png")
    text = format_photo_summary(summary)
    assert "e.g. fewer than 3 instances (0 found) [astronaut.png]" in text
    assert "solvers disagree: 0 of 4 give the answer" in text


def test_an_endpoint_that_drops_every_third_call_loses_nothing(served, tmp_path):
    folder, _, model, url = served
    calm = run_photo_synthesis(tmp_path / "calm", _config(folder), _stages(url, tmp_path / "calm-cache"),
                               progress=False)
    model.down, model.batches = True, 0
    try:   # no client retries, so each dropped call reaches the pipeline as a transient failure
        stages = _stages(url, tmp_path / "cache", max_retries=0)
        first = run_photo_synthesis(tmp_path / "out", _config(folder), stages, progress=False)
    finally:
        model.down = False
    assert first["pending"] and first["pending"]["items"] >= 1
    assert "Error code: 500" in first["pending"]["first"]["reason"]
    assert all("500" not in key for st in first["stages"].values() for key in st["rejected"])
    again = run_photo_synthesis(tmp_path / "out", _config(folder), stages, progress=False)   # recovered
    assert again["pending"] is None and again["stages"] == calm["stages"]
    assert _records(tmp_path / "out") == _records(tmp_path / "calm") and len(_records(tmp_path / "calm")) == 2

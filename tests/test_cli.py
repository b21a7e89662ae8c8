"""The `hopchain` command as a user runs it: synth, export, inspect, and user images."""
import json
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from hopchain_jax.cli import main
from hopchain_jax.synth.record import validate_record


def test_export_writes_valid_records_with_relative_image_paths(small_dataset, tmp_path, capsys):
    root, summary = small_dataset
    out = tmp_path / "q.jsonl"
    assert main(["export", str(root), "--jsonl", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == sum(summary["queries"].values())
    assert all(validate_record(r) == [] for r in records)
    assert not (tmp_path / "q.jsonl.tmp").exists()
    # only one variant, with images as PNG files
    png = tmp_path / "png"
    assert main(["export", str(root), "--jsonl", str(tmp_path / "f.jsonl"), "--variant", "full",
                 "--png-dir", str(png), "--no-progress"]) == 0
    full = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in full} == {"full"} and len(full) == summary["queries"]["full"]
    for r in full[:3]:
        assert not r["image"]["path"].startswith("/"), r["image"]["path"]  # relative to the JSONL's folder
        with Image.open(tmp_path / r["image"]["path"]) as im:
            assert im.size == (r["image"]["width"], r["image"]["height"])


class _Cards(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards, self.images, self.rows = 0, 0, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.cards += tag == "section" and attrs.get("class") == "card"
        self.images += tag == "img" and attrs.get("src", "").startswith("data:image/jpeg;base64,")
        self.rows += tag == "tr"


def test_inspect_writes_a_gallery(small_dataset, tmp_path):
    root, _ = small_dataset
    page = tmp_path / "g.html"
    assert main(["inspect", str(root), "--html", str(page), "--limit", "5"]) == 0
    parser = _Cards()
    parser.feed(page.read_text())
    assert parser.cards == parser.images == 5 and parser.rows > 5 * 3
    text = page.read_text()
    assert "Answer:" in text and "instance_chain" in text and "gold rationale" in text


def test_synth_summary_and_resume(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--num-images", "4", "--images-per-shard", "2", "--workers", "1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    for words in ("images seen: 4", "queries per variant: full=", "hops per full chain", "program ops", "full-chain answers", "blind baselines", "full queries/s"):
        assert words in text
    assert main(["synth", "--out", str(out), "--num-images", "4", "--images-per-shard", "2", "--workers", "1",
                 "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_resumed"] == 2 and summary["this_run"]["images"] == 0
    assert main(["synth", "--out", str(out), "--num-images", "6", "--no-progress"]) == 2
    assert "different config" in capsys.readouterr().err


def test_user_images_are_checked_one_by_one(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(photos / "good.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / "full.jpg")
    data = (photos / "full.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.txt").write_text("not a picture")
    (photos / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(photos / "tiny.png")
    assert main(["synth", "--images", str(photos), "--out", str(tmp_path / "o")]) == 2
    assert "--vlm, --sam3 required" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["synth", "--images", str(photos), "--out", str(tmp_path / "o"), "--vlm", "nowhere",
                 "--sam3", str(photos)]) == 2
    assert "--vlm 'nowhere': not a directory and not MODEL@URL" in capsys.readouterr().err
    from hopchain_jax.vlm.photo_pipeline import PhotoSynthConfig, prepare_photo_output
    readable = prepare_photo_output(tmp_path / "o", PhotoSynthConfig(images=str(photos)))
    assert [p.name for p in readable] == ["full.jpg", "good.png"]
    problems = json.loads((tmp_path / "o" / "manifest.json").read_text())["unreadable"]
    assert problems["empty.png"].startswith("empty file") and problems["notes.txt"].startswith("not an image")
    assert problems["truncated.jpg"].startswith("truncated") and problems["tiny.png"].startswith("too small")
    assert "garbage.png" in problems and len(problems) == 5


def test_help_and_a_missing_server_package_load_no_jax(tmp_path):
    """Building the parser imports no JAX (or grain), so `hopchain --help` answers at once; `serve`
    without fastapi says what to install before anything loads JAX or weights."""
    import subprocess
    import sys
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    code = f"""
import contextlib, io, sys
from hopchain_jax.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["--help"])
assert "jax" not in sys.modules and "grain" not in sys.modules, "the parser imported JAX"
sys.modules["fastapi"] = None   # as if fastapi were not installed
rc = main(["serve", "--model", {str(ckpt)!r}])
assert rc == 2 and "jax" not in sys.modules, (rc, "serve imported JAX before its package check")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pip install fastapi uvicorn" in proc.stderr

"""JSONL import: good and bad lines, round trip through HopChainSource, crash + resume, refusals."""
import json
import os
from decimal import Decimal

import numpy as np
import pytest
from PIL import Image

from hopchain_jax.data import importer, store
from hopchain_jax.data.grain_source import HopChainSource
from hopchain_jax.data.importer import format_import_summary, import_jsonl, parse_answer


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


@pytest.fixture
def user_data(tmp_path):
    """A JSONL with good lines (several image sizes, a shared image) and one bad line of every kind."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    pics = {name: _png(folder / "imgs" / f"{name}.png", rng.integers(0, 255, shape, dtype=np.uint8))
            for name, shape in (("a", (40, 60, 3)), ("b", (64, 32, 3)), ("c", (30, 30, 3)), ("d", (50, 45, 3)))}
    gray = rng.integers(0, 255, (36, 36), dtype=np.uint8)
    Image.fromarray(gray).save(folder / "imgs" / "gray.png")
    good_png = (folder / "imgs" / "a.png").read_bytes()
    (folder / "imgs" / "corrupt.png").write_bytes(good_png[: len(good_png) // 2])  # truncated
    (folder / "imgs" / "tiny.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "imgs" / "tiny.png")
    lines = [
        {"image": "imgs/a.png", "question": "How many?", "answer": 3},                      # 1 good
        {"image": "imgs/b.png", "question": "What length?", "answer": "2.50", "id": "b-1"},  # 2 good, string decimal
        {"image": "imgs/a.png", "question": "Same picture, other question", "answer": 7.0}, # 3 good, shares a.png
        {"image": "imgs/c.png", "question": "No answer here"},                              # 4 missing answer
        {"image": "imgs/c.png", "question": "Words?", "answer": "about five"},               # 5 non-numeric
        {"image": "imgs/corrupt.png", "question": "Corrupt?", "answer": 1},                 # 6 corrupt image
        "",                                                                                  # 7 blank
        {"image": "imgs/missing.png", "question": "Gone?", "answer": 1},                    # 8 missing file
        '{"image": "imgs/c.png", "question": "broken", ',                                   # 9 bad JSON
        {"image": "imgs/d.png", "question": "Dup id", "answer": 1, "id": "b-1"},            # 10 duplicate id
        {"image": "imgs/tiny.png", "question": "Tiny?", "answer": 1},                       # 11 too small
        {"image": "imgs/c.png", "question": "Boolean?", "answer": True},                    # 12 non-numeric
        {"image": str(folder / "imgs" / "d.png"), "question": "Absolute path", "answer": -4, "id": 17},  # 13 good
        {"image": "imgs/gray.png", "question": "Gray?", "answer": 1e-3},                    # 14 good, grayscale
    ]
    jsonl = folder / "qa.jsonl"
    jsonl.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    pics["gray"] = np.repeat(gray[:, :, None], 3, axis=2)
    return jsonl, pics


def test_import_end_to_end(user_data, tmp_path):
    jsonl, pics = user_data
    problems = []
    out = tmp_path / "out"
    summary = import_jsonl(jsonl, out, images_per_shard=4, progress=False,
                           on_problem=lambda line, reason, detail: problems.append((line, reason, detail)))
    assert summary["lines_read"] == 14 and summary["blank_lines"] == 1
    assert summary["imported"] == 5 and summary["skipped_total"] == 8 and summary["shards"] == 4
    assert summary["skipped"] == {"invalid JSON": 1, "missing key": 1, "non-numeric answer": 2, "unreadable image": 3,
                                  "duplicate id": 1}
    assert [(line, reason) for line, reason, _ in problems] == [
        (4, "missing key"), (5, "non-numeric answer"), (6, "unreadable image"), (8, "unreadable image"),
        (9, "invalid JSON"), (10, "duplicate id"), (11, "unreadable image"), (12, "non-numeric answer")]
    details = {line: detail for line, _, detail in problems}
    assert "'answer'" in details[4] and "about five" in details[5] and "line 2" in details[10]
    assert "truncated" in details[6] or "corrupt" in details[6]
    assert "missing.png" in details[8] and "too small" in details[11]
    assert [p["line"] for p in summary["problems"]] == [p[0] for p in problems]
    assert "imported: 5 records" in format_import_summary(summary)

    src = HopChainSource(out)
    assert len(src) == 5
    got = {src[i]["question"]: src[i] for i in range(len(src))}
    expect = {"How many?": ("a", 3), "What length?": ("b", 2.5), "Same picture, other question": ("a", 7),
              "Absolute path": ("d", -4), "Gray?": ("gray", 0.001)}
    assert set(got) == set(expect)
    for question, (pic, answer) in expect.items():
        el = got[question]
        rec = json.loads(el["record"])
        assert np.array_equal(el["image"], pics[pic]) and el["answer"] == answer and rec["answer"] == answer
        assert type(rec["answer"]) is (float if answer in (2.5, 0.001) else int)
        assert el["variant"] == "external" and rec["rationale"] is None and rec["program"] is None
        assert rec["instances"] == [] and rec["hops"] == [] and rec["verification"] == {"method": "external"}
        assert rec["provenance"]["backend"] == "jsonl-import" and rec["provenance"]["source"] == str(jsonl.resolve())
        assert rec["image"]["width"] == pics[pic].shape[1] and rec["image"]["height"] == pics[pic].shape[0]
        assert rec["image"]["source_path"].endswith(f"{pic}.png") and len(rec["image"]["sha256"]) == 64
    assert got["What length?"]["id"] == "b-1" and got["Absolute path"]["id"] == "17"
    assert len(got["How many?"]["id"]) == 24  # content hash when no id is given
    # two questions on one picture in one shard: the image is stored once
    same = [json.loads(got[q]["record"])["image"] for q in ("How many?", "Same picture, other question")]
    assert same[0] == same[1]
    assert json.loads((out / "shards" / "shard-00000" / "shard.json").read_text())["n_images"] == 2


def test_resume_after_a_crash_loses_and_duplicates_nothing(user_data, tmp_path, monkeypatch):
    jsonl, _ = user_data
    clean = import_jsonl(jsonl, tmp_path / "clean", images_per_shard=3, progress=False, on_problem=lambda *a: None)
    real = store.write_shard

    def crash_on_shard_2(root, index, *args, **kw):
        if index == 2:
            (tmp_path / "out" / "shards" / ".tmp-shard-00002-deadbeef").mkdir()  # what a kill leaves behind
            raise KeyboardInterrupt("killed")
        return real(root, index, *args, **kw)

    monkeypatch.setattr(store, "write_shard", crash_on_shard_2)
    with pytest.raises(KeyboardInterrupt):
        import_jsonl(jsonl, tmp_path / "out", images_per_shard=3, progress=False, on_problem=lambda *a: None)
    assert sorted(store.committed_shards(tmp_path / "out")) == [0, 1]
    monkeypatch.setattr(store, "write_shard", real)
    seen = []
    resumed = import_jsonl(jsonl, tmp_path / "out", images_per_shard=3, progress=False,
                           on_problem=lambda line, *a: seen.append(line))
    assert resumed["shards_resumed"] == 2 and resumed["partial_shards_removed"] == 1
    assert seen == [8, 9, 10, 11, 12]  # only the lines of the shards written now are reported again
    for key in ("lines_read", "imported", "skipped", "skipped_total", "problems", "shards"):
        assert resumed[key] == clean[key], key
    a, b = store.HopChainDataset(tmp_path / "clean"), store.HopChainDataset(tmp_path / "out")
    assert list(a.records()) == list(b.records())
    again = import_jsonl(jsonl, tmp_path / "out", images_per_shard=3, progress=False)  # nothing left to do
    assert again["this_run"]["shards"] == 0 and again["imported"] == clean["imported"]


def test_refuses_to_mix_imports(user_data, tmp_path, small_dataset):
    jsonl, _ = user_data
    out = tmp_path / "out"
    import_jsonl(jsonl, out, progress=False, on_problem=lambda *a: None)
    other = jsonl.with_name("other.jsonl")
    other.write_text(json.dumps({"image": "imgs/a.png", "question": "q", "answer": 1}) + "\n")
    with pytest.raises(ValueError, match="already holds an import of .*qa.jsonl"):
        import_jsonl(other, out, progress=False)
    with pytest.raises(ValueError, match="different options.*images_per_shard"):
        import_jsonl(jsonl, out, images_per_shard=5, progress=False)
    with open(jsonl, "a") as f:
        f.write(json.dumps({"image": "imgs/a.png", "question": "late", "answer": 2}) + "\n")
    with pytest.raises(ValueError, match="changed since the import"):
        import_jsonl(jsonl, out, progress=False)
    with pytest.raises(ValueError, match="not a JSONL import"):
        import_jsonl(jsonl, small_dataset[0], progress=False)
    with pytest.raises(ValueError, match="images_per_shard"):
        import_jsonl(jsonl, tmp_path / "x", images_per_shard=0, progress=False)
    with pytest.raises(FileNotFoundError):
        import_jsonl(tmp_path / "nope.jsonl", tmp_path / "y", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        import_jsonl(empty, tmp_path / "z", progress=False)


def test_parse_answer():
    assert parse_answer(3) == 3 and type(parse_answer(Decimal("3.0"))) is int
    assert parse_answer("4") == 4 and parse_answer(" -12 ") == -12 and parse_answer("1e3") == 1000
    assert parse_answer("2.50") == 2.5 and parse_answer(Decimal("0.1")) == 0.1 and parse_answer(0.25) == 0.25
    for bad in (True, None, "abc", "nan", "inf", "1,234", [1], {"v": 1}, ""):
        with pytest.raises(ValueError):
            parse_answer(bad)


def test_bad_utf8_and_bom(tmp_path):
    folder = tmp_path / "d"
    _png(folder / "x.png", np.full((32, 32, 3), 9, np.uint8))
    jsonl = folder / "q.jsonl"
    good = json.dumps({"image": "x.png", "question": "q?", "answer": 1}).encode()
    jsonl.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"image": "x.png", "question": "\xff", "answer": 1}\n')
    problems = []
    summary = import_jsonl(jsonl, tmp_path / "out", progress=False, on_problem=lambda *a: problems.append(a[:2]))
    assert summary["imported"] == 1 and problems == [(2, "invalid UTF-8")]
    assert os.path.isfile(tmp_path / "out" / "config.json")
    assert importer.IMPORT_KIND == json.loads((tmp_path / "out" / "config.json").read_text())["kind"]


def test_import_command(tmp_path, capsys):
    import json as _json

    import numpy as _np
    from PIL import Image as _Image

    from hopchain_jax.cli import main
    _Image.fromarray(_np.full((40, 50, 3), 90, _np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "in.jsonl").write_text(_json.dumps({"image": "a.png", "question": "How many?", "answer": 3}) + "\n"
                                       + "{not json\n")
    assert main(["import", "--jsonl", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "1 records" in out.out and "invalid JSON: 1" in out.out
    assert "in.jsonl:2: skipped (invalid JSON)" in out.err

"""Human annotation sheets (hopchain annotate): the exported sheet hides the answers, a filled sheet in
the shapes spreadsheets produce imports into exact verdicts with row-numbered problems, and export uses
the verdicts."""
import argparse
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from hopchain_jax.data.export import export_dataset, format_export_summary
from hopchain_jax.vlm.annotation import (apply_verdict, export_sheet, format_import, import_sheet, load_verdicts,
                                         write_verdicts)
from hopchain_jax.vlm.annotation_cli import add_annotate_parser

HEADER = ["item", "record_id", "image_file", "question", "answer_1", "answer_2", "answer_3", "answer_4", "notes"]


@pytest.fixture(scope="module")
def ds(two_scene_dataset):
    return two_scene_dataset


@pytest.fixture(scope="module")
def sheet(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("sheets") / "round1"
    done = export_sheet(ds.root, out, annotators=4, limit=6, seed=3, progress=False)
    assert done.items == 6 and done.sheet == out / "sheet.csv" and done.key == out / "key.json"
    return out


def read_rows(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))


def test_the_sheet_shows_questions_and_images_but_never_the_answers(ds, sheet):
    rows = read_rows(sheet / "sheet.csv")
    assert rows[0] == HEADER and len(rows) == 7
    key = json.loads((sheet / "key.json").read_text())
    assert key["annotators"] == 4 and sorted(key["items"]) == [f"q{k:04d}" for k in range(1, 7)]
    records = {r["id"]: r for r in ds.records()}
    for item, rid, image_file, question, *answers, notes in rows[1:]:
        rec = records[rid]
        assert key["items"][item] == {"record_id": rid, "answer": rec["answer"], "variant": "full"}
        assert question == rec["question"] and answers == ["", "", "", ""] and notes == ""
        assert image_file == f"images/{item}.png"
        with Image.open(sheet / image_file) as im:  # the plain image: no boxes, no labels
            assert np.array_equal(np.asarray(im), ds.image_of(rec))
    # the answers live only in key.json; the sheet and the page show none of them
    sent = (sheet / "sheet.csv").read_text(encoding="utf-8-sig") + (sheet / "index.html").read_text()
    assert "answer" not in sent.replace("answer_", "") and '"answer"' in (sheet / "key.json").read_text()
    assert all(f'src="images/{item}.png"' in sent for item in key["items"])
    assert (sheet / "README.txt").exists()
    # the same seed gives the same sample; another seed another order
    again = export_sheet(ds.root, sheet.parent / "again", limit=6, seed=3, progress=False)
    assert read_rows(again.sheet) == rows
    # an existing sheet folder is never overwritten, and nothing half-written is left
    with pytest.raises(FileExistsError, match="choose a new --out"):
        export_sheet(ds.root, sheet, progress=False)
    assert read_rows(sheet / "sheet.csv") == rows
    assert [p.name for p in sheet.parent.iterdir() if p.name.startswith(".")] == []


def fill(sheet, rows, delimiter=";", header=HEADER):
    """Write a filled sheet the way Excel does: BOM, semicolons, CRLF."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows([header, *rows])
    path = sheet / "filled.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode())
    return path


@pytest.fixture(scope="module")
def filled(sheet):
    key = json.loads((sheet / "key.json").read_text())["items"]
    a = {item: key[item]["answer"] for item in key}
    rid = {item: key[item]["record_id"] for item in key}

    def row(item, *answers, record_id=None):
        return [item, rid[item] if record_id is None else record_id, f"images/{item}.png", "q?", *answers, ""]

    rows = [
        row("q0001", f"{a['q0001']}", f" {a['q0001']} ", f"{a['q0001']}.0", f"{a['q0001']}"),  # row 2: all agree
        row("q0002", a["q0002"], a["q0002"], a["q0002"] + 1, a["q0002"]),                       # row 3: one dissents
        row("q0003", a["q0003"], "", a["q0003"], a["q0003"]),                                   # row 4: one missing
        row("q0004", a["q0004"], "abc", a["q0004"], a["q0004"]),                                # row 5: junk
        ["q9999", "", "", "", "1", "1", "1", "1", ""],                                          # row 6: unknown
        row("q0001", "0", "0", "0", "0"),                                                       # row 7: duplicate
        ["", "", "", "", "", "", "", "", ""],                                                   # row 8: blank
        row("q0005", "", "", "", ""),                                                           # row 9: unanswered
        row("q0006", a["q0006"], a["q0006"], a["q0006"], a["q0006"], record_id="deadbeef"),    # row 10: misfiled
    ]
    return fill(sheet, [[str(c) for c in r] for r in rows], header=[" Item", "record_id ", *HEADER[2:4],
                                                                     "Answer_1", "answer_2 ", *HEADER[6:]]), rid


def test_import_gives_exact_verdicts_and_row_numbered_problems(sheet, filled):
    path, rid = filled
    result = import_sheet(path, sheet / "key.json")
    v = {item: result["verdicts"][rid[item]] for item in ("q0001", "q0002", "q0003", "q0004", "q0005")}
    assert (v["q0001"]["answered"], v["q0001"]["agreeing"], v["q0001"]["accepted"]) == (4, 4, True)
    assert (v["q0002"]["answered"], v["q0002"]["agreeing"], v["q0002"]["accepted"]) == (4, 3, False)
    assert (v["q0003"]["answered"], v["q0003"]["agreeing"], v["q0003"]["accepted"]) == (3, 3, False)
    assert v["q0003"]["answers"][1] is None and v["q0001"]["answers"][1] == v["q0001"]["answers"][0]
    assert (v["q0004"]["answered"], v["q0004"]["bad"], v["q0004"]["accepted"]) == (3, 1, False)
    assert (v["q0005"]["answered"], v["q0005"]["accepted"]) == (0, False)
    assert rid["q0006"] not in result["verdicts"]
    problems = [(p["row"], p["item"], p["column"]) for p in result["problems"]]
    assert problems == [(5, "q0004", "answer_2"), (6, "q9999", "item"), (7, "q0001", "item"),
                        (10, "q0006", "record_id")]
    assert result["summary"] == {"rows": 8, "items": 6, "records": 5, "accepted": 1, "rejected": 4, "disagreeing": 1,
                                 "incomplete": 3, "not_in_sheet": 1, "problems": 4, "annotators": 4, "required": 4}
    text = format_import(result)
    assert "row 5 (q0004), answer_2: 'abc' is not a number" in text and "row 6, item: unknown item 'q9999'" in text
    assert "first on row 2" in text
    # three of four answers may be enough; junk still blocks acceptance
    loose = import_sheet(path, sheet / "key.json", required=3)["verdicts"]
    assert loose[rid["q0003"]]["accepted"] and not loose[rid["q0004"]]["accepted"]
    assert not loose[rid["q0002"]]["accepted"]
    with pytest.raises(ValueError, match="between 1 and 4"):
        import_sheet(path, sheet / "key.json", required=5)


def test_plain_commas_tabs_and_a_wrong_key_or_sheet(sheet, filled, tmp_path):
    path, rid = filled
    rows = read_rows(path)
    expected = import_sheet(path, sheet / "key.json")["summary"]
    for delimiter in (",", "\t"):
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter).writerows(rows)
        other = sheet / "plain.csv"
        other.write_text(buf.getvalue())
        again = import_sheet(other)  # the key next to the sheet
        assert again["summary"] == expected
    with pytest.raises(FileNotFoundError, match="--key"):
        import_sheet(path, tmp_path / "nokey.json")
    (tmp_path / "bad.csv").write_text("name,answer\nx,3\n")
    with pytest.raises(ValueError, match="no 'item' column"):
        import_sheet(tmp_path / "bad.csv", sheet / "key.json")


def test_verdicts_file_merges_and_export_keeps_only_accepted(ds, sheet, filled, tmp_path):
    path, rid = filled
    result = import_sheet(path, sheet / "key.json", required=3)
    out = tmp_path / "verdicts.jsonl"
    out.write_text(json.dumps({"id": "from-an-earlier-round", "method": "human", "solvers": 4, "agreeing": 4,
                               "accepted": True}) + "\n")
    assert write_verdicts(result, out) == 6  # the earlier line is kept
    verdicts = load_verdicts(out)
    assert verdicts[rid["q0003"]].accepted and verdicts[rid["q0003"]].solvers == 3
    assert not verdicts[rid["q0002"]].accepted and "from-an-earlier-round" in verdicts
    accepted = {r for r, v in verdicts.items() if v.accepted} - {"from-an-earlier-round"}
    rejected = {r for r, v in verdicts.items() if not v.accepted}
    summary = export_dataset(ds.root, tmp_path / "out.jsonl", variants=("full",), progress=False, verdicts=out)
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    full = sum(r["variant"] == "full" for r in ds.records())
    assert (summary.human_accepted, summary.dropped_rejected, summary.written) == (
        len(accepted), len(rejected), full - len(rejected))
    assert not rejected & set(records)
    for r in accepted:
        assert records[r]["verification"] == {"method": "human", "solvers": verdicts[r].solvers,
                                              "agreeing": verdicts[r].agreeing, "calibration": None}
    untouched = next(r for r in records.values() if r["id"] not in accepted)
    assert untouched["verification"]["method"] == "program"
    assert "2 accepted, 3 rejected" in format_export_summary(summary, "out.jsonl")
    rec = {"verification": {"method": "program"}}
    assert apply_verdict(rec, None) and rec == {"verification": {"method": "program"}}


def cli(argv):
    parser = argparse.ArgumentParser(prog="hopchain")
    add_annotate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


def test_cli_export_and_import(ds, sheet, filled, tmp_path, capsys):
    out = tmp_path / "sheet"
    assert cli(["annotate", "export", str(ds.root), "--out", str(out), "--annotators", "2", "--limit", "3",
                "--no-progress"]) == 0
    assert "keep" in capsys.readouterr().out
    assert read_rows(out / "sheet.csv")[0] == [*HEADER[:4], "answer_1", "answer_2", "notes"]
    assert cli(["annotate", "export", str(ds.root), "--out", str(out)]) == 2
    assert "choose a new --out" in capsys.readouterr().err
    assert cli(["annotate", "export", str(tmp_path / "none"), "--out", str(tmp_path / "s2")]) == 2
    assert "holds no HopChain shards" in capsys.readouterr().err
    path, _ = filled
    verdicts = tmp_path / "v.jsonl"
    assert cli(["annotate", "import", str(path), "--key", str(sheet / "key.json"), "--out", str(verdicts)]) == 1
    text = capsys.readouterr().out
    assert "1 accepted" in text and "row 5 (q0004)" in text and "wrote 5 verdicts" in text
    assert len(load_verdicts(verdicts)) == 5
    assert cli(["annotate", "import", str(path), "--key", str(tmp_path / "x.json"), "--out", str(verdicts)]) == 2
    assert "does not exist" in capsys.readouterr().err

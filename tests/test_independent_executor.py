"""Cross-check exported programs against an executor written from the spec alone.

``tests/independent_executor.py`` implements the program op set from its prose
specification only (it does not import ``hopchain_jax``).  Here ``hopchain_jax``
is used only through its CLI, in a subprocess, to build and export a small
dataset; every exported record's program must evaluate to its stored answer.
The hand-built records below pin down the documented geometry and error cases
so that agreement is not trivial.
"""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from independent_executor import run_program  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# a. every exported record agrees with the independent executor
# --------------------------------------------------------------------------

def _cli(*args):
    subprocess.run([sys.executable, "-m", "hopchain_jax.cli", *args],
                   check=True, cwd=REPO_ROOT)


def test_matches_every_exported_record(tmp_path):
    d = str(tmp_path / "ds")
    f = str(tmp_path / "ds.jsonl")
    _cli("synth", "--out", d, "--num-images", "24", "--workers", "1", "--no-progress")
    _cli("export", d, "--jsonl", f, "--no-progress")

    with open(f) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    assert records, "export produced no records"

    ops_seen = set()
    failures = []
    for rec in records:
        ops_seen.update(step["op"] for step in rec["program"]["steps"])
        try:
            got = run_program(rec)
        except ValueError as e:
            got = "ValueError: %s" % e
        if got != rec["answer"]:
            failures.append("record %s (variant %s): computed %r, record answer %r\n  question: %s"
                            % (rec.get("id"), rec.get("variant"), got, rec["answer"],
                               rec.get("question")))
    assert not failures, ("%d of %d exported records disagree with the independent executor:\n%s"
                          % (len(failures), len(records), "\n".join(failures[:20])))
    # the check is only meaningful if the programs exercise the core ops
    assert {"select", "relate", "count"} <= ops_seen, ops_seen


# --------------------------------------------------------------------------
# b. hand-built records
# --------------------------------------------------------------------------

def inst(iid, category, cx, cy, half=20, color="red", size="medium", text=None,
         part=None, part_count=None, area=1000):
    """An instance whose bbox (0..1000 units) is centred on (cx, cy)."""
    return {"id": iid, "category": category,
            "bbox": [cx - half, cy - half, cx + half, cy + half],
            "area": area, "score": 1.0,
            "attributes": {"color": color, "size": size, "text": text,
                           "part": part, "part_count": part_count}}


def record(instances, steps, output=None, width=800, height=600):
    steps = [dict(s, hop=s.get("hop", 0)) for s in steps]
    return {"image": {"width": width, "height": height},
            "instances": instances,
            "program": {"steps": steps, "output": output or steps[-1]["id"]}}


def step(sid, op, **args):
    return {"id": sid, "op": op, "args": args}


def ref(sid):
    return {"ref": sid}


# --- geometry is in pixels, not in 0..1000 box units ----------------------

# W=2000, H=500: one box unit is 2 px horizontally but 0.5 px vertically.
WIDE = dict(width=2000, height=500)
GEOM = [
    inst("a", "ball", 500, 500),   # anchor, pixel center (1000, 250)
    inst("p", "cube", 500, 700),   # pixel (1000, 350): 100 px away, 200 box units
    inst("q", "cube", 620, 500),   # pixel (1240, 250): 240 px away, 120 box units
    inst("r", "cube", 900, 500),   # pixel (1800, 250): 800 px away
    inst("s", "cone", 510, 500),   # other category, pixel (1020, 250)
]


def test_relate_nearest_uses_pixel_distance():
    rec = record(GEOM, [step("s0", "select", filter={"category": "ball"}),
                        step("s1", "relate", anchor=ref("s0"), relation="nearest",
                             filter={"category": "cube"})], **WIDE)
    # in box units q (120) would be nearer than p (200); in pixels p (100) < q (240)
    assert run_program(rec) == "p"


def test_relate_directional_is_strict_and_picks_nearest():
    rec = record(GEOM, [step("s0", "select", filter={"category": "ball"}),
                        step("s1", "relate", anchor=ref("s0"), relation="right_of",
                             filter={"category": "cube"})], **WIDE)
    # p has the same cx as the anchor -> not right_of; q beats r
    assert run_program(rec) == "q"
    rec = record(GEOM, [step("s0", "select", filter={"category": "ball"}),
                        step("s1", "relate", anchor=ref("s0"), relation="below",
                             filter={"category": "cube"})], **WIDE)
    assert run_program(rec) == "p"   # bbox y 700 > 500 -> larger center y -> below


def test_relate_excludes_anchor_and_applies_exclude():
    rec = record(GEOM, [step("s0", "select", filter={"category": "ball"}),
                        step("s1", "relate", anchor=ref("s0"), relation="nearest",
                             filter={"category": "cube"}),
                        step("s2", "relate", anchor=ref("s0"), relation="nearest",
                             filter={"category": "cube", "exclude": [ref("s1")]})], **WIDE)
    assert run_program(rec) == "q"
    # nearest ball to the only ball: the anchor itself is not a candidate
    rec = record(GEOM, [step("s0", "select", filter={"category": "ball"}),
                        step("s1", "relate", anchor=ref("s0"), relation="nearest",
                             filter={"category": "ball"})], **WIDE)
    with pytest.raises(ValueError):
        run_program(rec)


def test_relate_with_no_candidate_raises():
    rec = record(GEOM, [step("s0", "select", filter={"category": "ball"}),
                        step("s1", "relate", anchor=ref("s0"), relation="left_of",
                             filter={"category": "cube"})], **WIDE)
    with pytest.raises(ValueError):
        run_program(rec)


def test_relate_tie_raises():
    insts = [inst("a", "ball", 500, 500),
             inst("l", "cube", 400, 500), inst("r", "cube", 600, 500)]
    rec = record(insts, [step("s0", "select", filter={"category": "ball"}),
                         step("s1", "relate", anchor=ref("s0"), relation="nearest",
                              filter={"category": "cube"})])
    with pytest.raises(ValueError):
        run_program(rec)
    # with a direction the tie disappears
    rec["program"]["steps"][1]["args"]["relation"] = "left_of"
    assert run_program(rec) == "l"


# --- select ----------------------------------------------------------------

def test_select_ambiguous_and_missing_raise():
    insts = [inst("x", "star", 100, 100, color="blue"),
             inst("y", "star", 300, 100, color="blue"),
             inst("z", "star", 500, 100, color="green")]
    with pytest.raises(ValueError):
        run_program(record(insts, [step("s0", "select", filter={"category": "star",
                                                                "color": "blue"})]))
    with pytest.raises(ValueError):
        run_program(record(insts, [step("s0", "select", filter={"category": "moon"})]))
    assert run_program(record(insts, [step("s0", "select", filter={"color": "green"})])) == "z"
    # exclude makes the blue star unique
    assert run_program(record(insts, [
        step("s0", "select", filter={"color": "green"}),
        step("s1", "relate", anchor=ref("s0"), relation="nearest", filter={"category": "star"}),
        step("s2", "select", filter={"category": "star", "color": "blue",
                                     "exclude": [ref("s1")]})])) == "x"


# --- superlative -------------------------------------------------------------

def test_superlative_tie_raises():
    insts = [inst("x", "die", 100, 100, area=500), inst("y", "die", 300, 100, area=500),
             inst("z", "die", 500, 100, area=200)]
    with pytest.raises(ValueError):
        run_program(record(insts, [step("s0", "superlative", filter={"category": "die"},
                                        key="area", order="max")]))
    assert run_program(record(insts, [step("s0", "superlative", filter={"category": "die"},
                                           key="area", order="min")])) == "z"
    with pytest.raises(ValueError):   # no instance matches
        run_program(record(insts, [step("s0", "superlative", filter={"category": "card"},
                                        key="area", order="min")]))


def test_superlative_part_count_skips_null_and_number_key():
    insts = [inst("f1", "flower", 100, 100, part="petals", part_count=5),
             inst("f2", "flower", 300, 100, part="petals", part_count=8),
             inst("f3", "flower", 500, 100),                       # no part count
             inst("c1", "card", 100, 800, text="12"),
             inst("c2", "card", 300, 800, text="9")]
    assert run_program(record(insts, [step("s0", "superlative", filter={"category": "flower"},
                                           key="part_count", order="max")])) == "f2"
    assert run_program(record(insts, [step("s0", "superlative", filter={"category": "flower"},
                                           key="part_count", order="min")])) == "f1"
    # numerically 12 > 9 (a string comparison would pick "9")
    assert run_program(record(insts, [step("s0", "superlative", filter={"category": "card"},
                                           key="number", order="max")])) == "c1"


# --- between -----------------------------------------------------------------

def test_between_hand_computed():
    # W=2000, H=500. a -> px (200, 250), b -> px (1800, 250); L = 1600, 0.3 L = 480.
    insts = [inst("a", "vase", 100, 500), inst("b", "lamp", 900, 500),
             inst("m", "mug", 500, 800),   # px (1000, 400): t = 0.5,    d = 150 -> between
             inst("e", "mug", 950, 500),   # px (1900, 250): t = 1.0625         -> not
             inst("n", "mug", 150, 500),   # px (300, 250):  t = 0.0625         -> not
             inst("k", "mug", 220, 500)]   # px (440, 250):  t = 0.15,   d = 0  -> between
    prog = [step("s0", "select", filter={"category": "vase"}),
            step("s1", "select", filter={"category": "lamp"})]
    with pytest.raises(ValueError):        # two mugs (m, k) are between
        run_program(record(insts, prog + [step("s2", "between", a=ref("s0"), b=ref("s1"),
                                               filter={"category": "mug"})], **WIDE))
    # drop k: m is the unique mug between
    rec = record(insts[:5], prog + [step("s2", "between", a=ref("s0"), b=ref("s1"),
                                         filter={"category": "mug"})], **WIDE)
    assert run_program(rec) == "m"
    # order of a and b does not matter
    rec = record(insts[:5], prog + [step("s2", "between", a=ref("s1"), b=ref("s0"),
                                         filter={"category": "mug"})], **WIDE)
    assert run_program(rec) == "m"


def test_between_uses_pixels():
    # W=2000, H=500: a px (200, 50), b px (1800, 50), L = 1600 px.
    # c px (1000, 450): t = 0.5, d = 400 <= 480 -> between in pixels
    # (in box units d = 800 > 0.3 * 800 = 240 would say "not between").
    insts = [inst("a", "vase", 100, 100), inst("b", "lamp", 900, 100),
             inst("c", "mug", 500, 900)]
    rec = record(insts, [step("s0", "select", filter={"category": "vase"}),
                         step("s1", "select", filter={"category": "lamp"}),
                         step("s2", "between", a=ref("s0"), b=ref("s1"),
                              filter={"category": "mug"})], **WIDE)
    assert run_program(rec) == "c"
    # H=1000 instead: c px (1000, 900), a/b at y = 100 px, d = 800 > 480 -> not between
    rec["image"]["height"] = 1000
    with pytest.raises(ValueError):
        run_program(rec)


# --- count with directions, attributes, arithmetic -----------------------------

COUNT_INSTS = [
    inst("a", "ball", 500, 500, color="red"),     # anchor
    inst("b1", "ball", 200, 300, color="red"),    # left, above
    inst("b2", "ball", 800, 700, color="blue"),   # right, below
    inst("b3", "ball", 500, 200, color="red"),    # same x (neither left nor right), above
    inst("b4", "ball", 700, 500, color="blue"),   # right, same y (neither above nor below)
    inst("c1", "cube", 100, 100, color="red"),    # other category, left, above
]


@pytest.mark.parametrize("relation,expected", [
    ("left_of", 1), ("right_of", 2), ("above", 2), ("below", 1)])
def test_count_with_direction(relation, expected):
    # W=800, H=600; the anchor matches the filter but is never counted against itself
    rec = record(COUNT_INSTS, [
        step("s0", "superlative", filter={"category": "ball", "color": "red"},
             key="center_y", order="max"),                      # the anchor a (cy 300 px)
        step("s1", "count", filter={"category": "ball"}, relation=relation, anchor=ref("s0"))])
    assert run_program(rec) == expected
    # literal (non-ref) anchor given by instance id
    rec["program"]["steps"][1]["args"]["anchor"] = "a"
    assert run_program(rec) == expected


def test_count_chain_with_colour_ref_and_arithmetic():
    insts = COUNT_INSTS + [
        inst("k", "card", 900, 100, color="blue", text="7"),
        inst("f", "flower", 900, 900, color="pink", part="petals", part_count=5)]
    steps = [
        step("s0", "select", filter={"category": "card"}),
        step("s1", "attribute", instance=ref("s0"), name="color"),           # "blue"
        step("s2", "count", filter={"category": "ball", "color": ref("s1")}),  # b2, b4 -> 2
        step("s3", "read_number", instance=ref("s0")),                         # 7
        step("s4", "select", filter={"category": "flower", "part_count": 5}),
        step("s5", "count_parts", instance=ref("s4")),                         # 5
        step("s6", "mul", a=ref("s2"), b=ref("s3")),                           # 14
        step("s7", "sub", a=ref("s6"), b=ref("s5")),                           # 9
        step("s8", "count", filter={"category": "ball"}),                      # 5 (incl. anchor)
        step("s9", "add", a=ref("s7"), b=ref("s8")),                           # 14
    ]
    assert run_program(record(insts, steps)) == 14
    assert run_program(record(insts, steps, output="s1")) == "blue"
    assert run_program(record(insts, steps, output="s4")) == "f"


# --- other documented failures -----------------------------------------------------

def test_other_documented_errors():
    insts = [inst("k", "card", 100, 100, text="x7"),
             inst("f", "flower", 300, 300)]
    with pytest.raises(ValueError):   # text must be decimal digits
        run_program(record(insts, [step("s0", "select", filter={"category": "card"}),
                                   step("s1", "read_number", instance=ref("s0"))]))
    with pytest.raises(ValueError):   # part_count must not be null
        run_program(record(insts, [step("s0", "select", filter={"category": "flower"}),
                                   step("s1", "count_parts", instance=ref("s0"))]))
    with pytest.raises(ValueError):   # unknown op
        run_program(record(insts, [step("s0", "teleport", filter={})]))
    with pytest.raises(ValueError):   # ref to a step that has not run
        run_program(record(insts, [step("s0", "count_parts", instance=ref("s1")),
                                   step("s1", "select", filter={"category": "flower"})]))
    with pytest.raises(ValueError):   # unknown relation
        run_program(record(insts, [step("s0", "select", filter={"category": "card"}),
                                   step("s1", "relate", anchor=ref("s0"), relation="inside",
                                        filter={"category": "flower"})]))

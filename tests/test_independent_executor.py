"""Cross-check exported programs against an executor written from the spec alone.

``tests/independent_executor.py`` implements the program op set from its prose
specification only (it does not import ``hopchain_jax``).  Here ``hopchain_jax``
is used only through its CLI, in a subprocess, to build and export a small
dataset; every exported record's program must evaluate to its stored answer.
The hand-built records below pin down the documented (spec v2) geometry --
45-degree direction cones, occlusion via ``occludes``, nearest/farthest,
between -- and the ops and error cases, so that agreement is not trivial.
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
    # the check is only meaningful if the programs exercise the core ops.  compare, count_letters
    # and the occlusion relations also occur, but too rarely (a handful per dataset, sometimes
    # none) to be required here; the hand-built records below cover them.
    assert {"select", "relate", "count"} <= ops_seen, ops_seen


# --------------------------------------------------------------------------
# b. hand-built records
# --------------------------------------------------------------------------

_MISSING = object()


def inst(iid, category, cx, cy, half=20, color="red", size="medium", text=None,
         part=None, part_count=None, area=1000, occludes=_MISSING):
    """An instance whose bbox (0..1000 units) is centred on (cx, cy).

    ``occludes`` is left out of the dict unless given (a missing key means the empty list).
    """
    d = {"id": iid, "category": category,
         "bbox": [cx - half, cy - half, cx + half, cy + half],
         "area": area, "score": 1.0,
         "attributes": {"color": color, "size": size, "text": text,
                        "part": part, "part_count": part_count}}
    if occludes is not _MISSING:
        d["occludes"] = occludes
    return d


def record(instances, steps, output=None, width=800, height=600):
    steps = [dict(s, hop=s.get("hop", 0)) for s in steps]
    return {"image": {"width": width, "height": height},
            "instances": instances,
            "program": {"steps": steps, "output": output or steps[-1]["id"]}}


def step(sid, op, **args):
    return {"id": sid, "op": op, "args": args}


def ref(sid):
    return {"ref": sid}


def run1(instances, *steps, **kw):
    """Run a program given as steps; output = last step."""
    return run_program(record(instances, list(steps), **kw))


SELECT_BALL = step("s0", "select", filter={"category": "ball"})


# --- geometry is in pixels, not in 0..1000 box units ----------------------

# W=2000, H=500: one box unit is 2 px horizontally but 0.5 px vertically.
WIDE = dict(width=2000, height=500)
GEOM = [
    inst("a", "ball", 500, 500),   # anchor, pixel center (1000, 250)
    inst("p", "cube", 500, 700),   # pixel (1000, 350): 100 px away, 200 box units; dx 0, dy 100
    inst("q", "cube", 620, 500),   # pixel (1240, 250): 240 px away, 120 box units; dx 240, dy 0
    inst("r", "cube", 900, 500),   # pixel (1800, 250): 800 px away
    inst("s", "cone", 510, 500),   # other category, pixel (1020, 250)
]


def test_relate_nearest_uses_pixel_distance():
    # in box units q (120) would be nearer than p (200); in pixels p (100) < q (240)
    assert run1(GEOM, SELECT_BALL,
                step("s1", "relate", anchor=ref("s0"), relation="nearest",
                     filter={"category": "cube"}), **WIDE) == "p"


def test_relate_farthest_uses_pixel_distance_and_exclude():
    rel = lambda **f: step("s1", "relate", anchor=ref("s0"), relation="farthest",
                           filter=dict({"category": "cube"}, **f))
    assert run1(GEOM, SELECT_BALL, rel(), **WIDE) == "r"
    assert run1(GEOM, SELECT_BALL, rel(exclude=["r"]), **WIDE) == "q"
    # W=1000, H=10000: now p is 2000 px away (dy 200 box units * 10), q 120 px, r 400 px
    assert run1(GEOM, SELECT_BALL, rel(), width=1000, height=10000) == "p"


def test_relate_farthest_tie_raises_and_anchor_is_no_candidate():
    insts = [inst("a", "ball", 500, 500),
             inst("l", "cube", 400, 500), inst("r", "cube", 600, 500),
             inst("n", "cube", 520, 500)]
    with pytest.raises(ValueError):   # l and r are equally far
        run1(insts, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="farthest",
                                      filter={"category": "cube"}))
    # the nearest is unique, the farthest is not
    assert run1(insts, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="nearest",
                                         filter={"category": "cube"})) == "n"
    with pytest.raises(ValueError):   # the only ball is the anchor itself: no candidate
        run1(insts, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="farthest",
                                      filter={"category": "ball"}))


def test_relate_directional_picks_nearest_in_cone():
    # right_of: q (dx 240, dy 0) beats r; p (dx 0) is not right_of
    assert run1(GEOM, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="right_of",
                                        filter={"category": "cube"}), **WIDE) == "q"
    # below: p (dy 100 > |dx| 0)
    assert run1(GEOM, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="below",
                                        filter={"category": "cube"}), **WIDE) == "p"


def test_relate_excludes_anchor_and_applies_exclude():
    assert run1(GEOM, SELECT_BALL,
                step("s1", "relate", anchor=ref("s0"), relation="nearest",
                     filter={"category": "cube"}),
                step("s2", "relate", anchor=ref("s0"), relation="nearest",
                     filter={"category": "cube", "exclude": [ref("s1")]}), **WIDE) == "q"
    with pytest.raises(ValueError):   # nearest ball to the only ball: the anchor is no candidate
        run1(GEOM, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="nearest",
                                     filter={"category": "ball"}), **WIDE)


def test_relate_with_no_candidate_raises():
    with pytest.raises(ValueError):
        run1(GEOM, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="left_of",
                                     filter={"category": "cube"}), **WIDE)


def test_relate_tie_raises():
    insts = [inst("a", "ball", 500, 500),
             inst("l", "cube", 400, 500), inst("r", "cube", 600, 500)]
    rec = record(insts, [SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="nearest",
                                           filter={"category": "cube"})])
    with pytest.raises(ValueError):
        run_program(rec)
    # with a direction the tie disappears
    rec["program"]["steps"][1]["args"]["relation"] = "left_of"
    assert run_program(rec) == "l"


# --- direction cones (45-degree half-angle, strict) ---------------------------
# default image W=800, H=600: box (x, y) -> pixel (0.8 x, 0.6 y); anchor box (500, 500) -> (400, 300)

def test_cone_candidate_far_to_the_side_is_not_left_of():
    insts = [inst("a", "ball", 500, 500),
             inst("side", "cube", 450, 100),   # px (360, 60):  dx -40,  dy -240 -> above only
             inst("far", "cube", 100, 550)]    # px (80, 330):  dx -320, dy 30   -> left_of
    rel = lambda relation, insts=insts: run1(
        insts, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation=relation,
                                 filter={"category": "cube"}))
    # "side" is nearer (243 px vs 321 px) and has the smaller x, but lies outside the left cone
    assert rel("left_of") == "far"
    assert rel("above") == "side"
    assert rel("nearest") == "side"
    with pytest.raises(ValueError):      # without "far" nothing is left_of the anchor
        rel("left_of", insts[:2])
    with pytest.raises(ValueError):      # nothing is right_of
        rel("right_of")


def test_cone_edge_and_coincident_center_are_in_no_cone():
    insts = [inst("a", "ball", 500, 500),
             inst("se", "cube", 800, 900),   # px (640, 540): dx 240,  dy 240  (exact diagonal)
             inst("nw", "cube", 200, 100),   # px (160, 60):  dx -240, dy -240 (exact diagonal)
             inst("twin", "cube", 500, 500, half=40)]   # same center as the anchor
    for relation in ("left_of", "right_of", "above", "below"):
        assert run1(insts, SELECT_BALL, step("s1", "count", filter={"category": "cube"},
                                             relation=relation, anchor=ref("s0"))) == 0
        with pytest.raises(ValueError):
            run1(insts, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation=relation,
                                          filter={"category": "cube"}))
    # the twin is not the anchor: it is a (distance 0) nearest candidate
    assert run1(insts, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="nearest",
                                         filter={"category": "cube"})) == "twin"
    # just off the diagonal is inside: se moved to box x 802 -> px 641.6 (dx 241.6 > dy 240)
    insts[1]["bbox"] = [782, 880, 822, 920]
    assert run1(insts, SELECT_BALL, step("s1", "relate", anchor=ref("s0"), relation="right_of",
                                         filter={"category": "cube"})) == "se"
    assert run1(insts, SELECT_BALL, step("s1", "count", filter={"category": "cube"},
                                         relation="below", anchor=ref("s0"))) == 0


COUNT_INSTS = [
    inst("a", "ball", 500, 500, color="red"),     # anchor, px (400, 300)
    inst("b1", "ball", 200, 400, color="red"),    # px (160, 240): dx -240, dy -60  -> left_of
    inst("b2", "ball", 800, 900, color="blue"),   # px (640, 540): dx 240,  dy 240  -> on the edge
    inst("b3", "ball", 500, 100, color="red"),    # px (400, 60):  dx 0,    dy -240 -> above
    inst("b4", "ball", 700, 500, color="blue"),   # px (560, 300): dx 160,  dy 0    -> right_of
    inst("b5", "ball", 300, 250, color="red"),    # px (240, 150): dx -160, dy -150 -> left_of
                                                  #   (in box units dx -200, dy -250: "above")
    inst("b6", "ball", 450, 900, color="blue"),   # px (360, 540): dx -40,  dy 240  -> below
    inst("c1", "cube", 100, 100, color="red"),    # other category (left_of)
]


@pytest.mark.parametrize("relation,expected", [
    ("left_of", 2), ("right_of", 1), ("above", 1), ("below", 1)])
def test_count_with_direction(relation, expected):
    # the anchor matches the filter but is never counted against itself
    rec = record(COUNT_INSTS, [
        step("s0", "superlative", filter={"category": "ball", "color": "red"},
             key="center_y", order="max"),                      # the anchor a
        step("s1", "count", filter={"category": "ball"}, relation=relation, anchor=ref("s0"))])
    assert run_program(rec) == expected
    # literal (non-ref) anchor given by instance id
    rec["program"]["steps"][1]["args"]["anchor"] = "a"
    assert run_program(rec) == expected


def test_count_relation_errors():
    with pytest.raises(ValueError):   # relation without anchor
        run1(COUNT_INSTS, step("s0", "count", filter={"category": "ball"}, relation="left_of"))
    for relation in ("nearest", "farthest", "inside"):
        with pytest.raises(ValueError):
            run1(COUNT_INSTS, step("s0", "count", filter={"category": "ball"},
                                   relation=relation, anchor="a"))


def test_count_chain_with_colour_ref_and_arithmetic():
    insts = COUNT_INSTS + [
        inst("k", "card", 900, 100, color="blue", text="7"),
        inst("f", "flower", 900, 900, color="pink", part="petals", part_count=5)]
    steps = [
        step("s0", "select", filter={"category": "card"}),
        step("s1", "attribute", instance=ref("s0"), name="color"),           # "blue"
        step("s2", "count", filter={"category": "ball", "color": ref("s1")}),  # b2 b4 b6 -> 3
        step("s3", "read_number", instance=ref("s0")),                         # 7
        step("s4", "select", filter={"category": "flower", "part_count": 5}),
        step("s5", "count_parts", instance=ref("s4")),                         # 5
        step("s6", "mul", a=ref("s2"), b=ref("s3")),                           # 21
        step("s7", "sub", a=ref("s6"), b=ref("s5")),                           # 16
        step("s8", "count", filter={"category": "ball"}),                      # 7 (incl. anchor)
        step("s9", "add", a=ref("s7"), b=ref("s8")),                           # 23
    ]
    assert run_program(record(insts, steps)) == 23
    assert run_program(record(insts, steps, output="s1")) == "blue"
    assert run_program(record(insts, steps, output="s4")) == "f"


# --- occlusion: in_front_of / behind ----------------------------------------------

OCC_INSTS = [
    inst("a", "box", 500, 500, occludes=["m1"]),   # a hides part of m1
    inst("m1", "mug", 700, 500),                   # behind a; no "occludes" key (= [])
    inst("m2", "mug", 600, 500, occludes=["a"]),   # in front of a
    inst("m3", "mug", 100, 100, occludes=["a", "m1"]),  # in front of a (and of m1), farther
    inst("m4", "mug", 510, 500, occludes=[]),      # nearest to a, occludes nothing
]


def _occ(relation, anchor="a", insts=OCC_INSTS, category="mug"):
    return run1(insts, step("s0", "select", filter={"category": "box"}),
                step("s1", "relate", anchor=ref("s0") if anchor == "a" else anchor,
                     relation=relation, filter={"category": category}))


def test_relate_in_front_of_and_behind():
    assert _occ("nearest") == "m4"                  # geometry alone picks m4
    assert _occ("in_front_of") == "m2"              # m2, m3 occlude a; m2 is nearer
    assert _occ("behind") == "m1"                   # a occludes m1
    # not symmetric: m1 occludes nothing, a is in front of m1 and behind m2 / m3
    assert _occ("in_front_of", anchor="m1", category="box") == "a"
    assert _occ("behind", anchor="m2", category="box") == "a"
    with pytest.raises(ValueError):                 # m1 occludes nothing: no box is behind it
        _occ("behind", anchor="m1", category="box")
    with pytest.raises(ValueError):                 # m4's occludes is empty
        _occ("behind", anchor="m4", category="box")
    # in_front_of the anchor m1: a and m3 (m3 farther)
    assert run1(OCC_INSTS, step("s0", "relate", anchor="m1", relation="in_front_of",
                                filter={})) == "a"
    assert run1(OCC_INSTS, step("s0", "relate", anchor="m1", relation="in_front_of",
                                filter={"exclude": ["a"]})) == "m3"


def test_count_occlusion_and_missing_occludes():
    count = lambda relation, anchor, insts=OCC_INSTS: run1(
        insts, step("s0", "count", filter={}, relation=relation, anchor=anchor))
    assert count("in_front_of", "a") == 2      # m2, m3
    assert count("behind", "a") == 1           # m1
    assert count("in_front_of", "m1") == 2     # a, m3
    assert count("behind", "m1") == 0          # m1 has no "occludes" key: empty list
    assert count("behind", "m3") == 2          # a, m1
    assert count("in_front_of", "m4") == 0
    # an instance listing itself is still never counted against itself
    insts = [dict(OCC_INSTS[0], occludes=["a", "m1"])] + OCC_INSTS[1:]
    assert count("behind", "a", insts) == 1
    # no instance has an occludes key at all: nothing is in front of / behind anything
    bare = [{k: v for k, v in i.items() if k != "occludes"} for i in OCC_INSTS]
    for relation in ("in_front_of", "behind"):
        for anchor in ("a", "m1", "m3"):
            assert count(relation, anchor, bare) == 0


# --- select ----------------------------------------------------------------

def test_select_ambiguous_and_missing_raise():
    insts = [inst("x", "star", 100, 100, color="blue"),
             inst("y", "star", 300, 100, color="blue"),
             inst("z", "star", 500, 100, color="green")]
    with pytest.raises(ValueError):
        run1(insts, step("s0", "select", filter={"category": "star", "color": "blue"}))
    with pytest.raises(ValueError):
        run1(insts, step("s0", "select", filter={"category": "moon"}))
    assert run1(insts, step("s0", "select", filter={"color": "green"})) == "z"
    # exclude makes the blue star unique
    assert run1(insts,
                step("s0", "select", filter={"color": "green"}),
                step("s1", "relate", anchor=ref("s0"), relation="nearest",
                     filter={"category": "star"}),
                step("s2", "select", filter={"category": "star", "color": "blue",
                                             "exclude": [ref("s1")]})) == "x"


# --- filter: size (literal or ref) and which keys may be refs ------------------------

SIZE_INSTS = [
    inst("k", "card", 900, 100, color="blue", size="large", text="7"),
    inst("g", "card", 900, 900, color="green", size="small", text="3"),
    inst("b1", "ball", 100, 100, size="large"),
    inst("b2", "ball", 300, 100, size="small"),
    inst("b3", "ball", 500, 100, size="large"),
    inst("b4", "ball", 700, 100, size="medium", color="blue"),
]


def test_filter_size_literal_and_ref():
    size_of = lambda card: step("s0", "attribute", instance=card, name="size")
    assert run1(SIZE_INSTS, step("s0", "count", filter={"category": "ball",
                                                        "size": "large"})) == 2
    assert run1(SIZE_INSTS, size_of("k"),                       # "large"
                step("s1", "count", filter={"category": "ball", "size": ref("s0")})) == 2
    assert run1(SIZE_INSTS, size_of("g"),                       # "small"
                step("s1", "select", filter={"category": "ball", "size": ref("s0")})) == "b2"
    # size and color refs together: blue (from k) and medium (from b4)
    assert run1(SIZE_INSTS, step("s0", "attribute", instance="k", name="color"),
                step("s1", "attribute", instance="b4", name="size"),
                step("s2", "count", filter={"size": ref("s1"), "color": ref("s0")})) == 1


def test_filter_refs_only_where_allowed():
    with pytest.raises(ValueError):   # a size ref must produce a size string (this one is "blue")
        run1(SIZE_INSTS, step("s0", "attribute", instance="k", name="color"),
             step("s1", "count", filter={"category": "ball", "size": ref("s0")}))
    with pytest.raises(ValueError):   # a color ref must produce a colour string, not an int
        run1(SIZE_INSTS, step("s0", "read_number", instance="k"),
             step("s1", "count", filter={"color": ref("s0")}))
    with pytest.raises(ValueError):   # category is literal only
        run1(SIZE_INSTS, step("s0", "attribute", instance="k", name="color"),
             step("s1", "count", filter={"category": ref("s0")}))
    with pytest.raises(ValueError):   # part_count is literal only
        run1(SIZE_INSTS, step("s0", "read_number", instance="g"),
             step("s1", "count", filter={"part_count": ref("s0")}))
    with pytest.raises(ValueError):   # text is literal only
        run1(SIZE_INSTS, step("s0", "attribute", instance="k", name="color"),
             step("s1", "count", filter={"text": ref("s0")}))
    with pytest.raises(ValueError):   # unknown filter key
        run1(SIZE_INSTS, step("s0", "count", filter={"shape": "round"}))
    # literal text / part_count still work
    assert run1(SIZE_INSTS, step("s0", "select", filter={"text": "3"})) == "g"


# --- superlative -------------------------------------------------------------

def test_superlative_tie_raises():
    insts = [inst("x", "die", 100, 100, area=500), inst("y", "die", 300, 100, area=500),
             inst("z", "die", 500, 100, area=200)]
    sup = lambda **kw: run1(insts, step("s0", "superlative", **kw))
    with pytest.raises(ValueError):
        sup(filter={"category": "die"}, key="area", order="max")
    assert sup(filter={"category": "die"}, key="area", order="min") == "z"
    with pytest.raises(ValueError):   # no instance matches
        sup(filter={"category": "card"}, key="area", order="min")


def test_superlative_part_count_skips_null_and_number_key():
    insts = [inst("f1", "flower", 100, 100, part="petals", part_count=5),
             inst("f2", "flower", 300, 100, part="petals", part_count=8),
             inst("f3", "flower", 500, 100),                       # no part count
             inst("c1", "card", 100, 800, text="12"),
             inst("c2", "card", 300, 800, text="9"),
             inst("c3", "card", 500, 800, text="XII")]             # not digits: left out
    sup = lambda cat, key, order: run1(insts, step("s0", "superlative", filter={"category": cat},
                                                   key=key, order=order))
    assert sup("flower", "part_count", "max") == "f2"
    assert sup("flower", "part_count", "min") == "f1"
    # numerically 12 > 9 (a string comparison would pick "9")
    assert sup("card", "number", "max") == "c1"
    assert sup("card", "number", "min") == "c2"


# --- compare -----------------------------------------------------------------------

CMP_INSTS = [
    inst("f1", "flower", 100, 100, part="petals", part_count=5, area=300),
    inst("f2", "flower", 300, 800, part="petals", part_count=8, area=900),
    inst("f3", "flower", 500, 100, area=600),                 # no part count
    inst("c1", "card", 100, 500, text="12", area=400),
    inst("c2", "card", 300, 500, text="9", area=400),
    inst("c3", "card", 500, 500, text="x7"),
    inst("c4", "card", 700, 500, text="12"),
]


def _cmp(a, b, key, order):
    return run1(CMP_INSTS, step("s0", "compare", a=a, b=b, key=key, order=order))


def test_compare_keys_and_orders():
    assert _cmp("f1", "f2", "part_count", "max") == "f2"
    assert _cmp("f1", "f2", "part_count", "min") == "f1"
    assert _cmp("f2", "f1", "area", "max") == "f2"
    assert _cmp("f2", "f1", "area", "min") == "f1"
    assert _cmp("f1", "f2", "center_x", "max") == "f2"
    assert _cmp("f1", "f2", "center_y", "min") == "f1"
    assert _cmp("c1", "c2", "number", "max") == "c1"     # 12 > 9 numerically
    assert _cmp("c2", "c1", "number", "min") == "c2"
    # a and b as refs
    assert run1(CMP_INSTS, step("s0", "select", filter={"text": "9"}),
                step("s1", "select", filter={"text": "x7"}),
                step("s2", "compare", a=ref("s0"), b="f3", key="area", order="max")) == "f3"


def test_compare_errors():
    with pytest.raises(ValueError):   # a and b must differ
        _cmp("f1", "f1", "area", "max")
    with pytest.raises(ValueError):   # ... also when one is a ref to the same instance
        run1(CMP_INSTS, step("s0", "select", filter={"part_count": 5}),
             step("s1", "compare", a=ref("s0"), b="f1", key="area", order="min"))
    with pytest.raises(ValueError):   # f3 has no part count
        _cmp("f1", "f3", "part_count", "max")
    with pytest.raises(ValueError):   # "x7" is not digits
        _cmp("c1", "c3", "number", "min")
    with pytest.raises(ValueError):   # flowers have no text
        _cmp("f1", "c1", "number", "max")
    with pytest.raises(ValueError):   # equal values (12 and 12)
        _cmp("c1", "c4", "number", "max")
    with pytest.raises(ValueError):   # equal areas (400 and 400)
        _cmp("c1", "c2", "area", "min")
    with pytest.raises(ValueError):   # unknown key
        _cmp("f1", "f2", "weight", "max")
    with pytest.raises(ValueError):   # unknown order
        _cmp("f1", "f2", "area", "largest")
    with pytest.raises(ValueError):   # missing argument
        run1(CMP_INSTS, step("s0", "compare", a="f1", b="f2", key="area"))


# --- count_letters / read_number ------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("HELLO", 5), ("Hi", 2), ("z", 1), ("AbCdEfGhIj", 10),
    ("AB3", None), ("A B", None), ("", None), (None, None), ("h\u00e9llo", None), ("12", None)])
def test_count_letters(text, expected):
    insts = [inst("k", "card", 100, 100, text=text)]
    prog = [step("s0", "select", filter={"category": "card"}),
            step("s1", "count_letters", instance=ref("s0"))]
    if expected is None:
        with pytest.raises(ValueError):
            run1(insts, *prog)
    else:
        assert run1(insts, *prog) == expected
        # usable in arithmetic
        assert run1(insts, *prog, step("s2", "add", a=ref("s1"), b=1)) == expected + 1


@pytest.mark.parametrize("text,expected", [
    ("7", 7), ("12", 12), ("007", 7), ("x7", None), ("", None), (None, None), ("1 2", None),
    ("-3", None), ("\u0663", None)])   # U+0663 ARABIC-INDIC DIGIT THREE is not ASCII
def test_read_number(text, expected):
    insts = [inst("k", "card", 100, 100, text=text)]
    prog = [step("s0", "read_number", instance="k")]
    if expected is None:
        with pytest.raises(ValueError):
            run1(insts, *prog)
    else:
        assert run1(insts, *prog) == expected


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
    btw = lambda a, b, insts: run1(insts, *prog, step("s2", "between", a=ref(a), b=ref(b),
                                                      filter={"category": "mug"}), **WIDE)
    with pytest.raises(ValueError):        # two mugs (m, k) are between
        btw("s0", "s1", insts)
    assert btw("s0", "s1", insts[:5]) == "m"   # drop k: m is the unique mug between
    assert btw("s1", "s0", insts[:5]) == "m"   # order of a and b does not matter


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


def test_between_anchors_sharing_a_center_raise():
    insts = [inst("a", "vase", 300, 300), inst("b", "lamp", 300, 300, half=50),
             inst("c", "mug", 300, 300)]
    for a, b in (("a", "b"), ("a", "a")):
        with pytest.raises(ValueError):
            run1(insts, step("s0", "between", a=a, b=b, filter={"category": "mug"}))
        with pytest.raises(ValueError):   # even when no instance matches the filter
            run1(insts, step("s0", "between", a=a, b=b, filter={"category": "cat"}))


# --- other documented failures -----------------------------------------------------

def test_other_documented_errors():
    insts = [inst("k", "card", 100, 100, text="x7"),
             inst("f", "flower", 300, 300)]
    errors = [
        [step("s0", "select", filter={"category": "card"}),          # text must be digits
         step("s1", "read_number", instance=ref("s0"))],
        [step("s0", "select", filter={"category": "flower"}),        # part_count must not be null
         step("s1", "count_parts", instance=ref("s0"))],
        [step("s0", "teleport", filter={})],                          # unknown op
        [step("s0", "count_parts", instance=ref("s1")),               # ref to a later step
         step("s1", "select", filter={"category": "flower"})],
        [step("s0", "count_parts", instance=ref("zz"))],              # ref to no step
        [step("s0", "select", filter={"category": "card"}),          # unknown relation
         step("s1", "relate", anchor=ref("s0"), relation="inside",
              filter={"category": "flower"})],
        [step("s0", "attribute", instance="k", name="shape")],        # unknown attribute name
        [step("s0", "superlative", filter={}, key="weight", order="max")],   # unknown key
        [step("s0", "superlative", filter={}, key="area", order="most")],    # unknown order
        [step("s0", "select", filter={"category": "card"}),          # duplicate step id
         step("s0", "select", filter={"category": "flower"})],
        [step("s0", "select")],                                       # missing argument
        [step("s0", "select", filter={"category": "card"}, anchor="f")],     # unexpected arg
        [step("s0", "count_parts", instance="nobody")],               # no such instance id
        [step("s0", "count", filter={}), step("s1", "add", a=ref("s0"), b="2")],  # not an int
    ]
    for steps in errors:
        with pytest.raises(ValueError):
            run1(insts, *steps)
    with pytest.raises(ValueError):   # output naming no step
        run_program(record(insts, [step("s0", "count", filter={})], output="s9"))
    # the hop tag does not affect execution
    rec = record(insts, [step("s0", "count", filter={}), step("s1", "add", a=ref("s0"), b=3)])
    rec["program"]["steps"][1]["hop"] = 7
    assert run_program(rec) == 5

"""The program executor on hand-built records, including every documented error."""
import pytest

from hopchain_jax.synth.program import Executor, ProgramError, execute


def inst(i, cat, box, color="red", text=None, part_count=None, area=100, size="medium"):
    return {"id": f"i{i}", "category": cat, "bbox": box, "area": area, "score": 1.0,
            "attributes": {"color": color, "size": size, "text": text, "part": "dots" if part_count else None,
                           "part_count": part_count}}


# A 1000x1000 image, so 0..1000 boxes are pixels.
SCENE = [
    inst(0, "sign", [450, 450, 550, 550], color="blue", text="CAFE"),
    inst(1, "ladybug", [100, 460, 180, 540], part_count=3, area=300),
    inst(2, "ladybug", [300, 470, 360, 530], part_count=5, color="orange", area=200),
    inst(3, "ladybug", [800, 100, 880, 180], part_count=5, color="yellow", area=900),
    inst(4, "card", [460, 800, 540, 900], text="17", color="green"),
    inst(5, "ball", [700, 470, 760, 530], color="orange"),
]


def run(steps, output=None):
    program = {"steps": [dict(s, hop=0) for s in steps], "output": output or steps[-1]["id"]}
    return Executor(SCENE, 1000, 1000).run(program)[0]


def test_select_relate_count_arithmetic():
    steps = [
        {"id": "a", "op": "select", "args": {"filter": {"category": "sign", "text": "CAFE"}}},
        {"id": "b", "op": "relate", "args": {"anchor": {"ref": "a"}, "relation": "left_of", "filter": {"category": "ladybug"}}},
        {"id": "c", "op": "count_parts", "args": {"instance": {"ref": "b"}}},
        {"id": "d", "op": "count", "args": {"filter": {"category": "ladybug"}, "relation": "left_of", "anchor": {"ref": "a"}}},
        {"id": "e", "op": "mul", "args": {"a": {"ref": "c"}, "b": {"ref": "d"}}},
    ]
    assert run(steps) == 5 * 2  # nearest ladybug left of the sign is i2 (5 dots); two ladybugs are left of it


def test_same_colour_chain_and_read_number():
    steps = [
        {"id": "a", "op": "select", "args": {"filter": {"category": "ball"}}},
        {"id": "c", "op": "attribute", "args": {"instance": {"ref": "a"}, "name": "color"}},
        {"id": "b", "op": "select", "args": {"filter": {"category": "ladybug", "color": {"ref": "c"}}}},
        {"id": "n", "op": "count_parts", "args": {"instance": {"ref": "b"}}},
        {"id": "k", "op": "select", "args": {"filter": {"category": "card"}}},
        {"id": "m", "op": "read_number", "args": {"instance": {"ref": "k"}}},
        {"id": "s", "op": "sub", "args": {"a": {"ref": "m"}, "b": {"ref": "n"}}},
    ]
    assert run(steps) == 17 - 5


def test_between_and_superlatives():
    assert run([
        {"id": "a", "op": "select", "args": {"filter": {"category": "ladybug", "part_count": 3}}},
        {"id": "b", "op": "select", "args": {"filter": {"category": "ball"}}},
        {"id": "c", "op": "between", "args": {"a": {"ref": "a"}, "b": {"ref": "b"}, "filter": {"category": "sign"}}},
    ]) == "i0"
    assert run([{"id": "s", "op": "superlative", "args": {"filter": {"category": "ladybug"}, "key": "area", "order": "max"}}]) == "i3"
    assert run([{"id": "s", "op": "superlative", "args": {"filter": {"category": "ladybug"}, "key": "center_y", "order": "min"}}]) == "i3"
    assert run([{"id": "s", "op": "superlative", "args": {"filter": {"category": "ladybug"}, "key": "center_x", "order": "min"}}]) == "i1"


@pytest.mark.parametrize("step, message", [
    ({"op": "select", "args": {"filter": {"category": "ladybug"}}}, "3 instances match"),
    ({"op": "select", "args": {"filter": {"category": "mug"}}}, "0 instances match"),
    ({"op": "superlative", "args": {"filter": {"category": "ladybug"}, "key": "part_count", "order": "max"}}, "tie"),
    ({"op": "read_number", "args": {"instance": "i0"}}, "shows no number"),
    ({"op": "count_parts", "args": {"instance": "i0"}}, "no countable parts"),
    ({"op": "fly", "args": {}}, "unknown op"),
    ({"op": "select", "args": {"filter": {"shape": "round"}}}, "unknown keys"),
    ({"op": "relate", "args": {"anchor": "i1", "relation": "left_of", "filter": {"category": "ladybug"}}}, "no instance"),
])
def test_documented_errors(step, message):
    with pytest.raises(ProgramError, match=message):
        run([dict(step, id="x")])


def test_reference_to_a_later_step_is_an_error():
    with pytest.raises(ProgramError, match="unknown or later step"):
        run([{"id": "a", "op": "count_parts", "args": {"instance": {"ref": "b"}}},
             {"id": "b", "op": "select", "args": {"filter": {"category": "card"}}}], output="a")


def test_geometry_uses_pixels_not_normalised_units():
    # In a wide image, 0..1000 units are not square: i1 is nearer in pixels though farther in units.
    scene = [inst(0, "sign", [500, 500, 500 + 1, 500 + 1]), inst(1, "ball", [500, 0, 501, 1]),
             inst(2, "ball", [800, 500, 801, 501])]
    record = {"image": {"width": 2000, "height": 200}, "instances": scene,
              "program": {"steps": [{"id": "a", "op": "relate", "hop": 0, "args": {
                  "anchor": "i0", "relation": "nearest", "filter": {"category": "ball"}}}], "output": "a"}}
    assert execute(record) == "i1"


# -- v2: cones, farthest, occlusion, compare, count_letters, size refs ------------------------------

def _scene_v2():
    """An anchor sign at (500, 500) of a 1000x1000 image and balls around it."""
    return [
        inst(0, "sign", [490, 490, 510, 510], text="GARDEN"),
        inst(1, "ball", [290, 480, 310, 500]),  # 200 left, 10 up: left_of (1 degree... well inside)
        inst(2, "ball", [690, 190, 710, 210], size="large"),  # 200 right, 300 up: above, not right_of
        inst(3, "ball", [790, 490, 810, 510]),  # 300 right, level: right_of
        inst(4, "ball", [590, 590, 610, 610]),  # 100 right, 100 down: exactly on the cone edge: no cone
        inst(5, "mug", [100, 100, 140, 140]),
    ]


def run_v2(steps, scene=None):
    program = {"steps": [dict(s, hop=0) for s in steps], "output": steps[-1]["id"]}
    return Executor(scene or _scene_v2(), 1000, 1000).run(program)[0]


def test_directions_are_cones_not_half_planes():
    # i2 is to the right of the sign's center but more above it than right of it.
    assert run_v2([{"id": "a", "op": "relate", "args": {"anchor": "i0", "relation": "right_of",
                                                        "filter": {"category": "ball"}}}]) == "i3"
    assert run_v2([{"id": "a", "op": "relate", "args": {"anchor": "i0", "relation": "above",
                                                        "filter": {"category": "ball"}}}]) == "i2"
    # i4 sits exactly on the edge between right_of and below: in neither cone.
    assert run_v2([{"id": "c", "op": "count", "args": {"filter": {"category": "ball"}, "relation": "below",
                                                       "anchor": "i0"}}]) == 0
    assert run_v2([{"id": "c", "op": "count", "args": {"filter": {"category": "ball"}, "relation": "right_of",
                                                       "anchor": "i0"}}]) == 1


def test_farthest_and_its_tie():
    assert run_v2([{"id": "a", "op": "relate", "args": {"anchor": "i0", "relation": "farthest",
                                                        "filter": {"category": "ball"}}}]) == "i2"
    scene = _scene_v2()[:2] + [inst(6, "ball", [690, 480, 710, 500])]  # both balls 200 px away
    with pytest.raises(ProgramError, match="tie"):
        run_v2([{"id": "a", "op": "relate", "args": {"anchor": "i0", "relation": "farthest",
                                                     "filter": {"category": "ball"}}}], scene)


def test_occlusion_relations_read_the_occludes_lists():
    scene = _scene_v2()
    scene[0]["occludes"] = ["i4"]          # the sign hides part of ball i4
    scene[3]["occludes"] = ["i0"]          # ball i3 hides part of the sign
    assert run_v2([{"id": "a", "op": "relate", "args": {"anchor": "i0", "relation": "behind",
                                                        "filter": {"category": "ball"}}}], scene) == "i4"
    assert run_v2([{"id": "a", "op": "relate", "args": {"anchor": "i0", "relation": "in_front_of",
                                                        "filter": {"category": "ball"}}}], scene) == "i3"
    assert run_v2([{"id": "c", "op": "count", "args": {"filter": {"category": "ball"}, "relation": "behind",
                                                       "anchor": "i0"}}], scene) == 1
    with pytest.raises(ProgramError, match="no instance"):  # a missing occludes list is empty
        run_v2([{"id": "a", "op": "relate", "args": {"anchor": "i5", "relation": "in_front_of",
                                                     "filter": {"category": "ball"}}}], scene)


def test_compare_and_count_letters_and_size_refs():
    scene = _scene_v2()
    scene[1]["area"], scene[2]["area"] = 50, 400
    assert run_v2([{"id": "a", "op": "compare", "args": {"a": "i1", "b": "i2", "key": "area", "order": "max"}}], scene) == "i2"
    assert run_v2([{"id": "a", "op": "compare", "args": {"a": "i1", "b": "i2", "key": "area", "order": "min"}}], scene) == "i1"
    with pytest.raises(ProgramError, match="same instance"):
        run_v2([{"id": "a", "op": "compare", "args": {"a": "i1", "b": "i1", "key": "area", "order": "max"}}], scene)
    with pytest.raises(ProgramError, match="tie"):
        run_v2([{"id": "a", "op": "compare", "args": {"a": "i3", "b": "i4", "key": "area", "order": "max"}}], scene)
    assert run_v2([{"id": "n", "op": "count_letters", "args": {"instance": "i0"}}]) == 6
    with pytest.raises(ProgramError, match="shows no word"):
        run_v2([{"id": "n", "op": "count_letters", "args": {"instance": "i1"}}])
    assert run_v2([
        {"id": "s", "op": "attribute", "args": {"instance": "i2", "name": "size"}},
        {"id": "c", "op": "count", "args": {"filter": {"category": "ball", "size": {"ref": "s"}}}},
    ]) == 1


def test_overrides_and_resume_give_counterfactual_answers():
    steps = [{"id": "a", "op": "relate", "hop": 0, "args": {"anchor": "i0", "relation": "right_of", "filter": {"category": "ball"}}},
             {"id": "c", "op": "count", "hop": 1, "args": {"filter": {"category": "ball"}, "relation": "left_of", "anchor": {"ref": "a"}}}]
    ex = Executor(_scene_v2(), 1000, 1000)
    program = {"steps": steps, "output": "c"}
    assert ex.run(program)[0] == 2  # left of i3: i1 and i4 (200 left, 100 down); i2 is mostly above
    assert ex.run(program, overrides={"a": "i1"})[0] == 0
    assert ex.run(program, start=1, env={"a": "i2"})[0] == 1  # i1: 400 left, 290 down

"""The counterfactual check: a chain passes only if every perception step matters to its answer."""
from hopchain_jax.synth.counterfactual import counterfactual_failures


def inst(i, cat, box, color="red", text=None, part_count=None):
    return {"id": f"i{i}", "category": cat, "bbox": box, "area": 100, "score": 1.0,
            "attributes": {"color": color, "size": "medium", "text": text, "part": "dots" if part_count else None,
                           "part_count": part_count}}


SCENE = [
    inst(1, "ladybug", [100, 460, 180, 540], part_count=3),
    inst(2, "ladybug", [300, 470, 360, 530], color="orange", part_count=5),
    inst(3, "ball", [700, 470, 760, 530], color="blue"),
    inst(4, "card", [460, 800, 540, 900], text="17", color="green"),
    inst(5, "ball", [700, 100, 760, 160], color="blue"),
]


def record(steps):
    return {"image": {"width": 1000, "height": 1000}, "instances": SCENE,
            "program": {"steps": [dict(s, hop=k) for k, s in enumerate(steps)], "output": steps[-1]["id"]}}


RED_LADYBUG = {"id": "a", "op": "select", "args": {"filter": {"category": "ladybug", "color": "red"}}}


def test_a_chain_whose_every_step_matters_passes():
    assert counterfactual_failures(record([RED_LADYBUG, {"id": "n", "op": "count_parts", "args": {"instance": {"ref": "a"}}}])) == []


def test_a_step_whose_pick_does_not_matter_fails():
    # The ladybug is found and then never used: picking the other ladybug gives the same answer.
    failures = counterfactual_failures(record([
        RED_LADYBUG,
        {"id": "b", "op": "relate", "args": {"anchor": "i4", "relation": "nearest", "filter": {"category": "ball"}}},
        {"id": "c", "op": "count", "args": {"filter": {"category": "ladybug"}, "relation": "left_of", "anchor": {"ref": "b"}}},
    ]))
    assert any("step a" in f and "same answer" in f for f in failures), failures


def test_picking_the_only_instance_of_a_category_is_no_perception_work():
    steps = [{"id": "k", "op": "select", "args": {"filter": {"category": "card", "text": "17"}}},
             {"id": "n", "op": "read_number", "args": {"instance": {"ref": "k"}}}]
    assert any("only card" in f for f in counterfactual_failures(record(steps)))
    assert not any("only card" in f for f in counterfactual_failures(record(steps), require_alternatives=False))


def test_a_number_that_cannot_change_the_answer_fails():
    # 0 balls to the left of the leftmost ladybug, times its dots: the dot count does not matter.
    failures = counterfactual_failures(record([
        RED_LADYBUG,
        {"id": "n", "op": "count_parts", "args": {"instance": {"ref": "a"}}},
        {"id": "z", "op": "count", "args": {"filter": {"category": "ball"}, "relation": "left_of", "anchor": {"ref": "a"}}},
        {"id": "m", "op": "mul", "args": {"a": {"ref": "n"}, "b": {"ref": "z"}}},
    ]))
    assert any("step n" in f for f in failures), failures


def test_a_mistake_that_breaks_a_later_reference_counts_as_detected():
    steps = [RED_LADYBUG,
             {"id": "b", "op": "relate", "args": {"anchor": {"ref": "a"}, "relation": "above", "filter": {"category": "ball"}}},
             {"id": "n", "op": "count_parts", "args": {"instance": {"ref": "a"}}}]
    rec = record(steps)
    rec["instances"] = SCENE[:2] + [inst(5, "ball", [100, 100, 160, 160], color="blue"), inst(3, "ball", [900, 900, 960, 960], color="blue")]
    # i2 has no ball directly above it: a reader who picked it would be stuck, which is detectable
    # (and its 5 dots differ from i1's 3 anyway). Step b's other ball gives the same answer.
    failures = counterfactual_failures(rec)
    assert not any("step a" in f for f in failures) and any("step b" in f for f in failures), failures


def test_a_compare_whose_swap_does_not_change_the_answer_fails():
    import copy
    rec = {"image": {"width": 1000, "height": 1000}, "instances": copy.deepcopy(SCENE)}
    rec["instances"][4].update(bbox=[100, 100, 160, 160], area=300)   # ball i5: top left, larger than ball i3
    compare = {"id": "c", "op": "compare", "args": {"a": "i3", "b": "i5", "key": "area", "order": "max"}, "hop": 0}

    def with_steps(*steps):
        return dict(rec, program={"steps": [compare, *steps], "output": steps[-1]["id"]})
    # Both balls are blue, so "the ladybugs of its colour" count the same for either: the compare does no work.
    color = {"id": "k", "op": "attribute", "args": {"instance": {"ref": "c"}, "name": "color"}, "hop": 1}
    same = counterfactual_failures(with_steps(color, {"id": "n", "op": "count", "hop": 1, "args": {
        "filter": {"category": "ladybug", "color": {"ref": "k"}}}}), require_alternatives=False)
    assert any("step c (compare" in f and "picking i3 instead of i5" in f for f in same), same
    # The ladybug nearest the larger ball differs from the one nearest the smaller: the compare matters.
    nearest = {"id": "l", "op": "relate", "hop": 1, "args": {"anchor": {"ref": "c"}, "relation": "nearest",
                                                             "filter": {"category": "ladybug"}}}
    parts = {"id": "n", "op": "count_parts", "args": {"instance": {"ref": "l"}}, "hop": 2}
    assert not [f for f in counterfactual_failures(with_steps(nearest, parts), require_alternatives=False)
                if "step c" in f]

"""Dataset statistics and the blind baselines on hand-built records."""
from hopchain_jax.synth.stats import blind_baselines, blind_keys, dataset_stats


def inst(i, cat, x, part_count=None, color="red"):
    return {"id": f"i{i}", "category": cat, "bbox": [x, 450, x + 40, 490], "area": 100, "score": 1.0,
            "attributes": {"color": color, "size": "medium", "text": None, "part": "dots" if part_count else None,
                           "part_count": part_count}}


def record(dots, balls_left):
    """The red ladybug's dots plus the balls directly left of it; the ladybug stands at x = 500."""
    instances = [inst(0, "ladybug", 500, part_count=dots), inst(1, "ladybug", 900, part_count=1, color="blue")]
    instances += [inst(2 + k, "ball", 100 + 50 * k) for k in range(balls_left)]
    steps = [{"id": "a", "op": "select", "hop": 0, "args": {"filter": {"category": "ladybug", "color": "red"}}},
             {"id": "n", "op": "count_parts", "hop": 1, "args": {"instance": {"ref": "a"}}},
             {"id": "c", "op": "count", "hop": 2, "args": {"filter": {"category": "ball"}, "relation": "left_of", "anchor": {"ref": "a"}}},
             {"id": "s", "op": "add", "hop": 2, "args": {"a": {"ref": "n"}, "b": {"ref": "c"}}}]
    return {"variant": "full", "image": {"width": 1000, "height": 1000}, "instances": instances,
            "program": {"steps": steps, "output": "s"}, "answer": dots + balls_left, "hops": [{}, {}, {}]}


def test_blind_keys_name_what_the_words_say():
    said = blind_keys(record(3, 2)["program"])
    assert said == {"a": "ladybug", "n": ("count_parts", "ladybug", ""), "c": ("count", "ball", "left_of"), "s": "add"}


def test_text_only_rule_learns_modal_values_leave_one_out():
    # 3 dots + 2 balls in 4 of 6 records: each of those is guessed from the other five.
    records = [record(3, 2)] * 4 + [record(5, 1), record(6, 3)]
    blind = blind_baselines(records)
    assert blind["text_only"] == round(4 / 6, 4) and blind["most_common"] == round(4 / 6, 4)
    # Spread-out values: nothing is guessable.
    records = [record(d, b) for d, b in [(1, 1), (2, 3), (4, 2), (6, 4), (3, 5), (5, 6)]]
    assert blind_baselines(records)["text_only"] == 0.0


def test_dataset_stats_counts_variants_ops_and_answers():
    stats = dataset_stats([record(3, 2), record(3, 2), dict(record(1, 1), variant="single")])
    assert stats["variants"] == {"full": 2, "half": 0, "single": 1}
    assert stats["ops"] == {"select": 2, "count_parts": 2, "count": 2, "add": 2}
    assert stats["answers"]["full"] == {"5": 2} and stats["most_common_answer"] == {"answer": 5, "share": 1.0}

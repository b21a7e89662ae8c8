"""`hopchain inspect --html`: statistics, seeded sample, filters, overlay and hop-highlight data of the gallery."""
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from hopchain_jax.cli import main
from hopchain_jax.data.store import HopChainDataset, write_shard
from hopchain_jax.inspect.gallery import PALETTE, instance_colors, record_ops, used_instances, write_gallery

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SVG_LEAVES = {"rect"}  # written as <rect .../>


class Page(HTMLParser):
    """Cards with what the tests look at, plus a check that every element is closed in order."""

    def __init__(self):
        super().__init__()
        self.cards, self.stack, self.errors = [], [], []
        self.in_relatives = False
        self.stats_seen, self.bars, self.in_stats, self.text = False, 0, False, []
        self.card = None
        self.group = None

    def handle_startendtag(self, tag, attrs):
        self._start(tag, dict(attrs))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._start(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def _start(self, tag, a):
        cls = (a.get("class") or "").split()
        if tag == "section" and "card" in cls:
            self.card = {"id": a["id"], "variant": a["data-variant"], "answer": a["data-answer"],
                         "ops": a["data-ops"].split(), "world": a["data-world"], "imgs": [], "svgs": [], "groups": [],
                         "hops": [], "steps": [], "legend": [], "links": [], "relatives": []}
            self.cards.append(self.card)
        if tag == "section" and a.get("id") == "stats":
            self.stats_seen = self.in_stats = True
        if tag == "section" and "card" in cls:
            self.in_stats = False
        self.bars += self.in_stats and tag == "div" and "col" in cls
        c = self.card
        if c is None:
            return
        if tag == "img":
            c["imgs"].append(a["src"])
        elif tag == "svg":
            c["svgs"].append(a)
        elif tag == "g" and "inst" in cls:
            self.group = {"inst": a["data-inst"], "rects": []}
            c["groups"].append(self.group)
        elif tag == "rect":
            self.group["rects"].append(a)  # a rect outside an instance group fails here
        elif tag == "tr" and "hop" in cls:
            c["hops"].append(a)
        elif tag == "tr" and "step" in cls:
            c["steps"].append(a)
        elif tag == "li" and "data-inst" in a:
            c["legend"].append(a["data-inst"])
        elif tag == "a" and a.get("href", "").startswith("#"):
            c["links"].append(a["href"][1:])
        elif tag == "div" and "relatives" in cls:
            self.in_relatives = True
        elif tag == "span" and "q" in cls and self.in_relatives:
            c["relatives"].append(None)   # filled by handle_data

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag == "div" and self.in_relatives and "div" not in self.stack[-3:]:
            self.in_relatives = False
        if tag == "section":
            self.card = None
            self.in_stats = False

    def handle_data(self, data):
        self.text.append(data)
        if self.card is not None and self.card["relatives"] and self.card["relatives"][-1] is None:
            self.card["relatives"][-1] = data


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    return page


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from hopchain_jax.synth.pipeline import SynthConfig, run_synthesis
    root = tmp_path_factory.mktemp("gallery") / "ds"
    run_synthesis(root, SynthConfig(num_images=8, images_per_shard=4), workers=1, progress=False)
    records = {r["id"]: r for r in HopChainDataset(root).records()}
    return root, records


def _gallery(root, out, *args):
    assert main(["inspect", str(root), "--html", str(out), *map(str, args)]) == 0
    return parse(out)


def test_statistics_over_every_record(dataset, tmp_path):
    from hopchain_jax.synth.stats import dataset_stats
    root, records = dataset
    stats = dataset_stats(list(records.values()))
    page = _gallery(root, tmp_path / "g.html", "--variant", "single", "--limit", 2)
    text = " ".join(page.text)
    assert page.stats_seen and "Dataset statistics" in text and f"over all {len(records)} records" in text
    assert stats["blind"]["text_only_rule"] in text and "Blind baselines" in text
    assert page.bars == len(stats["answers"]["full"]) > 0  # one bar per full-query answer
    for op in stats["ops"]:
        assert op in text
    assert len(page.cards) == 2  # the sample is filtered; the statistics are not


def test_cards_overlay_legend_and_hop_highlight_data(dataset, tmp_path):
    root, records = dataset
    page = _gallery(root, tmp_path / "g.html", "--limit", 20)
    assert len(page.cards) == 20
    for card in page.cards:
        rec = records[card["id"]]
        used = used_instances(rec)
        assert card["variant"] == rec["variant"] and card["answer"] == str(rec["answer"])
        assert len(card["imgs"]) == 1 and card["imgs"][0].startswith("data:image/jpeg;base64,")
        (svg,) = card["svgs"]
        assert svg["viewbox"] == "0 0 1000 1000" and svg["preserveaspectratio"] == "none"
        # one rect per used instance, in its bbox, and a legend entry for each
        assert [g["inst"] for g in card["groups"]] == used and card["legend"] == used
        boxes = {i["id"]: i["bbox"] for i in rec["instances"]}
        for g in card["groups"]:
            (r,) = g["rects"]
            x0, y0, x1, y1 = boxes[g["inst"]]
            assert [float(r["x"]), float(r["y"]), float(r["width"]), float(r["height"])] == [x0, y0, x1 - x0, y1 - y0]
        # each hop row names exactly that hop's instances; program steps carry their hop
        assert [(h["data-hop"], h["data-instances"].split()) for h in card["hops"]] == \
            [(str(h["index"]), h["instance_ids"]) for h in rec["hops"]]
        assert [s["data-hop"] for s in card["steps"]] == [str(s["hop"]) for s in rec["program"]["steps"]]
        assert card["ops"] == record_ops(rec)


def test_filters_restrict_cards(dataset, tmp_path):
    root, records = dataset
    n_single = sum(r["variant"] == "single" for r in records.values())
    page = _gallery(root, tmp_path / "s.html", "--variant", "single", "--limit", 1000)
    assert len(page.cards) == n_single > 0 and {c["variant"] for c in page.cards} == {"single"}
    page = _gallery(root, tmp_path / "fh.html", "--variant", "full", "--variant", "half", "--limit", 1000)
    assert {c["variant"] for c in page.cards} == {"full", "half"}
    assert len(page.cards) == sum(r["variant"] != "single" for r in records.values())
    # an op every record does not use, and an answer that is not the only one
    ops = sorted({op for r in records.values() for op in record_ops(r)})
    op = next(o for o in ops if 0 < sum(o in record_ops(r) for r in records.values()) < len(records))
    page = _gallery(root, tmp_path / "o.html", "--op", op, "--limit", 1000)
    assert len(page.cards) == sum(op in record_ops(r) for r in records.values())
    assert all(op in record_ops(records[c["id"]]) for c in page.cards)
    answer = max({r["answer"] for r in records.values()}, key=lambda a: sum(r["answer"] == a for r in records.values()))
    page = _gallery(root, tmp_path / "a.html", "--answer", answer, "--variant", "full", "--limit", 1000)
    want = [i for i, r in records.items() if r["answer"] == answer and r["variant"] == "full"]
    assert sorted(c["id"] for c in page.cards) == sorted(want) and want
    # the page's own filter controls list what is on the page
    html_text = (tmp_path / "o.html").read_text()
    assert 'id="f-variant"' in html_text and 'id="f-op"' in html_text and 'id="f-answer"' in html_text


def test_seed_changes_the_sample(dataset, tmp_path):
    root, records = dataset
    order = list(records)

    def ids(seed):
        return [c["id"] for c in _gallery(root, tmp_path / f"s{seed}.html", "--limit", 12, "--seed", seed).cards]

    a, b = ids(0), ids(1)
    assert len(a) == len(b) == 12 and a != b and ids(0) == a
    assert a == sorted(a, key=order.index)  # cards in dataset order
    assert len(_gallery(root, tmp_path / "all.html", "--limit", 10_000).cards) == len(records)


def _hand_dataset(root):
    """Two records in schema v2 (combine, occludes, variant_of) and one without the optional fields."""
    img = np.zeros((720, 1280, 3), np.uint8)
    img[100:300, 200:600] = 200
    inst = [
        {"id": "i0", "category": "die", "bbox": [100, 100, 400, 500], "area": 10, "score": 1.0,
         "attributes": {"color": "red", "size": "large", "text": None, "part": "pips", "part_count": 5},
         "occludes": ["i2"]},
        {"id": "i1", "category": "card", "bbox": [500, 200, 700, 600], "area": 10, "score": 1.0,
         "attributes": {"color": "blue", "size": "small", "text": "17", "part": None, "part_count": None}},
        {"id": "i2", "category": "star", "bbox": [300, 300, 600, 900], "area": 10, "score": 1.0,
         "attributes": {"color": "green", "size": "medium", "text": None, "part": "points", "part_count": 6},
         "occludes": []},
    ]
    image = {"shard": "shard-00000", "index": 0, "width": 1280, "height": 720, "sha256": "0" * 64}
    hops = [
        {"index": 0, "kind": "perception", "level": 1, "op": "select", "instance_ids": ["i0"], "depends_on": [],
         "text": "Look at the red die.", "value": "i0", "combine": None},
        {"index": 1, "kind": "instance_chain", "level": 2, "op": "relate", "instance_ids": ["i0", "i2"],
         "depends_on": [0], "text": "Find the star below it.", "value": "i2", "combine": None},
        {"index": 2, "kind": "perception", "level": 1, "op": "count_parts", "instance_ids": ["i2"], "depends_on": [1],
         "text": "Count its points.", "value": 6, "combine": None},
        {"index": 3, "kind": "perception", "level": 2, "op": "read_text", "instance_ids": ["i1"], "depends_on": [2],
         "text": "Read the card and add.", "value": 23, "combine": {"op": "add", "with_hop": 2, "value": 23}},
    ]
    steps = [{"id": "s0", "op": "select", "args": {"filter": {"category": "die", "color": "red"}}, "hop": 0},
             {"id": "s1", "op": "relate", "hop": 1,
              "args": {"anchor": {"ref": "s0"}, "filter": {"category": "star"}, "relation": "below"}},
             {"id": "s2", "op": "count_parts", "args": {"instance": {"ref": "s1"}}, "hop": 2},
             {"id": "s3", "op": "select", "args": {"filter": {"category": "card"}}, "hop": 3},
             {"id": "s4", "op": "read_number", "args": {"instance": {"ref": "s3"}}, "hop": 3},
             {"id": "s5", "op": "add", "args": {"a": {"ref": "s2"}, "b": {"ref": "s4"}}, "hop": 3}]
    full = {"id": "full0", "variant": "full", "variant_of": None, "question": "How many?", "answer": 23,
            "rationale": "six points and 17", "image": image, "instances": inst, "hops": hops,
            "program": {"steps": steps, "output": "s5"}}
    single = {"id": "single0", "variant": "single", "variant_of": "full0", "question": "Read it.", "answer": 17,
              "rationale": None, "image": image, "instances": [{k: v for k, v in inst[1].items()}],
              "hops": [{k: v for k, v in hops[3].items() if k != "combine"} | {"index": 0, "depends_on": [],
                                                                                  "value": 17}],
              "program": {"steps": [dict(steps[3], hop=0), dict(steps[4], hop=0)], "output": "s4"}}
    write_shard(root, 0, [img], [np.zeros((720, 1280), np.uint8)], [full, single], {})


def test_schema_v2_fields_and_missing_ones(tmp_path):
    root = tmp_path / "hand"
    _hand_dataset(root)
    out = tmp_path / "h.html"
    assert write_gallery(root, out) == 2
    page = parse(out)
    text = " ".join(page.text)
    full, single = page.cards
    assert "add with hop 2 → 23" in text and "in front of: i2" in text and 'text "17"' in text
    assert single["links"] == ["full0"] and full["links"] == ["single0"]  # variant_of links both ways
    assert [g["inst"] for g in full["groups"]] == ["i0", "i2", "i1"] and single["legend"] == ["i1"]
    # the 1280x720 boxes are drawn in the 0..1000 viewBox as stored
    r = full["groups"][0]["rects"][0]
    assert (r["x"], r["y"], r["width"], r["height"]) == ("100", "100", "300", "400")
    # without the full card on the page, the link becomes plain text
    assert write_gallery(root, tmp_path / "s.html", variants=("single",)) == 1
    assert parse(tmp_path / "s.html").cards[0]["links"] == []
    assert "not on this page" in (tmp_path / "s.html").read_text()
    assert not (tmp_path / "s.html.tmp").exists()
    json.dumps(page.cards)  # nothing odd came out of the attributes


def test_an_instance_keeps_its_colour_across_the_variants_of_a_chain(dataset):
    """Colours follow the image's instance list, not each card's first-use order: a full chain and its
    half / single variants colour a shared instance alike, and no card gives two instances one colour."""
    _, records = dataset
    shared = 0
    for rec in records.values():
        colors = instance_colors(rec, used_instances(rec))
        assert len(set(colors.values())) == len(colors) and set(colors.values()) <= set(PALETTE)
        parent = records.get(rec.get("variant_of") or "")
        if parent is None:
            continue
        parent_colors = instance_colors(parent, used_instances(parent))
        place = {inst["id"]: n for n, inst in enumerate(rec["instances"])}
        for inst_id, color in colors.items():
            if inst_id in parent_colors and place[inst_id] < len(PALETTE):
                shared += 1
                assert color == parent_colors[inst_id], (rec["id"], inst_id)
    assert shared > 20
    # an instance past the palette takes the first colour free on its card; the others keep theirs
    rec = {"instances": [{"id": f"i{n}"} for n in range(len(PALETTE) + 2)]}
    colors = instance_colors(rec, [f"i{len(PALETTE) + 1}", "i1", "i2"])
    assert colors == {f"i{len(PALETTE) + 1}": PALETTE[3], "i1": PALETTE[1], "i2": PALETTE[2]}
    assert list(colors) == [f"i{len(PALETTE) + 1}", "i1", "i2"]


def test_ablations_sit_beside_their_chain_with_world_filter_and_thumbnails(dataset, tmp_path):
    import base64
    import io

    from PIL import Image

    from hopchain_jax.inspect.gallery import MAX_SIDE, record_world
    root, records = dataset
    page = _gallery(root, tmp_path / "r.html", "--limit", 60)
    children = {}
    for r in records.values():
        if r.get("variant_of"):
            children.setdefault(r["variant_of"], []).append(r)
    for card in page.cards:
        rec = records[card["id"]]
        # a full chain lists its half / single variants' questions; a variant its full chain's
        want = [records[rec["variant_of"]]] if rec.get("variant_of") else children.get(rec["id"], [])
        assert sorted(card["relatives"]) == sorted(o["question"] for o in want), card["id"]
        assert card["world"] == record_world(rec) == "procedural"
        (src,) = card["imgs"]
        thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert max(thumb.size) <= MAX_SIDE
    assert any(c["relatives"] for c in page.cards if c["variant"] == "full")
    assert (tmp_path / "r.html").stat().st_size < 2_000_000 * len(page.cards) / 60
    assert 'id="f-world"' in (tmp_path / "r.html").read_text()
    assert record_world({"variant": "external"}) == "external"
    assert record_world({"variant": "full", "provenance": {"backend": {"composition": "learnable-chain-v1"}}}) == "learnable"
    assert record_world({"variant": "full", "provenance": {"backend": {"composition": "vlm-writer"}}}) == "photo"

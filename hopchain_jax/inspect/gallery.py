"""`hopchain inspect DIR --html OUT.html`: a self-contained HTML gallery of queries.

The page opens with statistics over every record of the dataset (`hopchain_jax.synth.stats.dataset_stats`),
then shows a seeded random sample of the records that pass the filters (variant, program op, answer).
Each card shows the image once (JPEG data URL) under an SVG overlay with the bounding box of every
instance the query uses (dashed: an object it only counts), tagged with its id (the tags are for the reader of the gallery, never part of a
question), a legend of those instances, the question, the answer, the variant (linked to its full chain
when that card is on the page), the hops (hovering or clicking a hop highlights its instances and its
program steps), the program and the gold rationale; beside a full chain, its half / single variants' questions and answers,
and beside a variant, its full chain's. Images are JPEG thumbnails (MAX_SIDE). Filters in the page (variant,
op, answer, world) hide cards without reloading.
The page needs no external asset.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import random
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from hopchain_jax.data.store import HopChainDataset
from hopchain_jax.variants import CHAIN_VARIANTS

VARIANTS = CHAIN_VARIANTS
# Instance colours, dark enough for white id tags (instance_colors picks them).
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0a9396", "#f032e6", "#9a6324", "#800000",
           "#000075", "#808000", "#469990")
JPEG_QUALITY = 65
MAX_SIDE = 384   # embedded images are thumbnails of this longest side (shown at 480 px; bboxes are
                 # normalised, so unaffected): 60 cards of the default world stay under 2 MB
#: provenance.backend.composition prefix -> the world a record comes from (photos: any other composer)
WORLDS = (("procedural-chain", "procedural"), ("learnable-chain", "learnable"))

e = html.escape


def used_instances(rec: dict) -> list[str]:
    """Ids of the instances the hops use, in first-use order."""
    return list(dict.fromkeys(i for hop in rec.get("hops") or [] for i in hop.get("instance_ids") or []))


def instance_colors(rec: dict, used: list[str]) -> dict[str, str]:
    """A colour per used instance: the n-th instance of the image's instance list (which every record of
    an image shares) gets PALETTE[n], so a full chain and its half / single variants colour an instance
    alike. Instances past the palette's length take the first colour free on the card from
    PALETTE[n % len(PALETTE)] on, so no card shows two instances in one colour (up to len(PALETTE))."""
    place = {inst.get("id"): n for n, inst in enumerate(rec.get("instances") or [])}
    colors: dict[str, str] = {}
    for inst_id in sorted(used, key=lambda i: place.get(i, len(place))):   # the palette's own places first
        k = place.get(inst_id, len(place))
        while PALETTE[k % len(PALETTE)] in colors.values() and len(colors) < len(PALETTE):
            k += 1
        colors[inst_id] = PALETTE[k % len(PALETTE)]
    return {inst_id: colors[inst_id] for inst_id in used}


def record_ops(rec: dict) -> list[str]:
    """The ops of the record's program steps (the hops' ops when it has no program), first-use order."""
    steps = (rec.get("program") or {}).get("steps") or []
    ops = [s.get("op") for s in steps] if steps else [h.get("op") for h in rec.get("hops") or []]
    return list(dict.fromkeys(str(op) for op in ops if op))


def record_world(rec: dict) -> str:
    """The world a record comes from: "procedural" (the default synthetic world), "learnable" (synth/
    learnable.py), "photo" (real images through the model-driven pipeline) or "external" (imported)."""
    if rec.get("variant") == "external":
        return "external"
    composition = str((((rec.get("provenance") or {}).get("backend")) or {}).get("composition") or "")
    return next((world for prefix, world in WORLDS if composition.startswith(prefix)), "photo")


def counted_only(rec: dict) -> set[str]:
    """Instances the record only counts: listed by a hop whose form draws its instances dashed (a counted
    set: hops.outline) and found by no program step. Empty when the program does not run."""
    from hopchain_jax.synth.hops import outline
    from hopchain_jax.synth.program import Executor, ProgramError
    counted = {i for hop in rec.get("hops") or [] if outline(str(hop.get("op"))) == "dashed"
               for i in hop.get("instance_ids") or []}
    if not counted or not rec.get("program"):
        return set()
    try:
        image = rec.get("image") or {}
        _, env = Executor(rec.get("instances") or [], image.get("width", 1), image.get("height", 1)).run(rec["program"])
    except (ProgramError, KeyError, TypeError, ValueError):
        return set()
    return counted - {v for v in env.values() if isinstance(v, str)}


def _jpeg_data_url(image: np.ndarray) -> str:
    pil = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    if max(pil.size) > MAX_SIDE:
        scale = MAX_SIDE / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _num_key(key: str):
    try:
        return (0, float(key), key)
    except (TypeError, ValueError):
        return (1, 0.0, str(key))


def _overlay(rec: dict, used: list[str], colors: dict[str, str]) -> str:
    """SVG over the image: one rect per used instance (bbox in 0..1000 on both axes) plus its id tag.

    The viewBox stretches to the image (preserveAspectRatio none); tags are scaled back by width/height
    along y so their text is not distorted."""
    ref = rec.get("image") or {}
    w, h = ref.get("width") or 1, ref.get("height") or 1
    fix = w / h  # local tag units -> viewBox y units
    by_id = {inst.get("id"): inst for inst in rec.get("instances") or []}
    dashed = counted_only(rec)
    parts = []
    for inst_id in used:
        inst = by_id.get(inst_id)
        if not inst or not inst.get("bbox") or len(inst["bbox"]) != 4:
            continue
        x0, y0, x1, y1 = (float(v) for v in inst["bbox"])
        c = colors[inst_id]
        tag_w, tag_h = 16 * len(inst_id) + 12, 32
        tx = min(x0, 1000 - tag_w)
        ty = y0 - tag_h * fix if y0 >= tag_h * fix else y0  # above the box, or inside it at the top edge
        parts.append(
            f'<g class="inst" data-inst="{e(inst_id)}">'
            f'<rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}" fill="none" stroke="{c}" '
            f'stroke-width="2.5" vector-effect="non-scaling-stroke"'
            + (' stroke-dasharray="7 5"' if inst_id in dashed else "") + '/>'
            f'<text transform="translate({tx:g} {ty:.2f}) scale(1 {fix:.4f})" x="5" y="25" font-size="26" '
            f'font-weight="700" fill="#fff" stroke="{c}" stroke-width="9" stroke-linejoin="round" '
            f'paint-order="stroke">{e(inst_id)}</text></g>')
    return ('<svg class="overlay" viewBox="0 0 1000 1000" preserveAspectRatio="none" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _legend(rec: dict, used: list[str], colors: dict[str, str]) -> str:
    by_id = {inst.get("id"): inst for inst in rec.get("instances") or []}
    items = []
    for inst_id in used:
        inst = by_id.get(inst_id)
        if inst is None:
            items.append(f'<li data-inst="{e(inst_id)}"><span class="sw" style="background:{colors[inst_id]}"></span>'
                         f'<b>{e(inst_id)}</b> <i>not among the record\'s instances</i></li>')
            continue
        a = inst.get("attributes") or {}
        bits = [str(a[k]) for k in ("color", "size") if a.get(k) is not None]
        if a.get("text") is not None:
            bits.append(f'text "{a["text"]}"')
        if a.get("part_count") is not None:
            bits.append(f'{a["part_count"]} {a.get("part") or "parts"}')
        if inst.get("occludes"):
            bits.append("in front of: " + ", ".join(map(str, inst["occludes"])))
        items.append(f'<li data-inst="{e(inst_id)}"><span class="sw" style="background:{colors[inst_id]}"></span>'
                     f'<b>{e(inst_id)}</b> {e(str(inst.get("category", "?")))}'
                     f'<span class="attrs">{e(" · ".join(bits))}</span></li>')
    return f'<ul class="legend">{"".join(items)}</ul>' if items else ""


def _combine(hop: dict) -> str:
    c = hop.get("combine")
    if not c:
        return ""
    return f'{c.get("op", "?")} with hop {c.get("with_hop", "?")} → {_fmt(c.get("value"))}'


def _hops_table(rec: dict) -> str:
    hops = rec.get("hops") or []
    if not hops:
        return '<p class="none">no hops</p>'
    combine = any(h.get("combine") for h in hops)
    rows = []
    for h in hops:
        ids = [str(i) for i in h.get("instance_ids") or []]
        deps = ", ".join(map(str, h.get("depends_on") or [])) or "-"
        rows.append(
            f'<tr class="hop" data-hop="{e(str(h.get("index")))}" data-instances="{e(" ".join(ids))}">'
            f'<td>{e(str(h.get("index")))}</td><td>{e(str(h.get("kind", "")))}</td><td>L{e(str(h.get("level", "")))}</td>'
            f'<td>{e(str(h.get("op", "")))}</td><td>{e(deps)}</td><td>{e(", ".join(ids))}</td>'
            f'<td>{e(str(h.get("text", "")))}</td><td>{e(_fmt(h.get("value")))}</td>'
            + (f'<td>{e(_combine(h))}</td>' if combine else "") + "</tr>")
    head = ("<tr><th>#</th><th>kind</th><th>level</th><th>op</th><th>depends on</th><th>instances</th><th>text</th>"
            "<th>value</th>" + ("<th>combine</th>" if combine else "") + "</tr>")
    return f'<table class="hops"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _program_table(rec: dict) -> str:
    program = rec.get("program") or {}
    steps = program.get("steps") or []
    if not steps:
        return ""
    out = program.get("output")
    rows = "".join(
        f'<tr class="step{" output" if s.get("id") == out else ""}" data-hop="{e(str(s.get("hop")))}">'
        f'<td>{e(str(s.get("id", "")))}</td><td>{e(str(s.get("op", "")))}</td>'
        f'<td><code>{e(json.dumps(s.get("args"), separators=(",", ":")))}</code></td>'
        f'<td>{e(str(s.get("hop", "")))}</td></tr>' for s in steps)
    return (f'<details class="program" open><summary>program ({len(steps)} steps, output {e(str(out))})</summary>'
            f'<table><thead><tr><th>step</th><th>op</th><th>args</th><th>hop</th></tr></thead>'
            f'<tbody>{rows}</tbody></table></details>')


def _relatives(rec: dict, on_page: set[str], by_id: dict[str, dict], children: dict[str, list[dict]]) -> str:
    """Beside a full chain, its half / single variants (question and answer, linked when on the page); beside
    a variant, its full chain: the ablations and the chain they come from read side by side."""
    parent_id = str(rec.get("variant_of") or "")
    parent = by_id.get(parent_id)
    others = [parent] if parent else children.get(str(rec.get("id")), [])
    if parent_id and not parent:
        return (f'<div class="relatives"><h3>its full chain</h3><ul><li>{e(parent_id)} <small>(not in this dataset)'
                f'</small></li></ul></div>')
    if not others:
        return ""
    rows = []
    for o in sorted(others, key=lambda o: VARIANTS.index(o["variant"]) if o.get("variant") in VARIANTS else 9):
        oid, variant = str(o.get("id")), str(o.get("variant"))
        badge = f'<span class="variant {e(variant)}">{e(variant)}</span>'
        badge = f'<a href="#{e(oid)}">{badge}</a>' if oid in on_page else badge + " <small>(not on this page)</small>"
        rows.append(f'<li>{badge} <span class="q">{e(str(o.get("question", "")))}</span> '
                    f'<b>= {e(_fmt(o.get("answer")))}</b> <small>({len(o.get("hops") or [])} hops)</small></li>')
    title = "its full chain" if parent else "its ablations"
    return f'<div class="relatives"><h3>{title}</h3><ul>{"".join(rows)}</ul></div>'


def _card(ds: HopChainDataset, rec: dict, relatives: str = "") -> str:
    used = used_instances(rec)
    colors = instance_colors(rec, used)
    ref = rec.get("image") or {}
    img = _jpeg_data_url(ds.image(ref["shard"], ref["index"]))
    rid, variant = str(rec.get("id", "")), str(rec.get("variant", ""))
    answer = _fmt(rec.get("answer"))
    rationale = e(str(rec["rationale"])) if rec.get("rationale") else "<i>none</i>"
    scene = f'{e(str(ref.get("shard")))} #{e(str(ref.get("index")))}'
    ops = e(" ".join(record_ops(rec)))
    return f"""
<section class="card" id="{e(rid)}" data-variant="{e(variant)}" data-answer="{e(answer)}" data-ops="{ops}" data-world="{e(record_world(rec))}">
  <div class="left"><div class="imgwrap"><img src="{img}" alt="scene {scene}">{_overlay(rec, used, colors)}</div>
  {_legend(rec, used, colors)}</div>
  <div class="body">
    <div class="meta"><span class="variant {e(variant)}">{e(variant)}</span>
      <span>{len(rec.get('hops') or [])} hops</span><span>{scene} ({ref.get('width')}×{ref.get('height')})</span>
      <span class="rid">{e(rid)}</span></div>
    <p class="question">{e(str(rec.get('question', '')))}</p>
    <p class="answer">Answer: <b>{e(answer)}</b></p>
    {relatives}
    {_hops_table(rec)}
    {_program_table(rec)}
    <details><summary>gold rationale</summary><p class="rationale">{rationale}</p></details>
  </div>
</section>"""


def _pct(x) -> str:
    try:
        return f"{100 * float(x):.1f}%"
    except (TypeError, ValueError):
        return "?"


def _count_table(title: str, counts: dict, key_name: str, sort_by_count: bool = False) -> str:
    items = list((counts or {}).items())
    items.sort(key=(lambda kv: (-kv[1], str(kv[0]))) if sort_by_count else (lambda kv: _num_key(kv[0])))
    top = max([v for _, v in items] or [1]) or 1
    rows = "".join(f'<tr><td>{e(str(k))}</td><td class="num">{v}</td>'
                   f'<td class="hbar"><div style="width:{100 * v / top:.1f}%"></div></td></tr>' for k, v in items)
    return (f'<div class="stat"><h3>{e(title)}</h3><table><thead><tr><th>{e(key_name)}</th><th>count</th><th></th>'
            f'</tr></thead><tbody>{rows or "<tr><td colspan=3>none</td></tr>"}</tbody></table></div>')


def _answer_chart(hist: dict) -> str:
    items = sorted((hist or {}).items(), key=lambda kv: _num_key(kv[0]))
    top = max([v for _, v in items] or [1]) or 1
    cols = "".join(
        f'<div class="col" title="answer {e(str(k))}: {v}"><span class="n">{v}</span>'
        f'<div class="bar" style="height:{100 * v / top:.1f}%"></div><span class="k">{e(str(k))}</span></div>'
        for k, v in items)
    return f'<div class="stat wide"><h3>Answers of full queries</h3><div class="bars">{cols or "none"}</div></div>'


def _stats_section(stats: dict) -> str:
    variants = stats.get("variants") or {}
    mc = stats.get("most_common_answer") or {}
    blind = stats.get("blind") or {}
    blind_html = (
        '<div class="stat"><h3>Blind baselines (full queries)</h3><table><tbody>'
        f'<tr><td>most common answer</td><td class="num">{e(_fmt(mc.get("answer")))}</td>'
        f'<td>share {_pct(mc.get("share"))}</td></tr>'
        f'<tr><td>always answer it</td><td class="num">{_pct(blind.get("most_common"))}</td><td>accuracy</td></tr>'
        f'<tr><td>text only</td><td class="num">{_pct(blind.get("text_only"))}</td><td>accuracy</td></tr>'
        f'</tbody></table><p class="rule">text-only rule: {e(str(blind.get("text_only_rule", "?")))}</p></div>')
    return (f'<section class="stats" id="stats"><h2>Dataset statistics <small>over all {stats.get("records", "?")} '
            f'records</small></h2><div class="grid">'
            + _count_table("Records per variant", {v: variants.get(v, 0) for v in (*VARIANTS, *sorted(
                set(variants) - set(VARIANTS)))}, "variant")
            + _count_table("Hops per full chain", stats.get("hops") or {}, "hops")
            + _count_table("Program ops (full chains)", stats.get("ops") or {}, "op", sort_by_count=True)
            + blind_html
            + _answer_chart((stats.get("answers") or {}).get("full") or {})
            + "</div></section>")


def _filter_bar(cards_meta: list[tuple[str, list[str], str, str]]) -> str:
    variants = sorted({v for v, _, _, _ in cards_meta}, key=lambda v: (VARIANTS.index(v) if v in VARIANTS else 9, v))
    ops = sorted({op for _, ops, _, _ in cards_meta for op in ops})
    answers = sorted({a for _, _, a, _ in cards_meta}, key=_num_key)
    worlds = sorted({w for _, _, _, w in cards_meta})

    def select(name: str, values: Sequence[str]) -> str:
        opts = "".join(f'<option value="{e(v)}">{e(v)}</option>' for v in values)
        return f'<label>{name} <select id="f-{name}"><option value="">all</option>{opts}</select></label>'

    return (f'<div class="filters">{select("variant", variants)}{select("op", ops)}{select("answer", answers)}'
            f'{select("world", worlds)}'
            f'<span id="f-count">{len(cards_meta)} of {len(cards_meta)} cards shown</span></div>')


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#f4f4f6;color:#222}
h1{font-size:22px} h2{font-size:18px;margin:0 0 8px} h2 small{font-weight:400;color:#666} h3{font-size:14px;margin:0 0 6px}
.card{display:flex;gap:18px;background:#fff;border-radius:10px;padding:14px;margin:0 0 18px;box-shadow:0 1px 4px #0002}
.card[hidden]{display:none}
.left{width:480px;flex:none} .imgwrap{position:relative;width:100%;line-height:0}
.imgwrap img{display:block;width:100%;height:auto;border-radius:6px}
.overlay{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
.overlay g.inst{transition:opacity .12s} .card.hl .overlay g.inst{opacity:.15} .card.hl .overlay g.inst.on{opacity:1}
.card.hl .overlay g.inst.on rect{stroke-width:4.5}
.legend{list-style:none;padding:0;margin:8px 0 0;font-size:13px} .legend li{margin:2px 0;cursor:default}
.legend .sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.legend .attrs{color:#666;margin-left:6px} .card.hl .legend li{opacity:.35} .card.hl .legend li.on{opacity:1}
.body{flex:1;min-width:0} .meta span{margin-right:10px;font-size:13px;color:#555} .rid{font-family:monospace}
.variant{padding:2px 8px;border-radius:10px;color:#fff !important;font-weight:600}
.full{background:#2a7} .half{background:#e90} .single{background:#c44} .external{background:#777}
.question{font-size:16px;line-height:1.45} .answer{font-size:16px}
table{border-collapse:collapse;font-size:13px;width:100%;margin:4px 0} td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top} th{background:#f0f0f0}
tr.hop{cursor:pointer} tr.hop:hover,tr.hop.on{background:#fff4c2} tr.step.on{background:#fff4c2}
tr.step.output td:first-child{font-weight:700} code{font-size:12px;word-break:break-all}
details{margin:6px 0} summary{cursor:pointer;color:#444;font-size:13px}
.stats{background:#fff;border-radius:10px;padding:14px;margin:0 0 18px;box-shadow:0 1px 4px #0002}
.stats .grid{display:flex;flex-wrap:wrap;gap:18px} .stat{min-width:220px;flex:1} .stat.wide{flex-basis:100%}
.stat table{width:auto;min-width:220px} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.hbar{width:120px} td.hbar div{height:10px;background:#4363d8;border-radius:2px}
.bars{display:flex;align-items:flex-end;gap:3px;height:160px;border-bottom:1px solid #999;padding-top:14px;overflow-x:auto}
.bars .col{display:flex;flex-direction:column;align-items:center;justify-content:flex-end;height:100%;min-width:18px;flex:0 1 40px}
.bars .bar{width:100%;background:#2a7;border-radius:2px 2px 0 0;min-height:1px}
.bars .n{font-size:10px;color:#555} .bars .k{font-size:11px;margin-top:2px;height:14px}
.rule{font-size:13px;color:#444} .filters{position:sticky;top:0;background:#f4f4f6;padding:8px 0;margin-bottom:10px;z-index:2}
.filters label{margin-right:14px;font-size:14px} #f-count{color:#555;font-size:13px}
.relatives{background:#f7f7fa;border-radius:6px;padding:6px 10px;margin:6px 0;font-size:13px}
.relatives ul{margin:0;padding-left:4px;list-style:none} .relatives li{margin:3px 0} .relatives a{text-decoration:none}
"""

SCRIPT = """
(function(){
  var cards = Array.prototype.slice.call(document.querySelectorAll('section.card'));
  var fv = document.getElementById('f-variant'), fo = document.getElementById('f-op'),
      fa = document.getElementById('f-answer'), fw = document.getElementById('f-world'),
      count = document.getElementById('f-count');
  function apply(){
    var n = 0;
    cards.forEach(function(c){
      var ok = (!fv.value || c.dataset.variant === fv.value)
            && (!fo.value || (c.dataset.ops || '').split(' ').indexOf(fo.value) >= 0)
            && (!fa.value || c.dataset.answer === fa.value)
            && (!fw.value || c.dataset.world === fw.value);
      c.hidden = !ok; if (ok) n++;
    });
    count.textContent = n + ' of ' + cards.length + ' cards shown';
  }
  [fv, fo, fa, fw].forEach(function(s){ if (s) s.addEventListener('change', apply); });
  cards.forEach(function(card){
    var pinned = null;
    function show(ids, hop){
      card.classList.toggle('hl', ids !== null);
      card.querySelectorAll('[data-inst]').forEach(function(el){
        el.classList.toggle('on', ids !== null && ids.indexOf(el.dataset.inst) >= 0); });
      card.querySelectorAll('tr.hop, tr.step').forEach(function(el){
        el.classList.toggle('on', hop !== null && el.dataset.hop === hop); });
    }
    function reset(){ if (pinned) show(pinned.ids, pinned.hop); else show(null, null); }
    card.querySelectorAll('tr.hop').forEach(function(row){
      var ids = row.dataset.instances ? row.dataset.instances.split(' ') : [], hop = row.dataset.hop;
      row.addEventListener('mouseenter', function(){ show(ids, hop); });
      row.addEventListener('mouseleave', reset);
      row.addEventListener('click', function(){
        pinned = (pinned && pinned.hop === hop) ? null : {ids: ids, hop: hop}; reset(); });
    });
    card.querySelectorAll('.legend li').forEach(function(li){
      li.addEventListener('mouseenter', function(){ show([li.dataset.inst], null); });
      li.addEventListener('mouseleave', reset);
    });
  });
})();
"""


def select_records(records: Iterable[tuple[int, dict]], limit: int | None, seed: int,
                   variants: Sequence[str] | None = None, ops: Sequence[str] | None = None,
                   answers: Sequence[int | float] | None = None) -> tuple[list[tuple[int, dict]], int]:
    """The records passing every given filter (any of the values within one filter), then a seeded random
    sample of `limit` of them in dataset order. Returns (sample, how many passed the filters)."""
    vset = set(variants) if variants else None
    oset = set(ops) if ops else None
    aset = set(answers) if answers else None
    passed = [(i, r) for i, r in records
              if (vset is None or r.get("variant") in vset)
              and (oset is None or oset.intersection(record_ops(r)))
              and (aset is None or (not isinstance(r.get("answer"), bool) and r.get("answer") in aset))]
    if limit is not None and len(passed) > limit:
        keep = sorted(random.Random(seed).sample(range(len(passed)), max(0, limit)))
        return [passed[k] for k in keep], len(passed)
    return passed, len(passed)


def write_gallery(root: str | os.PathLike, out_html: str | os.PathLike, limit: int | None = 60, seed: int = 0,
                  variants: Sequence[str] | None = None, ops: Sequence[str] | None = None,
                  answers: Sequence[int | float] | None = None) -> int:
    """Write the gallery: statistics of every record, then a seeded sample of `limit` records among those
    whose variant is in `variants`, whose program uses one of `ops` and whose answer is in `answers`
    (None or empty: no filter). Returns how many cards."""
    from hopchain_jax.synth.stats import dataset_stats

    ds = HopChainDataset(root)
    all_records = list(ds.records())
    stats = dataset_stats(all_records)
    sample, n_passed = select_records(enumerate(all_records), limit, seed, variants, ops, answers)
    on_page = {str(r.get("id")) for _, r in sample}
    by_id = {str(r.get("id")): r for r in all_records}
    children: dict[str, list[dict]] = {}
    for r in all_records:
        if r.get("variant_of"):
            children.setdefault(str(r["variant_of"]), []).append(r)
    cards = [_card(ds, r, _relatives(r, on_page, by_id, children)) for _, r in sample]
    meta = [(str(r.get("variant", "")), record_ops(r), _fmt(r.get("answer")), record_world(r)) for _, r in sample]
    filters = [f"{name}: {', '.join(map(str, vals))}" for name, vals in
               (("variant", variants), ("op", ops), ("answer", answers)) if vals]
    title = e(str(root))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>HopChain gallery: {title}</title>"
        f"<style>{STYLE}</style></head><body><h1>HopChain gallery — {title}</h1>"
        f"<p class='sub'>{len(cards)} cards: a random sample (seed {seed}) of the {n_passed} records "
        f"{'matching ' + e('; '.join(filters)) if filters else 'in the dataset'} (dataset: {len(all_records)} records). "
        f"Hover or click a hop to highlight its instances and program steps.</p>"
        f"{_stats_section(stats)}{_filter_bar(meta)}{''.join(cards)}<script>{SCRIPT}</script></body></html>")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return len(cards)

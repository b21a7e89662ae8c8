"""`hopchain inspect DIR --html OUT.html`: a self-contained HTML gallery of queries.

Each card shows the image with the outlines of the instances the query uses (drawn from the exact
masks, tagged with their ids: the tags are for the reader of the gallery, never part of a question),
the question, every hop with its kind, level, op, dependencies and value, the answer, the variant and
the gold rationale.
"""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hopchain_jax.data.store import HopChainDataset

OUTLINE_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                  (240, 50, 230), (0, 128, 128)]


def outline_image(image: np.ndarray, labels: np.ndarray, instance_ids: list[str], width: int = 3) -> Image.Image:
    """The image with each listed instance's mask boundary drawn in its own colour plus an id tag."""
    out = image.copy()
    for n, inst_id in enumerate(instance_ids):
        mask = labels == int(inst_id[1:]) + 1
        grown = mask.copy()
        for _ in range(width):  # dilate by one pixel per pass
            g = grown.copy()
            g[1:] |= grown[:-1]
            g[:-1] |= grown[1:]
            g[:, 1:] |= grown[:, :-1]
            g[:, :-1] |= grown[:, 1:]
            grown = g
        out[grown & ~mask] = OUTLINE_COLORS[n % len(OUTLINE_COLORS)]
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=16)
    for n, inst_id in enumerate(instance_ids):
        ys, xs = np.nonzero(labels == int(inst_id[1:]) + 1)
        if len(xs):
            x, y = int(xs.min()), max(0, int(ys.min()) - 20)
            draw.rectangle([x, y, x + 30, y + 18], fill=OUTLINE_COLORS[n % len(OUTLINE_COLORS)])
            draw.text((x + 3, y + 1), inst_id, fill=(255, 255, 255), font=font)
    return pil


def _png_data_url(pil: Image.Image) -> str:
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _card(ds: HopChainDataset, rec: dict) -> str:
    used = list(dict.fromkeys(i for hop in rec["hops"] for i in hop["instance_ids"]))
    ref = rec["image"]
    pil = outline_image(ds.image(ref["shard"], ref["index"]), ds.labels(ref["shard"], ref["index"]), used)
    e = html.escape
    rows = "".join(
        f"<tr><td>{h['index']}</td><td>{e(h['kind'])}</td><td>L{h['level']}</td><td>{e(h['op'])}</td>"
        f"<td>{e(', '.join(map(str, h['depends_on'])) or '-')}</td><td>{e(', '.join(h['instance_ids']))}</td>"
        f"<td>{e(h['text'])}</td><td>{e(str(h['value']))}</td></tr>" for h in rec["hops"])
    return f"""
<section class="card" id="{e(rec['id'])}">
  <img src="{_png_data_url(pil)}" alt="scene {e(ref['shard'])}/{ref['index']}">
  <div class="body">
    <div class="meta"><span class="variant {e(rec['variant'])}">{e(rec['variant'])}</span>
      <span>{len(rec['hops'])} hops</span><span>{e(ref['shard'])} #{ref['index']}</span><span class="rid">{e(rec['id'])}</span></div>
    <p class="question">{e(rec['question'])}</p>
    <p class="answer">Answer: <b>{e(str(rec['answer']))}</b></p>
    <table><thead><tr><th>#</th><th>kind</th><th>level</th><th>op</th><th>depends on</th><th>instances</th>
      <th>text</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>
    <details><summary>gold rationale</summary><p>{e(rec['rationale'] or '')}</p></details>
  </div>
</section>"""


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#f4f4f6;color:#222}
h1{font-size:22px} .card{display:flex;gap:18px;background:#fff;border-radius:10px;padding:14px;margin:0 0 18px;
box-shadow:0 1px 4px #0002} .card img{width:480px;height:auto;border-radius:6px;flex:none}
.body{flex:1;min-width:0} .meta span{margin-right:10px;font-size:13px;color:#555} .rid{font-family:monospace}
.variant{padding:2px 8px;border-radius:10px;color:#fff !important;font-weight:600}
.full{background:#2a7} .half{background:#e90} .single{background:#c44}
.question{font-size:16px;line-height:1.45} .answer{font-size:16px}
table{border-collapse:collapse;font-size:13px;width:100%} td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;
vertical-align:top} th{background:#f0f0f0}
"""


def write_gallery(root: str | os.PathLike, out_html: str | os.PathLike, limit: int = 30,
                  variants: tuple[str, ...] = ("full", "half", "single")) -> int:
    """Write the gallery of the first `limit` records of `variants`; returns how many cards."""
    ds = HopChainDataset(root)
    cards = []
    for rec in ds.records():
        if len(cards) >= limit:
            break
        if rec["variant"] in variants:
            cards.append(_card(ds, rec))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>HopChain gallery: {html.escape(str(root))}</title>"
            f"<style>{STYLE}</style></head><body><h1>HopChain gallery — {html.escape(str(root))} "
            f"({len(cards)} of {len(ds)} records)</h1>{''.join(cards)}</body></html>")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return len(cards)

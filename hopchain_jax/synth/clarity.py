"""Clarity geometry: which references a person looking at the image resolves the way the program does.

Every referring expression the composers write is resolved with the program executor (exactly one
referent) and must also pass clarity margins, so a person picks the same instance: the runner-up is
clearly farther; for a direction, every object of the asked category lies well inside the direction's
cone or well outside it (a dead zone around the cone's edge); "between" keeps its one object well inside
the segment's band and every other clearly out; sizes are compared only between unoccluded objects at a
clear ratio, and a size class ("the medium-sized star") is named only where the area order of its
category shows it; "the same half of the picture" keeps every judged object clear of the middle line. Margins
only make references visually clear; execution never uses them. Pixel margins are for a 600 px short
image side and scale with it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.composer_config import ComposerConfig
from hopchain_jax.synth.program import DIRECTION_AXES, DIRECTIONS, Executor, ProgramError, occludes, superlative_key
from hopchain_jax.world.catalog import CATEGORIES


class Reject(Exception):
    """This attempt cannot make a clear, valid chain; the composer tries another."""


class ClearScene:
    """One image's instances (schema-v2 instance dicts) with the executor and clarity-checked lookups.

    Pairwise geometry is computed in one numpy pass and kept as nested lists (fast scalar lookups):
    dist[a][c] in pixels, angle[relation][a][c] the off-axis angle in degrees of c seen from a. Only
    clarity checks and the local counterfactual read these; every composed program is then run by the
    executor itself."""

    def __init__(self, instances: Sequence[dict], width: int, height: int, config: ComposerConfig = ComposerConfig()):
        self.instances = list(instances)
        self.width, self.height = width, height
        self.cfg = config
        self.px = min(width, height) / 600.0  # pixel margins are given for a 600 px short side
        self.ex = Executor(self.instances, width, height)
        self.geo = self.ex.geo
        self.by_id = self.ex.by_id
        self.by_cat: dict[str, list[dict]] = {}
        for inst in self.instances:
            self.by_cat.setdefault(inst["category"], []).append(inst)
        self.occluded = {i["id"] for inst in self.instances for i in map(self.by_id.get, inst.get("occludes") or ()) if i}
        self.index = {inst["id"]: k for k, inst in enumerate(self.instances)}
        xy = np.array([self.geo.center(inst) for inst in self.instances], dtype=np.float64).reshape(-1, 2)
        dx = xy[None, :, 0] - xy[:, None, 0]
        dy = xy[None, :, 1] - xy[:, None, 1]
        self.dist = np.hypot(dx, dy).tolist()
        self.angle = {}
        for relation, (ux, uy) in DIRECTION_AXES.items():
            along, across = dx * ux + dy * uy, np.abs(dx * uy - dy * ux)
            self.angle[relation] = np.degrees(np.arctan2(across, along)).tolist()

    # -- clear references ----------------------------------------------------------------------------
    def cone_members(self, anchor: dict, relation: str, category: str) -> list[dict]:
        """Instances of `category` in the direction's cone from `anchor`; Reject when any of them lies
        in the dead zone around the cone's edge or too close to the anchor to judge."""
        members = self._cone_cached(anchor["id"], relation, category)
        if members is None:
            raise Reject
        return list(members)

    @functools.lru_cache(maxsize=None)
    def _cone_cached(self, anchor_id: str, relation: str, category: str) -> tuple | None:
        a = self.index[anchor_id]
        dist, angle = self.dist[a], self.angle[relation][a]
        near = self.cfg.min_separation_px * self.px
        members = []
        for c in self.by_cat.get(category, []):
            k = self.index[c["id"]]
            if k == a:
                continue
            if dist[k] < near or self.cfg.cone_inside_deg < angle[k] < self.cfg.cone_outside_deg:
                return None
            if angle[k] <= self.cfg.cone_inside_deg:
                members.append(c)
        return tuple(members)

    def clear_extreme(self, cands: list[dict], anchor: dict, farthest: bool) -> dict:
        dist = self.dist[self.index[anchor["id"]]]
        cands = sorted(cands, key=lambda c: dist[self.index[c["id"]]], reverse=farthest)
        if not cands:
            raise Reject
        if len(cands) > 1:
            d1, d2 = dist[self.index[cands[0]["id"]]], dist[self.index[cands[1]["id"]]]
            near, far = (d2, d1) if farthest else (d1, d2)
            if far < self.cfg.relate_ratio * near + self.cfg.relate_gap_px * self.px:
                raise Reject
        return cands[0]

    def clear_relate(self, anchor: dict, relation: str, category: str) -> dict:
        others = [c for c in self.by_cat.get(category, []) if c["id"] != anchor["id"]]
        if relation in DIRECTIONS:
            return self.clear_extreme(self.cone_members(anchor, relation, category), anchor, False)
        if relation in ("nearest", "farthest"):
            return self.clear_extreme(others, anchor, relation == "farthest")
        if relation == "in_front_of":
            found = [c for c in others if occludes(c, anchor)]
        else:  # behind
            found = [c for c in others if occludes(anchor, c)]
        if len(found) != 1:
            raise Reject
        return found[0]

    def clear_between(self, a: dict, b: dict, category: str) -> dict:
        if self.geo.dist(a, b) < self.cfg.between_min_length_px * self.px:
            raise Reject
        inside = []
        for c in self.by_cat.get(category, []):
            if c["id"] in (a["id"], b["id"]):
                continue
            t, off = self.geo.between_coords(c, a, b)
            if 0.2 <= t <= 0.8 and off <= 0.2:
                inside.append(c)
            elif not (t < 0.05 or t > 0.95 or off >= 0.45):
                raise Reject  # near the edge of "between": a viewer could go either way
        if len(inside) != 1:
            raise Reject
        return inside[0]

    def clear_superlative(self, category: str, key: str, order: str) -> dict:
        members = self.by_cat.get(category, [])
        if key == "area" and any(c["id"] in self.occluded for c in members):
            raise Reject  # a partly hidden object's visible area is not its size
        scored = [(superlative_key(c, key, self.geo), c) for c in members]
        scored = sorted(((v, c) for v, c in scored if v is not None), key=lambda vc: vc[0], reverse=order == "max")
        if len(scored) < 2:
            raise Reject
        (v1, best), (v2, _) = scored[0], scored[1]
        if key == "area":
            ok = max(v1, v2) >= self.cfg.superlative_area_ratio * min(v1, v2)
        elif key in ("center_x", "center_y"):
            ok = abs(v1 - v2) >= self.cfg.superlative_position_px * self.px
        else:
            ok = v1 != v2
        if not ok:
            raise Reject
        return best

    def clear_count_relative(self, anchor: dict, category: str, relation: str) -> list[dict]:
        counted = self.cone_members(anchor, relation, category)
        if not self.cfg.min_count <= len(counted) <= self.cfg.max_count:
            raise Reject
        return counted

    def side(self, inst: dict, axis: str) -> float:
        """Signed pixel offset of inst's center from the middle line: axis "x" from x = W / 2 (negative: left
        half), "y" from y = H / 2 (negative: top half)."""
        k = 0 if axis == "x" else 1
        return self.geo.center(inst)[k] - (self.width if axis == "x" else self.height) / 2.0

    def clear_side(self, anchor: dict, category: str, axis: str) -> list[dict]:
        """The instances of `category` in the same half of the picture as `anchor` (axis "x": left / right
        of the vertical middle line; "y": above / below the horizontal one); Reject when the anchor or any
        instance of the category lies within side_margin_px of the line, or the count is out of range."""
        margin = self.cfg.side_margin_px * self.px
        side = self.side(anchor, axis)
        if abs(side) < margin:
            raise Reject
        counted = []
        for c in self.by_cat.get(category, []):
            offset = self.side(c, axis)
            if abs(offset) < margin:
                raise Reject
            if c["id"] != anchor["id"] and (offset > 0) == (side > 0):
                counted.append(c)
        if not self.cfg.min_count <= len(counted) <= self.cfg.max_count:
            raise Reject
        return counted

    def size_class_visible(self, inst: dict) -> bool:
        """Its absolute size class ("small", "medium", "large") agrees with what a viewer sees among the
        instances of its category: none of them occluded, its area at least superlative_area_ratio apart
        from every other one, and its class's place in the area order clear -- "large" the largest,
        "small" the smallest, "medium" with one clearly larger and one clearly smaller beside it."""
        members = self.by_cat[inst["category"]]
        if any(c["id"] in self.occluded for c in members):
            return False
        ratio = self.cfg.superlative_area_ratio
        others = [c["area"] for c in members if c["id"] != inst["id"]]
        if not others or any(max(a, inst["area"]) < ratio * min(a, inst["area"]) for a in others):
            return False
        larger, smaller = sum(a > inst["area"] for a in others), sum(a < inst["area"] for a in others)
        return {"large": larger == 0, "small": smaller == 0, "medium": larger > 0 and smaller > 0}.get(
            inst["attributes"].get("size"), False)

    def unique(self, filt: dict) -> dict | None:
        found = self.ex.matches(filt)
        return found[0] if len(found) == 1 else None

    # -- what a mistaken pick would give (the local counterfactual) -----------------------------------
    def relate_from(self, anchor_id: str, relation: str, category: str) -> str | None:
        """What `relate` yields from anchor_id (None: no candidate or a tie), from the pairwise tables."""
        a = self.index[anchor_id]
        cands = [c for c in self.by_cat.get(category, []) if c["id"] != anchor_id]
        if relation in DIRECTIONS:
            angle = self.angle[relation][a]
            cands = [c for c in cands if angle[self.index[c["id"]]] < 45.0]
        elif relation == "in_front_of":
            cands = [c for c in cands if occludes(c, self.by_id[anchor_id])]
        elif relation == "behind":
            cands = [c for c in cands if occludes(self.by_id[anchor_id], c)]
        if not cands:
            return None
        dist = self.dist[a]
        ds = sorted((dist[self.index[c["id"]]], c["id"]) for c in cands)
        if relation == "farthest":
            ds.reverse()
        if len(ds) > 1 and ds[0][0] == ds[1][0]:
            return None
        return ds[0][1]

    def count_from(self, anchor_id: str, relation: str, category: str) -> int:
        """What `count` with a direction yields from anchor_id, from the pairwise tables."""
        angle = self.angle[relation][self.index[anchor_id]]
        return sum(1 for c in self.by_cat.get(category, []) if c["id"] != anchor_id and angle[self.index[c["id"]]] < 45.0)

    def pick_matters(self, inst: dict, result: Any, step_from: Callable[[str], Any]) -> bool:
        """A local counterfactual: a reader who took another instance of inst's category for `inst`
        gets a different result from `step_from` (or none at all). The chain's full check
        (counterfactual.py) decides; this only keeps hopeless chains from being composed."""
        result = result["id"] if isinstance(result, dict) else result
        for alt in self.by_cat[inst["category"]]:
            if alt["id"] == inst["id"]:
                continue
            try:
                if step_from(alt["id"]) == result:
                    return False
            except ProgramError:
                pass
        return True

    # -- names ------------------------------------------------------------------------------------------
    def direct(self, inst: dict) -> tuple[str, dict, str]:
        """(op, args, phrase) naming `inst` by what is visible alone; Reject when nothing is clear."""
        cat, attrs = inst["category"], inst["attributes"]
        if len(self.by_cat[cat]) == 1:
            return "select", {"filter": {"category": cat}}, f"the {cat}"
        if self.unique({"category": cat, "color": attrs["color"]}):
            return "select", {"filter": {"category": cat, "color": attrs["color"]}}, f"the {attrs['color']} {cat}"
        if CATEGORIES[cat].text == "word" and self.unique({"category": cat, "text": attrs["text"]}):
            return "select", {"filter": {"category": cat, "text": attrs["text"]}}, f'the {cat} that reads "{attrs["text"]}"'
        if self.size_class_visible(inst) and self.unique({"category": cat, "size": attrs["size"]}):
            return ("select", {"filter": {"category": cat, "size": attrs["size"]}},
                    f"the {phrasing.SIZE_WORDS[attrs['size']]} {cat}")
        for key, order in phrasing.SUPERLATIVE_WORDS:
            try:
                best = self.clear_superlative(cat, key, order)
            except Reject:
                continue
            if best["id"] == inst["id"]:
                return ("superlative", {"filter": {"category": cat}, "key": key, "order": order},
                        phrasing.extreme_phrase(key, order, cat, len(self.by_cat[cat])))
        raise Reject

    def describe(self, inst_id: str) -> str:
        """How a rationale names an instance: its colour, category and coarse place."""
        inst = self.by_id[inst_id]
        cx, cy = self.geo.center(inst)
        return f"the {inst['attributes']['color']} {inst['category']} in the {phrasing.region_words(cx, cy, self.width, self.height)}"

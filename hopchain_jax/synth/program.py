"""The program op set: executable steps whose result is a query's answer.

This docstring is the complete specification; an executor written from it alone must reproduce every
answer. (docs/op_set.md points here.)

Inputs
------
A program runs against the record it belongs to (schema v2):
  * ``record["image"]["width"]``, ``record["image"]["height"]``: image size W, H in pixels.
  * ``record["instances"]``: list of instances, each
    ``{"id": str, "category": str, "bbox": [x0, y0, x1, y1], "area": int, "score": float,
       "attributes": {"color": str, "size": "small"|"medium"|"large", "text": str|null,
                      "part": str|null, "part_count": int|null},
       "occludes": [instance id, ...]}``
    ``bbox`` holds integers in 0..1000: x scaled by 1000/W, y by 1000/H, origin at the top-left corner
    (``record["box_convention"]`` says the same in words). ``area`` is the pixel count of the instance's
    visible mask. ``part`` names the countable part ("dots", "eyes", "petals", "pips", "windows",
    "points"). ``occludes`` lists the instances this one is in front of (it hides part of each of them);
    a missing ``occludes`` means the empty list.

Geometry (always in pixels)
---------------------------
  center(i) = ((x0 + x1) / 2 * W / 1000, (y0 + y1) / 2 * H / 1000)
  dist(i, j) = Euclidean distance between center(i) and center(j)
Image y grows downwards, so "above" means a smaller center y.
Directional predicates are cones of half-angle 45 degrees around the stated direction. For a candidate
c and an anchor a, let dx = cx(c) - cx(a) and dy = cy(c) - cy(a) (center coordinates); then
  left_of: -dx > |dy|    right_of: dx > |dy|    above: -dy > |dx|    below: dy > |dx|
(strict inequalities: a candidate exactly on a cone's edge, or at the anchor's center, is in no cone).
Occlusion predicates, for a candidate c and an anchor a:
  in_front_of: a's id is in c's ``occludes``      behind: c's id is in a's ``occludes``
Between predicate for c and two instances a, b: with p = center(c), A = center(a), B = center(b),
  L = |B - A|, t = (p - A)·(B - A) / L², d = distance from p to the segment's line = |cross(B - A, p - A)| / L;
  c is between a and b  iff  0.1 <= t <= 0.9  and  d <= 0.3 * L  (a and b sharing a center is an error).
Comparisons are exact float comparisons on these formulas (dist as Python's math.hypot); a "tie" means
exactly equal values. Composed programs keep clear margins, so no stored answer hinges on the last bit.

Program
-------
``{"steps": [step, ...], "output": step_id}``. Each step is
``{"id": str, "op": str, "args": {...}, "hop": int}``; steps run in list order; ``hop`` names the hop of
the record that the step belongs to and does not affect execution. The program's answer is the value
of the step named by ``output``. Anywhere an argument takes a value, ``{"ref": step_id}`` stands for
the value an earlier step produced. Values are instances (referred to by instance id), integers, or
strings; arguments naming an instance also accept the instance id itself. The output step of every
stored program produces an integer, the record's answer.

Filter: a dict whose keys are all optional; an instance matches when every given key matches:
  "category": str          instance.category == value
  "color": str | ref       attributes.color == value (a ref must produce a colour string)
  "size": str | ref        attributes.size == value (a ref must produce a size string)
  "text": str              attributes.text == value
  "part_count": int        attributes.part_count == value
  "exclude": [ref, ...]    instance is none of these instances
Only "color", "size" and the items of "exclude" may be refs; the other values are literals. Any other
key is an error.

Ops (every "must" that fails is an execution error; the program is then invalid):
  select      {filter}                     -> instance: the instances matching filter; there must be
                                              exactly one, which is the result.
  relate      {anchor, relation, filter}   -> instance: candidates = instances matching filter, not the
                                              anchor, and satisfying `relation` w.r.t. the anchor.
                                              relation "nearest" and "farthest" keep every candidate;
                                              left_of | right_of | above | below keep those in the
                                              direction's cone; in_front_of | behind keep those the
                                              occlusion predicate accepts. There must be at least one
                                              candidate. Result: the candidate with the largest dist to
                                              the anchor for "farthest", otherwise the one with the
                                              smallest dist; no tie for that extreme is allowed.
  between     {a, b, filter}               -> instance: the instances matching filter, other than a and b,
                                              that are between a and b; there must be exactly one.
  superlative {filter, key, order}         -> instance: among instances matching filter (at least one),
                                              the one with the largest (order "max") or smallest ("min")
                                              key; no tie allowed. key: "area" (instance area),
                                              "center_x", "center_y" (pixels), "part_count"
                                              (attributes.part_count), "number" (int of
                                              attributes.text). Instances without a key value (null
                                              part_count; text null or not digits) are left out.
  compare     {a, b, key, order}           -> instance: of the two instances a and b (they must differ),
                                              the one with the larger (order "max") or smaller ("min")
                                              key, keys as for superlative; both must have a key value
                                              and the values must differ.
  attribute   {instance, name}             -> str: attributes[name], name in color | size.
  count_parts {instance}                   -> int: attributes.part_count (must not be null).
  read_number {instance}                   -> int: int(attributes.text); text must be one or more
                                              ASCII digits 0-9.
  count_letters {instance}                 -> int: the number of characters of attributes.text, which
                                              must be one or more ASCII letters A-Z / a-z.
  count       {filter, relation?, anchor?} -> int: number of instances matching filter; when relation
                                              (left_of | right_of | above | below | in_front_of |
                                              behind; not "nearest" or "farthest") is given, anchor is
                                              required and only instances that are not the anchor and
                                              satisfy the relation w.r.t. the anchor count. relation
                                              and anchor come together: one without the other is an
                                              error.
  count_side  {filter, anchor, axis}       -> int: number of instances matching filter, other than the
                                              anchor, whose center lies in the same half of the image
                                              as the anchor's center: axis "x" compares cx with W / 2,
                                              axis "y" cy with H / 2 (strictly less on both, or strictly
                                              greater on both; a center exactly on the middle line is in
                                              no half, and an anchor there is an error).
  add {a, b} -> a + b     sub {a, b} -> a - b     mul {a, b} -> a * b     (integers)

A malformed program is an execution error too: an unknown op, missing or unexpected arguments, an
unknown relation/key/order/attribute name, a duplicate step id, a ref to an unknown or later step, or
an output naming no step.

Not part of execution: each record's ``hops[].op`` is the op of the hop's main program step (one of
the op names above); the hop's ``combine`` names the arithmetic step, if any, that joins its value with
an earlier hop's. The program steps tagged with a hop carry everything the hop executes.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

DIRECTIONS = ("left_of", "right_of", "above", "below")
OCCLUSIONS = ("in_front_of", "behind")
RELATIONS = ("nearest", "farthest") + DIRECTIONS + OCCLUSIONS
COUNT_RELATIONS = DIRECTIONS + OCCLUSIONS
# Unit vector of each direction in image coordinates (y grows downwards).
DIRECTION_AXES = {"left_of": (-1.0, 0.0), "right_of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}
SUPERLATIVE_KEYS = ("area", "center_x", "center_y", "part_count", "number")
# Op classes, the one source the checks read (synth/counterfactual.py, the blind rules of synth/stats.py):
INSTANCE_OPS = frozenset({"select", "relate", "between", "superlative", "compare"})   # value: one instance
NUMBER_OPS = frozenset({"count", "count_parts", "read_number", "count_letters", "count_side"})  # value: a number seen
ARITHMETIC_OPS = frozenset({"add", "sub", "mul"})                                    # value: from earlier values
BETWEEN_T = (0.1, 0.9)
BETWEEN_MAX_OFFSET = 0.3


class ProgramError(ValueError):
    """A program that cannot run on its record (no unique referent, bad op, bad argument)."""


Instance = Mapping[str, Any]


class Geometry:
    """Pixel-space geometry of a record's instances (0..1000 boxes scaled back by W, H)."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.sx, self.sy = width / 1000.0, height / 1000.0
        # Memo of centers and distances: id(instance dict) -> (the dict, value); the dict is kept so
        # its id cannot be reused by another object.
        self._centers: dict[int, tuple[Instance, tuple[float, float]]] = {}
        self._dists: dict[tuple[int, int], float] = {}
        self._along: dict[tuple[int, int, str], tuple[float, float]] = {}

    def center(self, inst: Instance) -> tuple[float, float]:
        c = self._centers.get(id(inst))
        if c is None or c[0] is not inst:
            x0, y0, x1, y1 = inst["bbox"]
            c = self._centers[id(inst)] = (inst, ((x0 + x1) / 2 * self.sx, (y0 + y1) / 2 * self.sy))
        return c[1]

    def dist(self, a: Instance, b: Instance) -> float:
        key = (id(a), id(b))
        d = self._dists.get(key)
        if d is None:
            (ax, ay), (bx, by) = self.center(a), self.center(b)
            d = self._dists[key] = math.hypot(ax - bx, ay - by)
        return d

    def along_across(self, c: Instance, a: Instance, relation: str) -> tuple[float, float]:
        """(along, across): how far c lies from a along the direction's axis (> 0: on its side) and
        off that axis (>= 0), in pixels. c is in the direction's cone iff along > across."""
        key = (id(c), id(a), relation)
        out = self._along.get(key)
        if out is None:
            (cx, cy), (ax, ay) = self.center(c), self.center(a)
            ux, uy = DIRECTION_AXES[relation]
            dx, dy = cx - ax, cy - ay
            out = self._along[key] = (dx * ux + dy * uy, abs(dx * uy - dy * ux))
        return out

    def in_cone(self, c: Instance, a: Instance, relation: str) -> bool:
        along, across = self.along_across(c, a, relation)
        return along > across

    def off_axis_degrees(self, c: Instance, a: Instance, relation: str) -> float:
        """Angle between the direction and the line from a's center to c's center (0..180)."""
        along, across = self.along_across(c, a, relation)
        return math.degrees(math.atan2(across, along))

    def between_coords(self, c: Instance, a: Instance, b: Instance) -> tuple[float, float]:
        """(t, d / L): position along the segment a->b and distance off its line, relative to its length."""
        (px, py), (ax, ay), (bx, by) = self.center(c), self.center(a), self.center(b)
        vx, vy, wx, wy = bx - ax, by - ay, px - ax, py - ay
        length_sq = vx * vx + vy * vy
        if length_sq == 0:
            raise ProgramError("between: the two reference instances share a center")
        t = (wx * vx + wy * vy) / length_sq
        off = abs(vx * wy - vy * wx) / length_sq
        return t, off

    def is_between(self, c: Instance, a: Instance, b: Instance) -> bool:
        t, off = self.between_coords(c, a, b)
        return BETWEEN_T[0] <= t <= BETWEEN_T[1] and off <= BETWEEN_MAX_OFFSET


def _is_digits(text: Any) -> bool:
    return isinstance(text, str) and text.isascii() and text.isdigit()


def _is_letters(text: Any) -> bool:
    return isinstance(text, str) and text.isascii() and text.isalpha()


def occludes(front: Instance, back: Instance) -> bool:
    """True when `front` hides part of `back` (back's id is in front's occludes list)."""
    return back["id"] in (front.get("occludes") or ())


def satisfies(geo: "Geometry", c: Instance, a: Instance, relation: str) -> bool:
    """The directional or occlusion predicate of `relation` for candidate c and anchor a."""
    if relation in DIRECTIONS:
        return geo.in_cone(c, a, relation)
    if relation == "in_front_of":
        return occludes(c, a)
    if relation == "behind":
        return occludes(a, c)
    raise ProgramError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def read_number(inst: Instance) -> int:
    text = inst["attributes"].get("text")
    if not _is_digits(text):
        raise ProgramError(f"read_number: instance {inst['id']} shows no number (text={text!r})")
    return int(text)


def superlative_key(inst: Instance, key: str, geo: Geometry) -> float | None:
    """The value `superlative` ranks by, or None when the instance has none."""
    if key == "area":
        return float(inst["area"])
    if key == "center_x":
        return geo.center(inst)[0]
    if key == "center_y":
        return geo.center(inst)[1]
    if key == "part_count":
        return inst["attributes"].get("part_count")
    if key == "number":
        text = inst["attributes"].get("text")
        return int(text) if _is_digits(text) else None
    raise ProgramError(f"superlative: unknown key {key!r}; expected one of {SUPERLATIVE_KEYS}")


class Executor:
    """Runs programs against one record's instances; also the library the composer uses to check that
    every referring expression it writes resolves to exactly one instance."""

    def __init__(self, instances: Sequence[Instance], width: int, height: int):
        self.instances = list(instances)
        self.by_id = {inst["id"]: inst for inst in self.instances}
        self.by_category: dict[str, list[Instance]] = {}
        for inst in self.instances:
            self.by_category.setdefault(inst["category"], []).append(inst)
        self.geo = Geometry(width, height)

    # -- values -----------------------------------------------------------------------------------
    def _value(self, arg: Any, env: Mapping[str, Any]) -> Any:
        if type(arg) is dict and len(arg) == 1 and "ref" in arg:
            if arg["ref"] not in env:
                raise ProgramError(f"reference to unknown or later step {arg['ref']!r}")
            return env[arg["ref"]]
        return arg

    def _instance(self, arg: Any, env: Mapping[str, Any]) -> Instance:
        value = self._value(arg, env)
        if not isinstance(value, str) or value not in self.by_id:
            raise ProgramError(f"expected an instance, got {value!r}")
        return self.by_id[value]

    # -- filters ----------------------------------------------------------------------------------
    def matches(self, filt: Mapping[str, Any], env: Mapping[str, Any] = {}) -> list[Instance]:
        if len(filt) == 1 and "category" in filt:  # the common case, indexed
            return list(self.by_category.get(filt["category"], ()))
        unknown = set(filt) - {"category", "color", "size", "text", "part_count", "exclude"}
        if unknown:
            raise ProgramError(f"filter has unknown keys {sorted(unknown)}")
        excluded = {self._instance(r, env)["id"] for r in filt.get("exclude", ())}
        out = []
        for inst in self.by_category.get(filt["category"], ()) if "category" in filt else self.instances:
            attrs = inst["attributes"]
            if inst["id"] in excluded:
                continue
            if "category" in filt and inst["category"] != filt["category"]:
                continue
            if "color" in filt and attrs.get("color") != self._value(filt["color"], env):
                continue
            if "size" in filt and attrs.get("size") != self._value(filt["size"], env):
                continue
            if "text" in filt and attrs.get("text") != filt["text"]:
                continue
            if "part_count" in filt and attrs.get("part_count") != filt["part_count"]:
                continue
            out.append(inst)
        return out

    # -- ops --------------------------------------------------------------------------------------
    def op_select(self, env, filter):
        found = self.matches(filter, env)
        if len(found) != 1:
            raise ProgramError(f"select: {len(found)} instances match {filter}, expected exactly 1")
        return found[0]["id"]

    def relate_candidates(self, anchor: Instance, relation: str, filt, env) -> list[Instance]:
        if relation not in RELATIONS:
            raise ProgramError(f"relate: unknown relation {relation!r}; expected one of {RELATIONS}")
        cands = [c for c in self.matches(filt, env) if c["id"] != anchor["id"]]
        if relation not in ("nearest", "farthest"):
            cands = [c for c in cands if satisfies(self.geo, c, anchor, relation)]
        return cands

    def op_relate(self, env, anchor, relation, filter):
        a = self._instance(anchor, env)
        cands = sorted(self.relate_candidates(a, relation, filter, env), key=lambda c: self.geo.dist(c, a),
                       reverse=relation == "farthest")
        if not cands:
            raise ProgramError(f"relate: no instance matching {filter} is {relation} {a['id']}")
        if len(cands) > 1 and self.geo.dist(cands[0], a) == self.geo.dist(cands[1], a):
            raise ProgramError(f"relate: tie for the instance {relation} {a['id']}")
        return cands[0]["id"]

    def between_candidates(self, a: Instance, b: Instance, filt, env) -> list[Instance]:
        return [c for c in self.matches(filt, env)
                if c["id"] not in (a["id"], b["id"]) and self.geo.is_between(c, a, b)]

    def op_between(self, env, a, b, filter):
        ia, ib = self._instance(a, env), self._instance(b, env)
        found = self.between_candidates(ia, ib, filter, env)
        if len(found) != 1:
            raise ProgramError(f"between: {len(found)} instances between {ia['id']} and {ib['id']}")
        return found[0]["id"]

    def op_superlative(self, env, filter, key, order):
        if order not in ("max", "min"):
            raise ProgramError(f"superlative: order must be 'max' or 'min', got {order!r}")
        scored = [(superlative_key(c, key, self.geo), c) for c in self.matches(filter, env)]
        scored = [(v, c) for v, c in scored if v is not None]
        if not scored:
            raise ProgramError(f"superlative: nothing matches {filter} with a {key}")
        scored.sort(key=lambda vc: vc[0], reverse=(order == "max"))
        if len(scored) > 1 and scored[0][0] == scored[1][0]:
            raise ProgramError(f"superlative: tie for {order} {key}")
        return scored[0][1]["id"]

    def op_compare(self, env, a, b, key, order):
        if order not in ("max", "min"):
            raise ProgramError(f"compare: order must be 'max' or 'min', got {order!r}")
        ia, ib = self._instance(a, env), self._instance(b, env)
        if ia["id"] == ib["id"]:
            raise ProgramError(f"compare: a and b are the same instance {ia['id']}")
        va, vb = superlative_key(ia, key, self.geo), superlative_key(ib, key, self.geo)
        if va is None or vb is None:
            raise ProgramError(f"compare: {ia['id'] if va is None else ib['id']} has no {key}")
        if va == vb:
            raise ProgramError(f"compare: tie on {key}")
        return ia["id"] if (va > vb) == (order == "max") else ib["id"]

    def op_attribute(self, env, instance, name):
        if name not in ("color", "size"):
            raise ProgramError(f"attribute: name must be color or size, got {name!r}")
        return self._instance(instance, env)["attributes"][name]

    def op_count_parts(self, env, instance):
        inst = self._instance(instance, env)
        n = inst["attributes"].get("part_count")
        if n is None:
            raise ProgramError(f"count_parts: instance {inst['id']} has no countable parts")
        return int(n)

    def op_read_number(self, env, instance):
        return read_number(self._instance(instance, env))

    def op_count_letters(self, env, instance):
        inst = self._instance(instance, env)
        text = inst["attributes"].get("text")
        if not _is_letters(text):
            raise ProgramError(f"count_letters: instance {inst['id']} shows no word (text={text!r})")
        return len(text)

    def op_count(self, env, filter, relation=None, anchor=None):
        found = self.matches(filter, env)
        if (relation is None) != (anchor is None):
            raise ProgramError("count: relation and anchor go together")
        if relation is not None:
            if relation not in COUNT_RELATIONS:
                raise ProgramError(f"count: relation must be one of {COUNT_RELATIONS}, got {relation!r}")
            a = self._instance(anchor, env)
            found = [c for c in found if c["id"] != a["id"] and satisfies(self.geo, c, a, relation)]
        return len(found)

    def op_count_side(self, env, filter, anchor, axis):
        if axis not in ("x", "y"):
            raise ProgramError(f"count_side: axis must be 'x' or 'y', got {axis!r}")
        a = self._instance(anchor, env)
        k = 0 if axis == "x" else 1
        middle = (self.geo.width if axis == "x" else self.geo.height) / 2.0
        side = self.geo.center(a)[k] - middle
        if side == 0:
            raise ProgramError(f"count_side: anchor {a['id']} lies on the middle line")
        return sum(1 for c in self.matches(filter, env)
                   if c["id"] != a["id"] and (self.geo.center(c)[k] - middle) * side > 0)

    def _arith(fn: Callable[[int, int], int]):
        def op(self, env, a, b):
            va, vb = self._value(a, env), self._value(b, env)
            if not (isinstance(va, int) and isinstance(vb, int)):
                raise ProgramError(f"arithmetic on non-integers {va!r}, {vb!r}")
            return fn(va, vb)
        return op

    op_add = _arith(lambda a, b: a + b)
    op_sub = _arith(lambda a, b: a - b)
    op_mul = _arith(lambda a, b: a * b)

    # -- programs ---------------------------------------------------------------------------------
    def run_step(self, step: Mapping[str, Any], env: Mapping[str, Any]) -> Any:
        fn = getattr(self, f"op_{step['op']}", None)
        if fn is None:
            raise ProgramError(f"unknown op {step['op']!r}")
        args = {k: (self._value(v, env) if k in ("a", "b", "name", "key", "order", "relation", "axis") else v)
                for k, v in step["args"].items()}
        try:
            return fn(env, **args)
        except TypeError as e:
            raise ProgramError(f"op {step['op']}: bad arguments {sorted(step['args'])}: {e}") from None

    def run(self, program: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
            start: int = 0, env: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Execute; returns (answer, values of every step by id).

        overrides: step id -> value that step yields instead of executing (a counterfactual);
        start/env: resume at step index `start` with the values of the steps before it."""
        env = dict(env or {})
        for step in program["steps"][start:]:
            if step["id"] in env:
                raise ProgramError(f"duplicate step id {step['id']!r}")
            if overrides and step["id"] in overrides:
                env[step["id"]] = overrides[step["id"]]
            else:
                env[step["id"]] = self.run_step(step, env)
        if program["output"] not in env:
            raise ProgramError(f"output {program['output']!r} names no step")
        return env[program["output"]], env


def execute(record: Mapping[str, Any], program: Mapping[str, Any] | None = None) -> Any:
    """The answer of `program` (default: the record's own) on the record's instances."""
    image = record["image"]
    return Executor(record["instances"], image["width"], image["height"]).run(
        program if program is not None else record["program"])[0]

"""Independent executor for the HopChain program op set.

This module was written from the prose specification of the op set alone (the
"program op set" document: Inputs / Geometry / Program / Filter / Ops), without
reading, importing or otherwise consulting the reference implementation in
``hopchain_jax``.  It uses only the standard library (``json``, ``math``) and
does not import anything from ``hopchain_jax``.  Its purpose is to check that
the specification is complete: every exported record's ``program`` must
evaluate, with this executor, to the record's ``answer``.

Public entry point: :func:`run_program(record) -> answer`.

The answer is an ``int``, a ``str`` (e.g. a colour from ``attribute``), or, for
an instance-valued output step, the instance's id (``str``).  Every documented
failure (no unique referent, ties, unknown op, null part count, non-digit text,
...) raises :class:`ValueError`.

Decisions the specification does not state explicitly (see
``tests/test_independent_executor.py`` and the verification report):

* Ties (``relate`` distances, ``superlative`` keys) are exact floating-point
  equality of the values computed by the documented formulas, no tolerance.
* Centers are computed literally as ``(x0 + x1) / 2 * W / 1000``; distances
  with ``math.hypot``.
* ``between`` with ``a`` and ``b`` at the same center (L == 0) raises
  ``ValueError`` (t and d are undefined).
* ``superlative`` with key ``"number"``: an instance matching the filter whose
  text is not decimal digits is left out (first written to fail; the spec was
  then revised to state this, and this line follows the revision).
* ``{"ref": ...}`` is accepted for any value (the spec's general rule), and
  the resolved value is type-checked (filter ``color`` must be a colour string,
  ``part_count`` an int, instance arguments instances, arithmetic integers).
  A literal string naming an existing instance id is accepted where an
  instance is expected.
* Unknown ops, unknown filter keys, unknown/missing op arguments, unknown
  relations/keys/orders/attribute names, duplicate step ids, refs to unknown or
  later steps, and an unknown ``output`` step all raise ``ValueError``.
* ``count`` with ``relation`` but no ``anchor`` (or ``anchor`` without
  ``relation``) raises ``ValueError``; ``count`` does not accept ``nearest``.
* Integers are Python ``int`` but not ``bool``.
"""

import json
import math

__all__ = ["run_program", "run_program_json", "Instance"]


DIRECTIONS = ("left_of", "right_of", "above", "below")
RELATE_RELATIONS = ("nearest",) + DIRECTIONS
FILTER_KEYS = ("category", "color", "size", "text", "part_count", "exclude")
SUPERLATIVE_KEYS = ("area", "center_x", "center_y", "part_count", "number")
ATTRIBUTE_NAMES = ("color", "size")

# op -> (required args, optional args)
OP_ARGS = {
    "select": ({"filter"}, set()),
    "relate": ({"anchor", "relation", "filter"}, set()),
    "between": ({"a", "b", "filter"}, set()),
    "superlative": ({"filter", "key", "order"}, set()),
    "attribute": ({"instance", "name"}, set()),
    "count_parts": ({"instance"}, set()),
    "read_number": ({"instance"}, set()),
    "count": ({"filter"}, {"relation", "anchor"}),
    "add": ({"a", "b"}, set()),
    "sub": ({"a", "b"}, set()),
    "mul": ({"a", "b"}, set()),
}


class Instance:
    """An instance value (wraps the instance dict; compared by id)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    @property
    def id(self):
        return self.data["id"]

    def __eq__(self, other):
        return isinstance(other, Instance) and other.id == self.id

    def __hash__(self):
        return hash(("Instance", self.id))

    def __repr__(self):
        return "Instance(%r)" % self.id


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class _Executor:
    def __init__(self, record):
        if not isinstance(record, dict):
            raise ValueError("record must be a dict")
        try:
            image = record["image"]
            self.W = image["width"]
            self.H = image["height"]
            instances = record["instances"]
            self.program = record["program"]
        except (KeyError, TypeError) as e:
            raise ValueError("record is missing a required field: %r" % (e,))
        if not (isinstance(self.W, (int, float)) and isinstance(self.H, (int, float))):
            raise ValueError("image width/height must be numbers")
        self.instances = []
        self.by_id = {}
        for inst in instances:
            iid = inst.get("id")
            if iid in self.by_id:
                raise ValueError("duplicate instance id %r" % (iid,))
            wrapped = Instance(inst)
            self.instances.append(wrapped)
            self.by_id[iid] = wrapped
        self.values = {}

    # ------------------------------------------------------------- geometry
    def center(self, inst):
        x0, y0, x1, y1 = inst.data["bbox"]
        return ((x0 + x1) / 2 * self.W / 1000, (y0 + y1) / 2 * self.H / 1000)

    def dist(self, a, b):
        (ax, ay), (bx, by) = self.center(a), self.center(b)
        return math.hypot(ax - bx, ay - by)

    def directional(self, relation, c, a):
        cx, cy = self.center(c)
        ax, ay = self.center(a)
        if relation == "left_of":
            return cx < ax
        if relation == "right_of":
            return cx > ax
        if relation == "above":
            return cy < ay
        if relation == "below":
            return cy > ay
        raise ValueError("unknown directional relation %r" % (relation,))

    def is_between(self, c, a, b):
        px, py = self.center(c)
        ax, ay = self.center(a)
        bx, by = self.center(b)
        ux, uy = bx - ax, by - ay
        vx, vy = px - ax, py - ay
        L2 = ux * ux + uy * uy
        if L2 == 0:
            raise ValueError("between: anchors %r and %r share a center" % (a.id, b.id))
        L = math.sqrt(L2)
        t = (vx * ux + vy * uy) / L2
        d = abs(ux * vy - uy * vx) / L
        return 0.1 <= t <= 0.9 and d <= 0.3 * L

    # --------------------------------------------------------------- values
    def resolve(self, v):
        if isinstance(v, dict):
            if set(v) != {"ref"}:
                raise ValueError("value dict must be exactly {'ref': step_id}, got %r" % (v,))
            sid = v["ref"]
            if not isinstance(sid, str) or sid not in self.values:
                raise ValueError("ref to unknown or not-yet-run step %r" % (sid,))
            return self.values[sid]
        return v

    def as_instance(self, v, what):
        v = self.resolve(v)
        if isinstance(v, Instance):
            return v
        if isinstance(v, str) and v in self.by_id:
            return self.by_id[v]
        raise ValueError("%s must be an instance, got %r" % (what, v))

    def as_int(self, v, what):
        v = self.resolve(v)
        if not _is_int(v):
            raise ValueError("%s must be an integer, got %r" % (what, v))
        return v

    def as_str(self, v, what):
        v = self.resolve(v)
        if isinstance(v, Instance) or not isinstance(v, str):
            raise ValueError("%s must be a string, got %r" % (what, v))
        return v

    # --------------------------------------------------------------- filter
    def compile_filter(self, flt):
        if not isinstance(flt, dict):
            raise ValueError("filter must be a dict, got %r" % (flt,))
        unknown = set(flt) - set(FILTER_KEYS)
        if unknown:
            raise ValueError("unknown filter keys %r" % (sorted(unknown),))
        conds = {}
        for key in ("category", "color", "size", "text"):
            if key in flt:
                conds[key] = self.as_str(flt[key], "filter %r" % key)
        if "part_count" in flt:
            conds["part_count"] = self.as_int(flt["part_count"], "filter 'part_count'")
        excluded = set()
        if "exclude" in flt:
            ex = flt["exclude"]
            if not isinstance(ex, list):
                raise ValueError("filter 'exclude' must be a list, got %r" % (ex,))
            for item in ex:
                excluded.add(self.as_instance(item, "filter 'exclude' item").id)
        return conds, excluded

    def matches(self, inst, compiled):
        conds, excluded = compiled
        data = inst.data
        attrs = data.get("attributes") or {}
        if "category" in conds and data.get("category") != conds["category"]:
            return False
        for key in ("color", "size", "text"):
            if key in conds and attrs.get(key) != conds[key]:
                return False
        if "part_count" in conds:
            pc = attrs.get("part_count")
            if not _is_int(pc) or pc != conds["part_count"]:
                return False
        if inst.id in excluded:
            return False
        return True

    def matching(self, flt):
        compiled = self.compile_filter(flt)
        return [i for i in self.instances if self.matches(i, compiled)]

    # ------------------------------------------------------------ primitives
    def read_number(self, inst):
        text = (inst.data.get("attributes") or {}).get("text")
        if not isinstance(text, str) or not text or any(ch not in "0123456789" for ch in text):
            raise ValueError("read_number: text of %r is not decimal digits: %r" % (inst.id, text))
        return int(text)

    def part_count(self, inst):
        pc = (inst.data.get("attributes") or {}).get("part_count")
        if pc is None:
            raise ValueError("count_parts: %r has no part_count" % (inst.id,))
        if not _is_int(pc):
            raise ValueError("count_parts: part_count of %r is not an int: %r" % (inst.id, pc))
        return pc

    # ------------------------------------------------------------------ ops
    def op_select(self, args):
        found = self.matching(args["filter"])
        if len(found) != 1:
            raise ValueError("select: %d instances match %r (need exactly 1)"
                             % (len(found), args["filter"]))
        return found[0]

    def op_relate(self, args):
        anchor = self.as_instance(args["anchor"], "relate anchor")
        relation = args["relation"]
        if relation not in RELATE_RELATIONS:
            raise ValueError("relate: unknown relation %r" % (relation,))
        cands = [c for c in self.matching(args["filter"]) if c != anchor]
        if relation != "nearest":
            cands = [c for c in cands if self.directional(relation, c, anchor)]
        if not cands:
            raise ValueError("relate: no candidate %s %r" % (relation, anchor.id))
        dists = [(self.dist(c, anchor), c) for c in cands]
        best = min(d for d, _ in dists)
        winners = [c for d, c in dists if d == best]
        if len(winners) != 1:
            raise ValueError("relate: tie for nearest among %r" % ([c.id for c in winners],))
        return winners[0]

    def op_between(self, args):
        a = self.as_instance(args["a"], "between a")
        b = self.as_instance(args["b"], "between b")
        found = [c for c in self.matching(args["filter"])
                 if c != a and c != b and self.is_between(c, a, b)]
        if len(found) != 1:
            raise ValueError("between: %d candidates between %r and %r (need exactly 1)"
                             % (len(found), a.id, b.id))
        return found[0]

    def op_superlative(self, args):
        key, order = args["key"], args["order"]
        if key not in SUPERLATIVE_KEYS:
            raise ValueError("superlative: unknown key %r" % (key,))
        if order not in ("max", "min"):
            raise ValueError("superlative: unknown order %r" % (order,))
        cands = self.matching(args["filter"])
        scored = []
        for c in cands:
            if key == "area":
                v = c.data["area"]
            elif key == "center_x":
                v = self.center(c)[0]
            elif key == "center_y":
                v = self.center(c)[1]
            elif key == "part_count":
                v = (c.data.get("attributes") or {}).get("part_count")
                if v is None:
                    continue  # instances without a part count never match
            else:  # number: the spec (revised after this review) leaves out instances without digits
                try:
                    v = self.read_number(c)
                except ValueError:
                    continue
            scored.append((v, c))
        if not scored:
            raise ValueError("superlative: no instance matches %r" % (args["filter"],))
        pick = max if order == "max" else min
        best = pick(v for v, _ in scored)
        winners = [c for v, c in scored if v == best]
        if len(winners) != 1:
            raise ValueError("superlative: tie for %s %s among %r"
                             % (order, key, [c.id for c in winners]))
        return winners[0]

    def op_attribute(self, args):
        inst = self.as_instance(args["instance"], "attribute instance")
        name = args["name"]
        if name not in ATTRIBUTE_NAMES:
            raise ValueError("attribute: unknown name %r" % (name,))
        value = (inst.data.get("attributes") or {}).get(name)
        if not isinstance(value, str):
            raise ValueError("attribute: %r has no %s" % (inst.id, name))
        return value

    def op_count_parts(self, args):
        return self.part_count(self.as_instance(args["instance"], "count_parts instance"))

    def op_read_number(self, args):
        return self.read_number(self.as_instance(args["instance"], "read_number instance"))

    def op_count(self, args):
        has_rel, has_anchor = "relation" in args, "anchor" in args
        if has_rel != has_anchor:
            raise ValueError("count: relation and anchor must be given together")
        found = self.matching(args["filter"])
        if has_rel:
            relation = args["relation"]
            if relation not in DIRECTIONS:
                raise ValueError("count: unknown relation %r" % (relation,))
            anchor = self.as_instance(args["anchor"], "count anchor")
            found = [c for c in found if c != anchor and self.directional(relation, c, anchor)]
        return len(found)

    def op_add(self, args):
        return self.as_int(args["a"], "add a") + self.as_int(args["b"], "add b")

    def op_sub(self, args):
        return self.as_int(args["a"], "sub a") - self.as_int(args["b"], "sub b")

    def op_mul(self, args):
        return self.as_int(args["a"], "mul a") * self.as_int(args["b"], "mul b")

    # -------------------------------------------------------------- program
    def run(self):
        prog = self.program
        if not isinstance(prog, dict) or "steps" not in prog or "output" not in prog:
            raise ValueError("program must be {'steps': [...], 'output': step_id}")
        steps = prog["steps"]
        if not isinstance(steps, list):
            raise ValueError("program steps must be a list")
        for step in steps:
            if not isinstance(step, dict):
                raise ValueError("step must be a dict, got %r" % (step,))
            sid, op, args = step.get("id"), step.get("op"), step.get("args")
            if not isinstance(sid, str):
                raise ValueError("step id must be a string, got %r" % (sid,))
            if sid in self.values:
                raise ValueError("duplicate step id %r" % (sid,))
            if op not in OP_ARGS:
                raise ValueError("unknown op %r in step %r" % (op, sid))
            if not isinstance(args, dict):
                raise ValueError("args of step %r must be a dict" % (sid,))
            required, optional = OP_ARGS[op]
            missing = required - set(args)
            extra = set(args) - required - optional
            if missing or extra:
                raise ValueError("step %r (%s): missing args %r, unexpected args %r"
                                 % (sid, op, sorted(missing), sorted(extra)))
            self.values[sid] = getattr(self, "op_" + op)(args)
        out = prog["output"]
        if out not in self.values:
            raise ValueError("output step %r does not exist" % (out,))
        result = self.values[out]
        return result.id if isinstance(result, Instance) else result


def run_program(record):
    """Execute ``record["program"]`` against ``record`` and return its answer.

    Instance results are returned as their instance id. Raises ``ValueError``
    on every documented execution error.
    """
    return _Executor(record).run()


def run_program_json(line):
    """Convenience: execute a record given as a JSON string."""
    return run_program(json.loads(line))

"""Independent executor for the HopChain program op set (specification v2).

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

* Floating-point evaluation: centers are computed literally, left to right, as
  ``(x0 + x1) / 2 * W / 1000``; ``dist`` uses ``math.hypot``; in ``between``
  ``L**2`` is computed as the dot product ``(B - A)·(B - A)`` and ``L`` as its
  square root.  The spec says comparisons are exact but does not fix the
  evaluation of "Euclidean distance" / ``L²`` to the last bit; ties and
  boundary cases are exact ``==`` / ``<=`` on these values, no tolerance.
* ``between`` with ``a`` and ``b`` sharing a center (including ``a`` being the
  same instance as ``b``) raises ``ValueError`` before any candidate is looked
  at.
* ``superlative``: the filter must match at least one instance, and at least
  one instance must remain after leaving out those without a key value;
  otherwise ``ValueError``.  "digits" (key ``number``) means one or more ASCII
  ``0-9`` (as in ``read_number``); ``int("07") == 7``.
* ``compare``: "they must differ" is read as "a and b are different instances"
  (different ids); equal key values of two different instances raise.
* Filter refs: "a ref must produce a colour string" / "a size string" is
  checked by provenance: the only op producing strings is ``attribute``, so a
  ``color`` ref must name an ``attribute`` step with ``name == "color"`` and a
  ``size`` ref one with ``name == "size"``; anything else raises.  A ref in
  ``category``, ``text`` or ``part_count`` raises ("the other values are
  literals").  Literal filter values are type-checked (``category``/``color``/
  ``size``/``text`` strings, ``part_count`` an int, ``exclude`` a list).
  ``exclude`` items may be refs or instance ids; an id naming no instance
  raises.
* Names (``relation``, ``key``, ``order``, attribute ``name``) are taken
  literally; a ``{"ref": ...}`` there is an unknown name.  (No op produces a
  string that could be a valid name, so resolving the ref would change no
  outcome.)
* ``{"ref": ...}`` is accepted for every instance/integer argument; the resolved
  value is type-checked (instance arguments instances, arithmetic integers).  A
  literal string naming an existing instance id is accepted where an instance
  is expected.
* ``count`` with ``relation`` but no ``anchor``, or ``anchor`` but no
  ``relation``, raises (the spec first stated only the former; its revision
  "relation and anchor come together" settles the latter, and this follows it).
  ``count`` rejects ``nearest`` and ``farthest``.
* ``occludes``: a missing key is the empty list (stated); a present value that
  is not a list of strings raises when an occlusion predicate reads it.
* ``attribute`` raises when the attribute value is not a string.
* Unknown ops, unknown filter keys, unknown/missing op arguments, unknown
  relations/keys/orders/attribute names, duplicate step ids, refs to unknown or
  later steps, and an unknown ``output`` step all raise ``ValueError``.  The
  step's ``hop`` is ignored.
* Integers are Python ``int`` but not ``bool``.
"""

import json
import math

__all__ = ["run_program", "run_program_json", "Instance"]


DIRECTIONS = ("left_of", "right_of", "above", "below")
OCCLUSIONS = ("in_front_of", "behind")
COUNT_RELATIONS = DIRECTIONS + OCCLUSIONS
RELATE_RELATIONS = ("nearest", "farthest") + COUNT_RELATIONS
FILTER_KEYS = ("category", "color", "size", "text", "part_count", "exclude")
SUPERLATIVE_KEYS = ("area", "center_x", "center_y", "part_count", "number")
ATTRIBUTE_NAMES = ("color", "size")
ORDERS = ("max", "min")
ASCII_DIGITS = frozenset("0123456789")
ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

# op -> (required args, optional args)
OP_ARGS = {
    "select": ({"filter"}, set()),
    "relate": ({"anchor", "relation", "filter"}, set()),
    "between": ({"a", "b", "filter"}, set()),
    "superlative": ({"filter", "key", "order"}, set()),
    "compare": ({"a", "b", "key", "order"}, set()),
    "attribute": ({"instance", "name"}, set()),
    "count_parts": ({"instance"}, set()),
    "read_number": ({"instance"}, set()),
    "count_letters": ({"instance"}, set()),
    "count": ({"filter"}, {"relation", "anchor"}),
    "count_side": ({"filter", "anchor", "axis"}, set()),
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


def _is_ref(v):
    return isinstance(v, dict)


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
        self.string_kind = {}   # step id -> "color" | "size" for attribute steps

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
        dx, dy = cx - ax, cy - ay
        if relation == "left_of":
            return -dx > abs(dy)
        if relation == "right_of":
            return dx > abs(dy)
        if relation == "above":
            return -dy > abs(dx)
        if relation == "below":
            return dy > abs(dx)
        raise ValueError("unknown directional relation %r" % (relation,))

    @staticmethod
    def occludes(inst):
        occ = inst.data.get("occludes", [])
        if not isinstance(occ, list) or not all(isinstance(o, str) for o in occ):
            raise ValueError("occludes of %r must be a list of instance ids, got %r"
                             % (inst.id, occ))
        return occ

    def satisfies(self, relation, c, a):
        """Directional or occlusion predicate for candidate c and anchor a."""
        if relation in DIRECTIONS:
            return self.directional(relation, c, a)
        if relation == "in_front_of":
            return a.id in self.occludes(c)
        if relation == "behind":
            return c.id in self.occludes(a)
        raise ValueError("unknown relation %r" % (relation,))

    def check_between_anchors(self, a, b):
        (ax, ay), (bx, by) = self.center(a), self.center(b)
        if bx - ax == 0 and by - ay == 0:
            raise ValueError("between: %r and %r share a center" % (a.id, b.id))

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
    def ref_id(self, v):
        if set(v) != {"ref"}:
            raise ValueError("value dict must be exactly {'ref': step_id}, got %r" % (v,))
        sid = v["ref"]
        if not isinstance(sid, str) or sid not in self.values:
            raise ValueError("ref to unknown or not-yet-run step %r" % (sid,))
        return sid

    def resolve(self, v):
        if _is_ref(v):
            return self.values[self.ref_id(v)]
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

    @staticmethod
    def literal_str(v, what):
        if not isinstance(v, str):
            raise ValueError("%s must be a literal string, got %r" % (what, v))
        return v

    # --------------------------------------------------------------- filter
    def compile_filter(self, flt):
        if not isinstance(flt, dict):
            raise ValueError("filter must be a dict, got %r" % (flt,))
        unknown = set(flt) - set(FILTER_KEYS)
        if unknown:
            raise ValueError("unknown filter keys %r" % (sorted(unknown),))
        conds = {}
        for key in ("category", "text"):
            if key in flt:
                conds[key] = self.literal_str(flt[key], "filter %r" % key)
        for key in ("color", "size"):     # str | ref producing a colour / size string
            if key in flt:
                v = flt[key]
                if _is_ref(v):
                    sid = self.ref_id(v)
                    value = self.values[sid]
                    if self.string_kind.get(sid) != key or not isinstance(value, str):
                        raise ValueError("filter %r: ref %r does not produce a %s string"
                                         % (key, sid, key))
                    conds[key] = value
                else:
                    conds[key] = self.literal_str(v, "filter %r" % key)
        if "part_count" in flt:
            pc = flt["part_count"]
            if not _is_int(pc):
                raise ValueError("filter 'part_count' must be a literal int, got %r" % (pc,))
            conds["part_count"] = pc
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
    @staticmethod
    def text_of(inst):
        return (inst.data.get("attributes") or {}).get("text")

    def read_number(self, inst):
        text = self.text_of(inst)
        if not isinstance(text, str) or not text or any(ch not in ASCII_DIGITS for ch in text):
            raise ValueError("read_number: text of %r is not ASCII digits: %r" % (inst.id, text))
        return int(text)

    def part_count(self, inst):
        pc = (inst.data.get("attributes") or {}).get("part_count")
        if pc is None:
            raise ValueError("count_parts: %r has no part_count" % (inst.id,))
        if not _is_int(pc):
            raise ValueError("count_parts: part_count of %r is not an int: %r" % (inst.id, pc))
        return pc

    def key_value(self, inst, key):
        """The superlative/compare key of inst, or None when it has no key value."""
        if key == "area":
            return inst.data["area"]
        if key == "center_x":
            return self.center(inst)[0]
        if key == "center_y":
            return self.center(inst)[1]
        if key == "part_count":
            pc = (inst.data.get("attributes") or {}).get("part_count")
            if pc is None:
                return None
            if not _is_int(pc):
                raise ValueError("part_count of %r is not an int: %r" % (inst.id, pc))
            return pc
        if key == "number":
            try:
                return self.read_number(inst)
            except ValueError:
                return None
        raise ValueError("unknown key %r" % (key,))

    @staticmethod
    def check_key_order(op, key, order):
        if key not in SUPERLATIVE_KEYS:
            raise ValueError("%s: unknown key %r" % (op, key))
        if order not in ORDERS:
            raise ValueError("%s: unknown order %r" % (op, order))

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
        if relation not in ("nearest", "farthest"):
            cands = [c for c in cands if self.satisfies(relation, c, anchor)]
        if not cands:
            raise ValueError("relate: no candidate %s %r" % (relation, anchor.id))
        dists = [(self.dist(c, anchor), c) for c in cands]
        pick = max if relation == "farthest" else min
        best = pick(d for d, _ in dists)
        winners = [c for d, c in dists if d == best]
        if len(winners) != 1:
            raise ValueError("relate: tie for the %s distance among %r"
                             % (pick.__name__, [c.id for c in winners]))
        return winners[0]

    def op_between(self, args):
        a = self.as_instance(args["a"], "between a")
        b = self.as_instance(args["b"], "between b")
        self.check_between_anchors(a, b)
        found = [c for c in self.matching(args["filter"])
                 if c != a and c != b and self.is_between(c, a, b)]
        if len(found) != 1:
            raise ValueError("between: %d candidates between %r and %r (need exactly 1)"
                             % (len(found), a.id, b.id))
        return found[0]

    def op_superlative(self, args):
        key, order = args["key"], args["order"]
        self.check_key_order("superlative", key, order)
        cands = self.matching(args["filter"])
        if not cands:
            raise ValueError("superlative: no instance matches %r" % (args["filter"],))
        scored = []
        for c in cands:
            v = self.key_value(c, key)
            if v is not None:          # instances without a key value are left out
                scored.append((v, c))
        if not scored:
            raise ValueError("superlative: no instance matching %r has a %s"
                             % (args["filter"], key))
        pick = max if order == "max" else min
        best = pick(v for v, _ in scored)
        winners = [c for v, c in scored if v == best]
        if len(winners) != 1:
            raise ValueError("superlative: tie for %s %s among %r"
                             % (order, key, [c.id for c in winners]))
        return winners[0]

    def op_compare(self, args):
        a = self.as_instance(args["a"], "compare a")
        b = self.as_instance(args["b"], "compare b")
        key, order = args["key"], args["order"]
        self.check_key_order("compare", key, order)
        if a == b:
            raise ValueError("compare: a and b are the same instance %r" % (a.id,))
        va, vb = self.key_value(a, key), self.key_value(b, key)
        if va is None or vb is None:
            raise ValueError("compare: %r or %r has no %s" % (a.id, b.id, key))
        if va == vb:
            raise ValueError("compare: %r and %r have equal %s %r" % (a.id, b.id, key, va))
        if order == "max":
            return a if va > vb else b
        return a if va < vb else b

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

    def op_count_letters(self, args):
        inst = self.as_instance(args["instance"], "count_letters instance")
        text = self.text_of(inst)
        if not isinstance(text, str) or not text or any(ch not in ASCII_LETTERS for ch in text):
            raise ValueError("count_letters: text of %r is not ASCII letters: %r"
                             % (inst.id, text))
        return len(text)

    def op_count(self, args):
        if ("relation" in args) != ("anchor" in args):
            raise ValueError("count: relation and anchor come together")
        anchor = None
        if "anchor" in args:
            anchor = self.as_instance(args["anchor"], "count anchor")
        found = self.matching(args["filter"])
        if "relation" in args:
            relation = args["relation"]
            if relation not in COUNT_RELATIONS:
                raise ValueError("count: unknown relation %r" % (relation,))
            found = [c for c in found if c != anchor and self.satisfies(relation, c, anchor)]
        return len(found)

    def op_count_side(self, args):
        axis = args["axis"]
        if axis not in ("x", "y"):
            raise ValueError("count_side: axis must be x or y, got %r" % (axis,))
        anchor = self.as_instance(args["anchor"], "count_side anchor")
        k, half = (0, self.W / 2) if axis == "x" else (1, self.H / 2)
        a = self.center(anchor)[k]
        if a == half:
            raise ValueError("count_side: the anchor's center is on the middle line")
        return sum(1 for c in self.matching(args["filter"])
                   if c != anchor and (self.center(c)[k] < half) == (a < half) and self.center(c)[k] != half)

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
            if op == "attribute":
                self.string_kind[sid] = args["name"]
        out = prog["output"]
        if not isinstance(out, str) or out not in self.values:
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

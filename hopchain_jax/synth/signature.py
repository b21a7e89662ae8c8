"""Computation signatures: two queries on one image that compute the same thing get the same signature.

A near-duplicate repeats an earlier query of its image with the same instances, the same values and the
same arithmetic, with only the order of the hops or the wording changed (e.g. "count the dice pips,
then the card's number, add" and "read the card, then count the pips, add"). The signature of a query is

  (the set of instances it uses, the multiset of its value leaves, its combine tree)

where a value leaf is (op, set of the hop's instances, value) of every hop whose value is a number, and
the combine tree is the arithmetic that makes the answer: (op, left leaf, right leaf) with the operands
sorted for the commutative add and mul and the minuend first for sub, or the last leaf alone. The paths that found the instances
(which anchor, which link) are not part of it: they only decide which instances a value is about.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

COMMUTATIVE = frozenset({"add", "mul"})


def _leaf(hop: Mapping[str, Any]) -> tuple:
    return (hop["op"], tuple(sorted(hop["instance_ids"])), hop["value"])


def _is_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def computation_signature(hops: Sequence[Mapping[str, Any]]) -> tuple:
    """The signature (module docstring) of a query's schema-v2 hops."""
    instances = tuple(sorted({i for hop in hops for i in hop["instance_ids"]}))
    leaves = tuple(sorted((_leaf(h) for h in hops if _is_number(h["value"])), key=repr))
    last = hops[-1]
    if last.get("combine"):
        left, right = _leaf(hops[last["combine"]["with_hop"]]), _leaf(last)
        if last["combine"]["op"] in COMMUTATIVE:
            left, right = sorted((left, right), key=repr)
        elif left[2] - right[2] != last["combine"]["value"]:
            left, right = right, left   # sub: the minuend first, whichever hop came first
        tree = (last["combine"]["op"], left, right)
    else:
        tree = _leaf(last)
    return instances, leaves, tree

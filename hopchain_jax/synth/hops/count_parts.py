"""count_parts: count the parts (dots, eyes, petals, pips, windows, points) of a found instance (Level 1).
Program: count_parts {instance}."""
from __future__ import annotations

from hopchain_jax.synth import phrasing
from hopchain_jax.synth.hops.base import HopForm, register_form

SENTENCES = {"count_parts": ("Count the {parts} on {ref}.", "Count how many {parts} {ref} has.",
                             "Note the number of {parts} on {ref}.")}
QUESTIONS = ("How many {parts} does {ref} have?", "What is the number of {parts} on {ref}?")


def value_options(scene, inst_id: str) -> list[tuple]:
    n = scene.by_id[inst_id]["attributes"].get("part_count")
    return [] if n is None else [(n, (), ())]


def value_from(scene, alt_id: str, params: dict):
    return scene.by_id[alt_id]["attributes"]["part_count"]


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    cat = r.subject(spec)["category"]
    s = r.say(SENTENCES["count_parts"], parts=phrasing.parts_word(cat), ref=ref)
    sid = r.main_step("count_parts", {"instance": arg})
    return s, lambda env: f"It has {env[sid]} {phrasing.parts_word(cat, env[sid])}."


FORM = register_form(HopForm(
    name="count_parts", op="count_parts", role="value", kind="perception", level=1, sentences=SENTENCES,
    questions=QUESTIONS, emit=emit, value_options=value_options, value_from=value_from, scope="instance",
    question_fields=lambda r, spec: {"parts": phrasing.parts_word(r.subject(spec)["category"]), "ref": r.ref_phrase},
    blind_kind=lambda spec, subject_category: ("count_parts", subject_category, ""),
    asks=frozenset({"parts"}), names_kind=True, doc="the number of parts of a found instance"))

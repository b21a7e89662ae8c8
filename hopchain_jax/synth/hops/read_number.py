"""read_number: read the number a found card shows (Level 1). Program: read_number {instance}."""
from __future__ import annotations

from hopchain_jax.synth.hops.base import HopForm, register_form
from hopchain_jax.world.catalog import CATEGORIES

SENTENCES = {"read_number": ("Read the number on {ref}.", "Note the number written on {ref}.",
                             "Read off the number shown on {ref}.")}
QUESTIONS = ("What number is written on {ref}?", "Which number does {ref} show?")


def value_options(scene, inst_id: str) -> list[tuple]:
    inst = scene.by_id[inst_id]
    return [(int(inst["attributes"]["text"]), (), ())] if CATEGORIES[inst["category"]].text == "number" else []


def value_from(scene, alt_id: str, params: dict):
    return int(scene.by_id[alt_id]["attributes"]["text"])


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    s = r.say(SENTENCES["read_number"], ref=ref)
    sid = r.main_step("read_number", {"instance": arg})
    return s, lambda env: f"It shows {env[sid]}."


FORM = register_form(HopForm(
    name="read_number", op="read_number", role="value", kind="perception", level=1, sentences=SENTENCES,
    questions=QUESTIONS, emit=emit, value_options=value_options, value_from=value_from, scope="instance",
    question_fields=lambda r, spec: {"ref": r.ref_phrase},
    blind_kind=lambda spec, subject_category: ("read_number", subject_category, ""),
    asks=frozenset({"number", "text"}), names_kind=True, doc="the number a found card shows"))

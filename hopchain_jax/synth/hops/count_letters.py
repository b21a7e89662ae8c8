"""count_letters: count the letters of the word on a found sign (Level 1). Program: count_letters {instance}."""
from __future__ import annotations

from hopchain_jax.synth.hops.base import HopForm, register_form
from hopchain_jax.world.catalog import CATEGORIES

SENTENCES = {"count_letters": ("Count the letters of the word on {ref}.", "Read the word on {ref} and count its letters.",
                               "Note how many letters the word on {ref} has.")}
QUESTIONS = ("How many letters does the word on {ref} have?", "What is the number of letters in the word on {ref}?")


def value_options(scene, inst_id: str) -> list[tuple]:
    inst = scene.by_id[inst_id]
    return [(len(inst["attributes"]["text"]), (), ())] if CATEGORIES[inst["category"]].text == "word" else []


def value_from(scene, alt_id: str, params: dict):
    return len(scene.by_id[alt_id]["attributes"]["text"])


def emit(r, spec):
    arg, ref = r.ref(spec.uses[0])
    s = r.say(SENTENCES["count_letters"], ref=ref)
    sid = r.main_step("count_letters", {"instance": arg})
    word = r.subject(spec)["attributes"]["text"]
    return s, lambda env: f'The word is "{word}", which has {env[sid]} letters.'


FORM = register_form(HopForm(
    name="count_letters", op="count_letters", role="value", kind="perception", level=1, sentences=SENTENCES,
    questions=QUESTIONS, emit=emit, value_options=value_options, value_from=value_from, scope="instance",
    question_fields=lambda r, spec: {"ref": r.ref_phrase},
    blind_kind=lambda spec, subject_category: ("count_letters", subject_category, ""),
    asks=frozenset({"text"}), names_kind=True, doc="the letters of the word on a found sign"))

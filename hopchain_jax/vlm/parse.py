"""Parsing model output robustly (stage 1: the VLM's list of object categories).

Models wrap JSON in code fences, think aloud before it (`<think>...</think>`), add a sentence after it,
repeat items and use plurals. `parse_categories` takes the first JSON value that holds a list of names
(a list of strings, a list of {"category"|"name": ...} objects, or {"categories": [...]}), normalises
each name (lower case, single spaces, singular) and drops duplicates. Output it cannot read gives no
categories and a reason, so the image is skipped and counted rather than the run stopped.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_IRREGULAR = {"people": "person", "children": "child", "men": "man", "women": "woman", "mice": "mouse",
              "geese": "goose", "feet": "foot", "teeth": "tooth", "dice": "die", "leaves": "leaf",
              "knives": "knife", "wolves": "wolf", "shelves": "shelf", "loaves": "loaf", "oxen": "ox",
              "buses": "bus", "gases": "gas", "lenses": "lens", "cactuses": "cactus"}
_KEEP = ("ss", "us", "is", "ous")  # glass, bus, tennis, ...: not plurals


@dataclasses.dataclass(frozen=True)
class CategoryParse:
    """categories: normalised, distinct, in the model's order; problem: why nothing usable was found;
    transient: the problem is a model call that may succeed later (ChatResult.transient)."""

    categories: list[str]
    problem: str | None = None
    transient: bool = False


def singular(noun: str) -> str:
    """English singular of the last word of a category name ("red apples" -> "red apple")."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR:
        last = _IRREGULAR[last]
    elif last.endswith("ies") and len(last) > 4:
        last = last[:-3] + "y"
    elif last.endswith(("sses", "ches", "shes", "xes", "zzes")):
        last = last[:-2]
    elif last.endswith("s") and not last.endswith(_KEEP) and len(last) > 3:
        last = last[:-1]
    return f"{head} {last}" if head else last


def normalise(name: str) -> str:
    name = re.sub(r"\s+", " ", name.strip().lower()).strip(" .,;:!?\"'`*-")
    return singular(name) if name else name


def json_values(text: str):
    """Every JSON value that starts at a '[' or '{' of `text`, in order."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        yield value


def answer_json_values(text: str):
    """The JSON values of a model's answer: after any `<think>...</think>`, those in code fences first,
    then those in the whole text."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    for chunk in [m.group(1) for m in FENCE.finditer(text)] + [text]:
        yield from json_values(chunk)


def _names(value: Any) -> list[str] | None:
    if isinstance(value, dict):
        for key in ("categories", "objects", "items"):
            if isinstance(value.get(key), list):
                return _names(value[key])
        return None
    if not isinstance(value, list):
        return None
    names = []
    for item in value:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("category") or item.get("name"), str):
            names.append(item.get("category") or item.get("name"))
        else:
            return None
    return names


def parse_categories(text: str, max_categories: int = 64) -> CategoryParse:
    """The category list in a model's answer (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        return CategoryParse([], "empty output")
    for value in answer_json_values(text):
        names = _names(value)
        if names is None:
            continue
        out = list(dict.fromkeys(n for n in map(normalise, names) if n))
        if not out:
            return CategoryParse([], "the list is empty")
        return CategoryParse(out[:max_categories])
    return CategoryParse([], "no JSON list of category names in the output")

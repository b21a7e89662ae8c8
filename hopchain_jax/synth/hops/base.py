"""The hop-form registry: what a hop form is, and the one table of them the composer and realizer read.

A hop form is one way a chain takes a step (SPEC §1, §3): "select" (pick an instance by what it shows),
"relate" (from a found instance to the nearest / leftward ... one of a category), "count_parts" (read
a number off a found instance), ... . Each form lives in its own module of this package and registers
one `HopForm` holding everything about it:

  identity   name, the program op of its main step (an `Executor.op_*` of program.py; the op's class in
             program.py -- INSTANCE_OPS or NUMBER_OPS -- says whether the hop finds an instance or
             yields a number), its SPEC §3 kind and level, and its role in a chain;
  wording    its sentence templates (imperative, keyed, several per key) and, for value forms, the
             question templates used when it ends the chain;
  generation a hook listing every clear option of the form in a scene (role-specific, see below);
  emission   `emit(realizer, spec) -> (sentence, explain)`: the program steps it appends through the
             realizer and the rationale text, explain(step values) -> str;
  gallery    `outline`: how `hopchain inspect` outlines the instances of a hop of this form ("solid": the
             instance it finds or reads; "dashed": a counted set).

How a chain is put together from the roles (which anchor, when to steer towards a two-instance link,
when to compare, how values are balanced) is the composer's policy (composer.py), not the forms'.

Roles and their generation hooks (`scene` is the ClearScene of the image, clarity.py):
  anchor   hop 0; anchor_options(scene) -> [HopSpec]
  link     instance chain; link_options(scene, anchor_id, other_id | None) -> [(target id, params)];
           arity 1 forms leave from the last found instance, arity 2 forms from the last two; the
           composer picks a link form by `weight` among those with options, then a relation, a target
  compare  Level-2 comparison of the last two found instances (the composer builds it)
  value    a number about a found instance; value_options(scene, inst_id) -> [(value, counted ids,
           params)], and value_from(scene, alt_id, params), the value a reader who mistook another
           instance for it would get (the local counterfactual). scope "instance" reads the instance
           itself; "set" counts other objects relative to it (sorted after the reads, by category)

Forms with `default=False` are registered but composed only when a run names them
(ComposerConfig.opt_in_forms), so adding a form never changes the default data.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from hopchain_jax.synth.program import INSTANCE_OPS, NUMBER_OPS, Executor

ROLES = ("anchor", "link", "compare", "value")
KINDS = ("perception", "instance_chain")


@dataclasses.dataclass
class HopSpec:
    """One hop of a full chain before it is turned into text and program steps.

    form: hop form (a key of HOP_FORMS); kind/level: SPEC §3 labels; inst: the instance an instance hop
    establishes (None for value hops); uses: earlier hops whose instances it refers to; counted:
    instances a counting hop counts; params: form details; known: what the question's words already
    give away about `inst` ("color", "size", "parts", "number", "text"); combine: (arith op, earlier
    hop, a_first) or None; value: the hop's own result (instance id or int); combined: the result after
    `combine` (None without one). Both are checked against execution.
    """

    form: str
    kind: str
    level: int
    value: Any
    inst: str | None = None
    uses: tuple[int, ...] = ()
    counted: tuple[str, ...] = ()
    params: dict = dataclasses.field(default_factory=dict)
    known: frozenset = frozenset()
    combine: tuple[str, int, bool] | None = None
    combined: int | None = None

    @property
    def op(self) -> str:
        return HOP_FORMS[self.form].op

    def instance_ids(self, chain: Sequence["HopSpec"]) -> list[str]:
        ids = [chain[h].inst for h in self.uses] + ([self.inst] if self.inst else []) + list(self.counted)
        return list(dict.fromkeys(ids))


@dataclasses.dataclass(frozen=True)
class HopForm:
    """One registered hop form (module docstring). Hooks not used by the form's role stay None.

    asks: what the hop reads of the instance it starts from; the composer skips it when the question's
    words already say so (e.g. count_parts asks "parts": not after "the ladybug with 4 dots").
    gives: what its words give away about the instance it finds (link forms; e.g. same_color: "color").
    names_kind: a value form whose wording names the instance's kind of part or text ("the dots on
    that ladybug"); it is left out when the instance is named only as "the larger one".
    question_fields(realizer, spec) -> format fields of `questions` (value forms).
    blind_kind(spec, subject category | None) -> the prior key stats.blind_keys gives its main step.
    """

    name: str
    op: str
    role: str
    kind: str
    level: int
    sentences: dict[str, tuple[str, ...]]
    emit: Callable[..., tuple[str, Callable[[dict], str]]]
    questions: tuple[str, ...] = ()
    question_fields: Callable[..., dict] | None = None
    anchor_options: Callable[..., list] | None = None
    link_options: Callable[..., list] | None = None
    arity: int = 1
    weight: float = 1.0
    value_options: Callable[..., list] | None = None
    value_from: Callable[..., Any] | None = None
    scope: str = "instance"
    blind_kind: Callable[..., tuple] | None = None
    asks: frozenset = frozenset()
    gives: frozenset = frozenset()
    names_kind: bool = False
    outline: str = "solid"
    default: bool = True
    doc: str = ""

    @property
    def value_kind(self) -> str:
        """"instance" or "number": the class of its op in program.py (the single source)."""
        return "instance" if self.op in INSTANCE_OPS else "number"


HOP_FORMS: dict[str, HopForm] = {}

_ROLE_HOOKS = {"anchor": ("anchor_options",), "link": ("link_options",), "compare": (),
               "value": ("value_options", "value_from", "blind_kind", "question_fields")}


def register_form(form: HopForm) -> HopForm:
    """Add `form` to HOP_FORMS (registration order is the order options are listed in); returns it.

    Refused, by name: a taken name, an op the executor lacks or that is neither an instance nor a
    number op, an unknown role / kind, a missing hook of its role, a value form without questions, or a
    sentence key another form already uses (phrasing is looked up by key)."""
    if form.name in HOP_FORMS:
        raise ValueError(f"hop form {form.name!r} is already registered")
    if not callable(getattr(Executor, f"op_{form.op}", None)) or form.op not in INSTANCE_OPS | NUMBER_OPS:
        raise ValueError(f"hop form {form.name!r}: op {form.op!r} needs an Executor.op_{form.op} in program.py and "
                         f"a place in INSTANCE_OPS or NUMBER_OPS there")
    if form.role not in ROLES or form.kind not in KINDS:
        raise ValueError(f"hop form {form.name!r}: role must be one of {ROLES} and kind one of {KINDS}, "
                         f"got {form.role!r} / {form.kind!r}")
    missing = [hook for hook in _ROLE_HOOKS[form.role] if getattr(form, hook) is None]
    if missing:
        raise ValueError(f"hop form {form.name!r} ({form.role}) needs the hooks {missing}")
    if form.role == "value" and (not form.questions or form.value_kind != "number" or form.scope not in ("instance", "set")):
        raise ValueError(f"hop form {form.name!r}: a value form needs question templates, a number op and "
                         f"scope 'instance' or 'set'")
    taken = {key: other.name for other in HOP_FORMS.values() for key in other.sentences}
    clash = sorted(set(form.sentences) & set(taken))
    if clash:
        raise ValueError(f"hop form {form.name!r}: sentence keys {clash} belong to {[taken[k] for k in clash]}")
    HOP_FORMS[form.name] = form
    return form


def form(name: str) -> HopForm:
    """The registered form `name`; an unknown name is refused, listing the registered ones."""
    if name not in HOP_FORMS:
        raise ValueError(f"unknown hop form {name!r}; registered: {sorted(HOP_FORMS)}")
    return HOP_FORMS[name]


def forms(role: str, opt_in: Sequence[str] = ()) -> list[HopForm]:
    """The forms of `role` a run composes, in registration order: the default ones and those opted in."""
    unknown = [name for name in opt_in if name not in HOP_FORMS]
    if unknown:
        raise ValueError(f"unknown hop forms {unknown} opted in; registered: {sorted(HOP_FORMS)}")
    return [f for f in HOP_FORMS.values() if f.role == role and (f.default or f.name in opt_in)]


def templates(key: str) -> tuple[str, ...]:
    """The sentence templates registered under `key` (by whichever form owns it)."""
    for f in HOP_FORMS.values():
        if key in f.sentences:
            return f.sentences[key]
    raise KeyError(f"no hop form has sentence templates {key!r}")


def outline(op: str) -> str:
    """How the gallery outlines the instances of a hop whose main step is `op` (first form with it)."""
    return next((f.outline for f in HOP_FORMS.values() if f.op == op), "solid")


def there_are(n: int) -> str:
    return f"There is {n}" if n == 1 else f"There are {n}"

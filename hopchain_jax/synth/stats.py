"""Dataset statistics: answer histograms, op counts and two blind baselines.

A blind baseline answers without looking at the image. If one scores well, the questions leak their
answers through their wording or through skewed values, and RL on them rewards guessing. Two are
measured on full-chain queries:
  most_common  always answer the most common full-chain answer of the dataset;
  text_only    read the question's structure (which objects are counted, read or compared and how the
               numbers are combined: everything the words state) and replace every value that needs the
               image by the most common value of that kind in the dataset (e.g. "the dots of a
               ladybug" -> the most common ladybug dot count, "balls directly left of ..." -> the most
               common such count), then do the stated arithmetic. Its priors are fitted on all the
               other full queries of the dataset (leave one out), as a rule trained on the data would.
Both are upper bounds of what a text-only rule learns from the data; the synthesis goal is <= 15%
(text_only) and <= 10% (most_common).
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Mapping

from hopchain_jax.synth.program import ARITHMETIC_OPS, INSTANCE_OPS, NUMBER_OPS, Executor, ProgramError
from hopchain_jax.variants import CHAIN_VARIANTS

TEXT_ONLY_RULE = ("per value step, the most common value of its kind (op + category + relation) in the dataset, "
                  "then the question's arithmetic")


def blind_keys(program: Mapping[str, Any]) -> dict[str, Any]:
    """Step id -> what the words say about the step: a category for instance steps, a prior key for
    number steps (op, category, how), or the arithmetic op."""
    said: dict[str, Any] = {}
    for step in program["steps"]:
        op, args = step["op"], step["args"]
        if op == "compare":
            said[step["id"]] = None  # "the larger one": the words do not say which
        elif op in INSTANCE_OPS:
            said[step["id"]] = args["filter"].get("category")
        elif op in NUMBER_OPS and "filter" in args:  # a set count: what is counted, and how the words say so
            flt = args["filter"]
            how = "_".join(str(v) for k, v in sorted(args.items()) if k not in ("filter", "anchor") and isinstance(v, str))
            how = how or ("same_" + "_".join(sorted(k for k in flt if k not in ("category", "exclude"))))
            said[step["id"]] = (op, flt.get("category"), how)
        elif op in NUMBER_OPS:
            inst = args["instance"]
            cat = said.get(inst["ref"]) if isinstance(inst, dict) else None
            said[step["id"]] = (op, cat, "")
        else:
            said[step["id"]] = op
    return said


def blind_guess(program: Mapping[str, Any], said: Mapping[str, Any], prior: Callable[[str], int]) -> Any:
    """The text-only rule's answer: each number step replaced by prior(step id), arithmetic kept."""
    env: dict[str, Any] = {}
    for step in program["steps"]:
        sid, op = step["id"], step["op"]
        if op in NUMBER_OPS:
            env[sid] = prior(sid)
        elif op in ARITHMETIC_OPS:
            a, b = (env.get(step["args"][k]["ref"]) if isinstance(step["args"][k], dict) else step["args"][k]
                    for k in ("a", "b"))
            env[sid] = {"add": a + b, "sub": a - b, "mul": a * b}[op] if isinstance(a, int) and isinstance(b, int) else None
        else:
            env[sid] = None
    return env.get(program["output"])


def blind_baselines(records: Iterable[Mapping[str, Any]], variant: str = "full") -> dict[str, Any]:
    """Accuracy of the two blind baselines on the records of `variant` (default: the full chains) among
    `records`; the priors are fitted on that variant's records only."""
    chosen = [r for r in records if r["variant"] == variant and r.get("program")]
    if not chosen:
        return {"most_common": None, "text_only": None, "text_only_rule": TEXT_ONLY_RULE, "queries": 0}
    answers = collections.Counter(r["answer"] for r in chosen)
    values: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    saids, envs = [], []
    for rec in chosen:
        said = blind_keys(rec["program"])
        try:
            _, env = Executor(rec["instances"], rec["image"]["width"], rec["image"]["height"]).run(rec["program"])
        except ProgramError:
            env = {}
        saids.append(said)
        envs.append(env)
        for sid, key in said.items():
            if isinstance(key, tuple) and sid in env:
                values[key][env[sid]] += 1

    def leave_one_out(said: Mapping[str, Any], env: Mapping[str, Any]) -> Callable[[str], int]:
        def prior(sid: str) -> int:
            counter = values[said[sid]].copy()
            if sid in env:
                counter[env[sid]] -= 1
            best = max(counter.items(), key=lambda kv: (kv[1], -kv[0]), default=(1, 0))
            return best[0] if best[1] > 0 else 1
        return prior

    hits = sum(blind_guess(rec["program"], said, leave_one_out(said, env)) == rec["answer"]
               for rec, said, env in zip(chosen, saids, envs))
    return {"most_common": round(answers.most_common(1)[0][1] / len(chosen), 4),
            "text_only": round(hits / len(chosen), 4), "text_only_rule": TEXT_ONLY_RULE, "queries": len(chosen)}


def dataset_stats(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per variant, hops per full chain, program ops of full chains, answer histograms per
    variant (keys are str(answer)), the most common full answer and the blind baselines."""
    records = list(records)
    variants = collections.Counter(r["variant"] for r in records)
    hops = collections.Counter()
    ops = collections.Counter()
    answers: dict[str, collections.Counter] = {v: collections.Counter() for v in CHAIN_VARIANTS}
    for rec in records:
        answers.setdefault(rec["variant"], collections.Counter())[rec["answer"]] += 1
        if rec["variant"] == "full":
            hops[len(rec["hops"])] += 1
            ops.update(step["op"] for step in (rec.get("program") or {"steps": []})["steps"])
    full = answers["full"]
    top = full.most_common(1)[0] if full else (None, 0)
    return {
        "records": len(records),
        "variants": {v: variants.get(v, 0) for v in CHAIN_VARIANTS},
        "hops": {str(k): v for k, v in sorted(hops.items())},
        "ops": dict(ops.most_common()),
        "answers": {v: {str(a): n for a, n in sorted(c.items())} for v, c in answers.items()},
        "most_common_answer": {"answer": top[0], "share": round(top[1] / max(1, sum(full.values())), 4)},
        "blind": blind_baselines(records),
    }

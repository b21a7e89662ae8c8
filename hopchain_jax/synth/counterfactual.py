"""The counterfactual check of a verified chain: every perception step must matter.

For every step that picks an instance, the answer is recomputed as if a reader had picked each other
plausible candidate instead (another instance of the same category; for `compare`, the other of the
two). Each such mistake must change the answer or make a later reference fail. For every step that
reads or counts a number, the answer is recomputed with that number one higher and one lower; each must
change the answer. A step of the full chain that picks the only instance of its category does no
perception work and fails the check too. Chains that fail are dropped (SPEC §1: every instance plays a
real role; no padding hops).
"""
from __future__ import annotations

from typing import Any, Mapping

from hopchain_jax.synth.program import INSTANCE_OPS, NUMBER_OPS, Executor, ProgramError


def _alternatives(ex: Executor, step: Mapping[str, Any], picked: str, env: Mapping[str, Any]) -> list[str]:
    if step["op"] == "compare":
        pair = {ex._instance(step["args"]["a"], env)["id"], ex._instance(step["args"]["b"], env)["id"]}
        return sorted(pair - {picked})
    category = ex.by_id[picked]["category"]
    return [i["id"] for i in ex.instances if i["category"] == category and i["id"] != picked]


def counterfactual_failures(record: Mapping[str, Any], require_alternatives: bool = True,
                            first_only: bool = False) -> list[str]:
    """Every way the record's program fails the check (empty: it passes).

    require_alternatives: a picking step whose category has a single instance fails (full chains);
    shortened variants name such instances directly ("the card"), so they pass False.
    first_only: stop at the first failure (enough to reject a chain)."""
    image = record["image"]
    ex = Executor(record["instances"], image["width"], image["height"])
    program = record["program"]
    answer, env = ex.run(program)
    steps = program["steps"]
    order = {s["id"]: k for k, s in enumerate(steps)}
    failures = []

    def same_answer(k: int, value: Any) -> bool:
        prefix = {s["id"]: env[s["id"]] for s in steps[:k]}
        prefix[steps[k]["id"]] = value
        try:
            got, _ = ex.run(program, start=k + 1, env=prefix)
        except ProgramError:
            return False  # the mistake breaks a later reference: the reader would notice
        return got == answer

    for step in steps:
        if failures and first_only:
            break
        k, value = order[step["id"]], env[step["id"]]
        where = f"step {step['id']} ({step['op']}, hop {step.get('hop')})"
        if step["op"] in INSTANCE_OPS:
            alts = _alternatives(ex, step, value, env)
            if not alts and require_alternatives:
                failures.append(f"{where} picks the only {ex.by_id[value]['category']}: no perception work")
            for alt in alts:
                if same_answer(k, alt):
                    failures.append(f"{where}: picking {alt} instead of {value} gives the same answer")
                    break
        elif step["op"] in NUMBER_OPS:
            for wrong in (value + 1, value - 1):
                if wrong >= 0 and same_answer(k, wrong):
                    failures.append(f"{where}: the value {wrong} instead of {value} gives the same answer")
                    break
    return failures

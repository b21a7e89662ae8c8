"""`hopchain eval`: accuracy of a model on a HopChain dataset, broken down where it fails.

    backend = BackendPool(cache_dir="runs/eval/cache").get("runs/tiny_rl/hf", "--model")   # or MODEL@URL
    summary = evaluate_dataset("data/hop", backend, "runs/eval", EvalSettings(samples=4, temperature=1.0))

The model sees what a solver and the training prompt see (vlm.solvers.solver_request: the image, the
question and the boxed-number instruction). Each record of the selected variants (the first `limit` in a
fixed order: ascending SHA-256 of the id, so a larger limit extends a smaller one) is sampled `samples`
times and scored (eval/scoring.py).

Files in OUT:
  eval_config.json  the settings, dataset and model of the run (a rerun with other settings is refused)
  items.jsonl       one line per record: texts, finish reasons, token lengths, parsed answers, correctness,
                    mean/pass/maj, and the record's breakdown keys; appended and fsynced per batch, so a
                    killed run loses nothing and a rerun of the same command continues (items whose
                    backend call failed are retried)
  summary.json      overall accuracy (mean@k, pass@k, maj@k with 95% intervals), the same by variant, hop
                    count, program op, perception level, answer range, source and response length, format
                    failures and truncations, and the split's blind baselines
  summary.md        the same as Markdown tables
  control.jsonl     with image_control: the same records asked with another record's image (below)

Image control (`EvalSettings.image_control`, `hopchain eval --image-control`): does the accuracy come from
the image? Every record is asked a second time with the image of another record (the next one in the
fixed order whose image differs, so the images are a derangement of the evaluated ones) and scored
against its own gold answer. summary.json's "image_control" holds that accuracy and the paired
difference "needs_image" = accuracy with the true image - accuracy with the swapped one, with a 95%
interval, overall and by variant: a model that ignores the image (answer priors, question-text rules)
scores the same both ways, a model that reads it loses the difference. Resumable like items.jsonl.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import tqdm

from hopchain_jax.eval.scoring import (accuracy_table, answer_range, item_metrics, length_bucket, paired_difference,
                                       score_response, wilson_interval)

__all__ = ["EvalSettings", "select_records", "breakdown_keys", "evaluate_dataset", "summarize", "format_markdown",
           "BREAKDOWNS"]

#: the breakdowns of summary.json, in order: key -> what it groups by
BREAKDOWNS = {"variant": "record variant (full / half / single / external)",
              "hops": "hops in the chain", "op": "program op used (an item counts under each of its ops)",
              "level": "perception levels of its hops", "answer_range": "the gold answer's range",
              "source": "composition backend (procedural world, photo pipeline, imported)",
              "length": "response length in tokens (per response)"}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """samples: responses per record (k); temperature: 0 = greedy (then samples must be 1); max_tokens:
    token limit per response; variants: record variants evaluated; limit: most records (0: all);
    count_truncated: score responses that hit max_tokens (default: wrong, as the RL reward); image_control:
    also ask every record with another record's image (the module docstring)."""

    samples: int = 1
    temperature: float = 0.0
    max_tokens: int = 1024
    variants: tuple[str, ...] = ("full", "external")
    limit: int = 0
    count_truncated: bool = False
    image_control: bool = False

    def __post_init__(self):
        if self.samples < 1 or self.max_tokens < 1 or self.limit < 0:
            raise ValueError(f"samples ({self.samples}) and max_tokens ({self.max_tokens}) must be >= 1 and limit "
                             f"({self.limit}) >= 0")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.temperature == 0 and self.samples > 1:
            raise ValueError(f"greedy decoding (temperature 0) gives {self.samples} identical samples: use "
                             "--samples 1 with --greedy, or a temperature > 0")


def _order_key(record_id: str) -> str:
    return hashlib.sha256(str(record_id).encode()).hexdigest()


def select_records(records: Iterable[dict], variants: Sequence[str], limit: int = 0) -> list[dict]:
    """Records of `variants` (distinct ids) in ascending SHA-256 of their id, the first `limit` (0: all)."""
    seen, picked = set(), []
    for rec in records:
        if rec.get("variant") in variants and rec["id"] not in seen:
            seen.add(rec["id"])
            picked.append(rec)
    picked.sort(key=lambda r: _order_key(r["id"]))
    return picked[:limit] if limit else picked


def breakdown_keys(record: dict) -> dict[str, Any]:
    """The record's groups for every breakdown but "length" (per response): variant, hops, op (a list),
    level, answer_range, source."""
    hops = record.get("hops") or []
    program = record.get("program") or {}
    ops = sorted({s["op"] for s in program.get("steps", [])} or {h["op"] for h in hops if h.get("op")})
    levels = sorted({int(h["level"]) for h in hops if h.get("level") is not None})
    backend = (record.get("provenance") or {}).get("backend") or {}
    source = (backend.get("composition") if isinstance(backend, dict) else None) or (
        "external" if record.get("variant") == "external" else (backend if isinstance(backend, str) else None)) \
        or "unknown"
    return {"variant": record.get("variant", "unknown"), "hops": str(len(hops)) if hops else "unknown",
            "op": ops or ["unknown"], "level": "+".join(f"L{v}" for v in levels) or "unknown",
            "answer_range": answer_range(record["answer"]), "source": str(source)}


def _config_path(out: Path) -> Path:
    return out / "eval_config.json"


def _claim(out: Path, config: dict) -> None:
    """Write OUT/eval_config.json, or check that a previous run's equals this one."""
    path = _config_path(out)
    if path.exists():
        have = json.loads(path.read_text())
        diff = sorted(k for k in set(have) | set(config) if have.get(k) != config.get(k))
        if diff:
            raise ValueError(f"{out} holds an evaluation with other settings (differs in {diff}); use a new --out, "
                             "or rerun with the same settings to continue it")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _token_counter() -> Callable[[Sequence[str]], list[int]]:
    """texts -> token counts with the real Qwen tokenizer (whitespace words if it cannot be loaded)."""
    try:
        from hopchain_jax.models.tokenizer import load_tokenizer
        tok = load_tokenizer()
        return lambda texts: [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]] \
            if texts else []
    except Exception:  # noqa: BLE001 - lengths are a report, never a reason to fail
        return lambda texts: [len(t.split()) for t in texts]


def _evaluate_item(record: dict, result, settings: EvalSettings, count_tokens) -> dict:
    base = {"id": record["id"], "answer": record["answer"], "question": record["question"],
            **breakdown_keys(record)}
    if result.error:
        return {**base, "error": str(result.error)}
    if len(result.texts) != settings.samples:
        return {**base, "error": f"asked for {settings.samples} samples, the backend returned {len(result.texts)}"}
    reasons = list(result.finish_reasons) + ["stop"] * (len(result.texts) - len(result.finish_reasons))
    scores = [score_response(t, record["answer"], r, count_truncated=settings.count_truncated)
              for t, r in zip(result.texts, reasons)]
    return {**base, "error": None, "texts": list(result.texts), "finish_reasons": reasons,
            "lengths": count_tokens(result.texts), "parsed": [s.parsed for s in scores],
            "correct": [s.correct for s in scores], "format_failure": [s.format_failure for s in scores],
            "truncated": [s.truncated for s in scores], "metrics": item_metrics(scores, record["answer"])}


def _blind(records: list[dict]) -> dict[str, Any]:
    """The split's blind baselines: the most common answer's share per variant, and the text-only rule on
    its full chains (synth/stats.py)."""
    from hopchain_jax.synth.stats import blind_baselines
    most = {}
    for variant in sorted({r["variant"] for r in records}):
        answers = collections.Counter(str(r["answer"]) for r in records if r["variant"] == variant)
        top, count = answers.most_common(1)[0]
        most[variant] = {"answer": top, "accuracy": round(count / sum(answers.values()), 4)}
    text = blind_baselines(records)
    return {"most_common": most, "text_only": text["text_only"], "text_only_queries": text["queries"],
            "text_only_rule": text["text_only_rule"]}


def summarize(items: list[dict], settings: EvalSettings, blind: dict | None = None) -> dict[str, Any]:
    """summary.json's content from items.jsonl lines (errors left out and counted)."""
    k = settings.samples
    good = [it for it in items if it.get("error") is None]
    summary: dict[str, Any] = {"overall": accuracy_table(good, k), "errors": len(items) - len(good),
                               "samples": k, "temperature": settings.temperature, "max_tokens": settings.max_tokens,
                               "count_truncated": settings.count_truncated, "by": {}}
    for key in BREAKDOWNS:
        if key == "length":   # per response: accuracy of the responses in each length bucket
            groups: dict[str, list[bool]] = collections.defaultdict(list)
            for it in good:
                for n, ok in zip(it["lengths"], it["correct"]):
                    groups[length_bucket(n)].append(ok)
            summary["by"][key] = {
                g: {"responses": len(v), "accuracy": round(sum(v) / len(v), 4),
                    "low": round(wilson_interval(sum(v), len(v))[0], 4),
                    "high": round(wilson_interval(sum(v), len(v))[1], 4)}
                for g, v in sorted(groups.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+")))}
            continue
        members: dict[str, list[dict]] = collections.defaultdict(list)
        for it in good:
            for g in (it[key] if isinstance(it[key], list) else [it[key]]):
                members[str(g)].append(it)
        summary["by"][key] = {g: accuracy_table(v, k) for g, v in sorted(members.items(), key=_group_order)}
    if blind is not None:
        summary["blind"] = blind
    return summary


def _group_order(kv):
    name = kv[0]
    head = name.split("-")[0].split("+")[0].lstrip("<L")
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


def format_markdown(summary: dict, title: str = "hopchain eval") -> str:
    """summary.json as Markdown: the overall line, then one table per breakdown."""
    k = summary["samples"]
    names = (f"mean@{k}", f"pass@{k}", f"maj@{k}")

    def cell(v):
        return f"{100 * v['value']:.1f} [{100 * v['low']:.1f}, {100 * v['high']:.1f}]"

    o = summary["overall"]
    lines = [f"# {title}", "",
             f"{o['items']} items, {k} sample(s) each at temperature {summary['temperature']}, at most "
             f"{summary['max_tokens']} tokens; {summary['errors']} failed items left out. Accuracy in % with 95% "
             "intervals.", "",
             "| group | items | " + " | ".join(names) + " | format failures | truncated |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |",
             f"| **overall** | {o['items']} | " + " | ".join(cell(o[n]) for n in names)
             + f" | {100 * o['format_failure']:.1f} | {100 * o['truncated']:.1f} |"]
    for key, what in BREAKDOWNS.items():
        groups = summary["by"].get(key, {})
        if not groups:
            continue
        lines += ["", f"## by {key}: {what}", ""]
        if key == "length":
            lines += ["| tokens | responses | accuracy |", "| --- | --- | --- |"]
            lines += [f"| {g} | {v['responses']} | {100 * v['accuracy']:.1f} [{100 * v['low']:.1f}, "
                      f"{100 * v['high']:.1f}] |" for g, v in groups.items()]
            continue
        lines += [f"| {key} | items | " + " | ".join(names) + " | format failures | truncated |",
                  "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |"]
        lines += [f"| {g} | {v['items']} | " + " | ".join(cell(v[n]) for n in names)
                  + f" | {100 * v['format_failure']:.1f} | {100 * v['truncated']:.1f} |" for g, v in groups.items()]
    loc = summary.get("localize")
    if loc:
        lines += ["", f"## where wrong full chains fail ({loc['chains']} chains; first wrong hop, "
                      "earlier hops given)", "",
                  "| first wrong hop | chains | share |", "| --- | --- | --- |"]
        lines += [f"| {g} | {v['chains']} | {100 * v['share']:.1f}% |" for g, v in loc["first_wrong"]["kind"].items()]
        lines += ["", "| hop op | chains | share |", "| --- | --- | --- |"]
        lines += [f"| {g} | {v['chains']} | {100 * v['share']:.1f}% |" for g, v in loc["first_wrong"]["op"].items()]
        lines += ["", "| probe kind | probes | error rate |", "| --- | --- | --- |"]
        lines += [f"| {g} | {v['probes']} | {100 * v['error_rate']:.1f} [{100 * v['low']:.1f}, {100 * v['high']:.1f}] |"
                  for g, v in loc["probe_error_rate"]["kind"].items()]
    control = summary.get("image_control")
    if control:
        mean, need = control[f"mean@{k}"], control["needs_image"]
        lines += ["", "## image control: each question asked with another record's image", "",
                  f"| group | items | mean@{k} with a swapped image | true - swapped (needs the image) |",
                  "| --- | --- | --- | --- |",
                  f"| **overall** | {control['items']} | {cell(mean)} | {100 * need['value']:+.1f} "
                  f"[{100 * need['low']:+.1f}, {100 * need['high']:+.1f}] |"]
        for variant, v in control["by_variant"].items():
            m, d = v[f"mean@{k}"], v["needs_image"]
            lines.append(f"| {variant} | {v['items']} | {cell(m)} | {100 * d['value']:+.1f} "
                         f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] |")
    blind = summary.get("blind")
    if blind:
        lines += ["", "## blind baselines of this split (no image)", ""]
        for variant, v in blind["most_common"].items():
            lines.append(f"- most common answer of the {variant} records ({v['answer']}): {100 * v['accuracy']:.1f}%")
        if blind["text_only"] is not None:
            lines.append(f"- text-only rule on the {blind['text_only_queries']} full chains: "
                         f"{100 * blind['text_only']:.1f}% ({blind['text_only_rule']})")
    return "\n".join(lines) + "\n"


def _localize(ds, backend, out: Path, settings: EvalSettings, items: list[dict], records: list[dict],
              batch_size: int, progress: bool) -> dict:
    """Per-hop localisation of the wrong full chains (eval/localize.py), appended to OUT/localize.jsonl."""
    from hopchain_jax.eval.localize import localization_summary, localize_items
    from hopchain_jax.vlm.calibrate import SidecarWriter, _latest
    from hopchain_jax.vlm.solvers import solver_request
    by_id = {r["id"]: r for r in records}
    wrong = [it for it in items if it.get("error") is None and it["variant"] == "full" and not it["metrics"]["maj"]]

    def ask(questions, recs):
        requests = [solver_request(ds.image_of(r), q, settings.samples, settings.temperature, settings.max_tokens,
                                   salt="localize") for q, r in zip(questions, recs)]
        results = list(backend.complete(requests))
        return [res.error if res.error else list(zip(res.texts, list(res.finish_reasons) + ["stop"] * len(res.texts)))
                for res in results]

    with SidecarWriter(out / "localize.jsonl") as writer:
        latest = _latest(writer.entries)
        todo = [it for it in wrong if latest.get(it["id"], {}).get("error", "missing") is not None]
        bar = tqdm.tqdm(total=len(wrong), initial=len(wrong) - len(todo), unit="chain", desc="localize",
                        disable=not progress)
        try:
            for start in range(0, len(todo), max(1, batch_size // 4)):
                lines = localize_items(todo[start:start + max(1, batch_size // 4)], by_id, ask)
                writer.append(lines)
                for line in lines:
                    latest[line["id"]] = line
                bar.update(len(lines))
        finally:
            bar.close()
        writer.compact()
    return localization_summary([latest[it["id"]] for it in wrong if it["id"] in latest])


def _ask_all(ds, backend, path: Path, records: list[dict], settings: EvalSettings, salt: str, desc: str,
             batch_size: int, progress: bool, shown: dict[str, dict] | None = None) -> list[dict]:
    """Ask every record that `path` (a sidecar JSONL) does not hold without an error, with its own image or,
    given `shown` (the image control), the image of record shown[id] (noted as "image_from"); appends and
    fsyncs per batch; returns the items of `records` in order."""
    from hopchain_jax.vlm.calibrate import SidecarWriter, _latest
    from hopchain_jax.vlm.solvers import solver_request
    count_tokens = _token_counter()
    with SidecarWriter(path) as writer:
        latest = _latest(writer.entries)
        todo = [r for r in records if latest.get(r["id"], {}).get("error", "missing") is not None]
        scored, correct = 0, 0.0
        bar = tqdm.tqdm(total=len(records), initial=len(records) - len(todo), unit="item", desc=desc,
                        disable=not progress)
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                requests, built = [], []
                lines: dict[str, dict] = {}
                for rec in batch:
                    try:
                        image_rec = rec if shown is None else shown[rec["id"]]
                        requests.append(solver_request(ds.image_of(image_rec), rec["question"],
                                                       settings.samples, settings.temperature, settings.max_tokens,
                                                       salt=salt))
                        built.append(rec)
                    except Exception as err:  # noqa: BLE001 - an unreadable image fails its item only
                        lines[rec["id"]] = {"id": rec["id"], "error": f"could not build the request: {err}"}
                results = list(backend.complete(requests)) if requests else []
                for rec, res in zip(built, results):
                    lines[rec["id"]] = _evaluate_item(rec, res, settings, count_tokens)
                    if shown is not None:
                        lines[rec["id"]]["image_from"] = shown[rec["id"]]["id"]
                ordered = [lines[r["id"]] for r in batch]
                writer.append(ordered)
                for line in ordered:
                    latest[line["id"]] = line
                bar.update(sum(line.get("error") is None for line in ordered))
                done = [line["metrics"]["mean"] for line in ordered if line.get("error") is None]
                scored, correct = scored + len(done), correct + sum(done)
                bar.set_postfix(acc=f"{correct / max(scored, 1):.3f}")   # this run's items
        finally:
            bar.close()
        writer.compact()
    return [latest[r["id"]] for r in records if r["id"] in latest]


def swapped_images(records: list[dict]) -> dict[str, dict]:
    """record id -> the record whose image the image control shows instead: the next record in `records`
    (cyclically) whose image differs (by its sha256). Raises ValueError when all records share one image."""
    shas = [r["image"].get("sha256") or json.dumps(r["image"], sort_keys=True) for r in records]
    if len(set(shas)) < 2:
        raise ValueError("the image control needs records of at least two different images; evaluate more records "
                         "(--limit) or drop --image-control")
    out = {}
    for i, rec in enumerate(records):
        j = (i + 1) % len(records)
        while shas[j] == shas[i]:
            j = (j + 1) % len(records)
        out[rec["id"]] = records[j]
    return out


def image_control_summary(items: list[dict], control: list[dict], k: int) -> dict[str, Any]:
    """summary.json's "image_control": accuracy with swapped images and the paired difference to the true
    images ("needs_image"), over the items answered both ways, overall and by variant."""
    by_id = {c["id"]: c for c in control if c.get("error") is None}
    pairs = [(it, by_id[it["id"]]) for it in items if it.get("error") is None and it["id"] in by_id]

    def table(ps):
        return {**accuracy_table([c for _, c in ps], k),
                "needs_image": paired_difference([it["metrics"]["mean"] for it, _ in ps],
                                                 [c["metrics"]["mean"] for _, c in ps])}
    variants = sorted({it["variant"] for it, _ in pairs})
    return {**table(pairs), "by_variant": {v: table([p for p in pairs if p[0]["variant"] == v]) for v in variants}}


def evaluate_dataset(root, backend, out: str | os.PathLike, settings: EvalSettings = EvalSettings(), *,
                     batch_size: int = 32, progress: bool = True, dataset_name: str | None = None,
                     localize: bool = False) -> dict:
    """Evaluate `backend` (a vlm ChatBackend: .model and .complete(requests)) on the dataset at `root` (or a
    HopChainDataset); writes OUT/{eval_config.json, items.jsonl, summary.json, summary.md} and returns the
    summary. Resumable: items already in items.jsonl without an error are not asked again. localize: also
    find the first wrong hop of every wrong full chain (eval/localize.py; OUT/localize.jsonl)."""
    from hopchain_jax.data.store import HopChainDataset
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds = root if isinstance(root, HopChainDataset) else HopChainDataset(root)
    out = Path(out)
    config = {"dataset": dataset_name or str(ds.root), "model": backend.model, **dataclasses.asdict(settings),
              "variants": list(settings.variants)}
    if not settings.image_control:   # runs made before the image control resume as they were
        del config["image_control"]
    records = select_records(ds.records(), settings.variants, settings.limit)
    if not records:
        raise ValueError(f"{ds.root} has no records of variants {list(settings.variants)}; pass --variant with the "
                         "variants it holds")
    swap = swapped_images(records) if settings.image_control else None
    _claim(out, config)
    items = _ask_all(ds, backend, out / "items.jsonl", records, settings, "eval", f"eval {backend.model}",
                     batch_size, progress)
    control = None if swap is None else _ask_all(ds, backend, out / "control.jsonl", records, settings,
                                                 "eval-image-control", "image control", batch_size, progress, swap)
    if localize:
        summary_loc = _localize(ds, backend, out, settings, items, records, batch_size, progress)
    summary = summarize(items, settings, _blind(records))
    if control is not None:
        summary["image_control"] = image_control_summary(items, control, settings.samples)
    if localize:
        summary["localize"] = summary_loc
    summary.update(dataset=dataset_name or str(ds.root), model=backend.model, variants=list(settings.variants),
                   limit=settings.limit, out=str(out))
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "summary.json")
    (out / "summary.md").write_text(format_markdown(summary, f"hopchain eval: {backend.model} on {summary['dataset']}"))
    return summary

"""The training loop: rollouts with the inference engine, verifiable rewards, SAPO updates (or SFT),
metrics, and exact-resume checkpoints.

One RL step (Trainer.rl_iteration; `steps` counts these, each holding `minibatches` optimizer steps):
  1. the next `prompts_per_step` prompts from the data mixture (this process's shard; all processes then
     share their prompts so every process holds the global batch);
  2. `group_size` samples per prompt from the engine (continuous batching over cfg.rollout_slots slots), on
     the trainer's current weights: the arrays themselves when they are already in the compute dtype and
     decode layout, else a copy (bf16 from float32 masters, resharded to cfg.rollout_mesh) that is
     dropped again before the updates;
  3. reward 1/0 per sample (numeric answer check), group-normalised advantages; all-equal groups counted;
  4. old log-probs recomputed by the trainer's forward (the sampler's are only compared: logprob_gap);
  5. `minibatches` SAPO optimizer steps over shuffled slices of the rollout batch.
A response that reaches max_new_tokens without EOS earns 0 (TrainConfig.zero_reward_truncated); one
holding a vision placeholder id (the engine never samples them) is dropped from the step and counted.
SFT mode replaces 2-5 with one cross-entropy step on prompt + gold rationale; vision mode (perception
warm-up, rl/vision_warmup.py) with one step of the vision tower on per-token targets from instance masks.
With eval_every > 0 a held-out part of the images (data/split.py) is never trained on; greedy accuracy on
it is measured before the first step, every eval_every steps and at the end (eval_* metrics).
Everything random derives from (seed, step), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from hopchain_jax.data.mixture import make_mixture
from hopchain_jax.data.prompts import BuildPrompt, PromptConfig, prompt_transforms
from hopchain_jax.data.split import SplitSource, keep_variants, split_sources
from hopchain_jax.eval.run import select_records
from hopchain_jax.eval.scoring import score_response
from hopchain_jax.infer.engine import InferenceEngine, Request, SamplingParams
from hopchain_jax.models.sharding import to_host
from hopchain_jax.models import image_processor as improc
from hopchain_jax.models.checkpoint import load_pretrained
from hopchain_jax.models.qwen_vl import QwenVL, init_sharded
from hopchain_jax.models.sharding import make_mesh
from hopchain_jax.models.tokenizer import load_tokenizer
from hopchain_jax.rl.checkpointing import Checkpointer
from hopchain_jax.rl.config import TrainConfig, dumps
from hopchain_jax.rl.metrics import MetricsWriter
from hopchain_jax.rl.losses import get_loss
from hopchain_jax.rl.reward import group_advantages, reward
from hopchain_jax.rl import flops
from hopchain_jax.rl.sequences import Prompt, encoded_grids, pack_micro
from hopchain_jax.rl.update import Updater
from hopchain_jax.rl.vision_warmup import TARGET_KEYS, TokenTargets, VisionUpdater, element_targets, pack_targets

def build_model(cfg: TrainConfig, mesh) -> QwenVL:
    """A preset name (random init, jit-created on the mesh) or a checkpoint directory."""
    from hopchain_jax.configs.models import PRESETS
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if cfg.model in PRESETS:
        return init_sharded(PRESETS[cfg.model](), dtype=dtype, param_dtype=param_dtype, mesh=mesh, seed=cfg.seed)
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"--model {cfg.model!r} is neither a preset ({sorted(PRESETS)}) nor a checkpoint directory")
    return load_pretrained(cfg.model, dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                           progress=jax.process_index() == 0)


def default_data(cfg: TrainConfig) -> list[tuple[str, float]]:
    """cfg.data, or the procedural HopChain dataset synthesized under out_dir/data (resumable)."""
    if cfg.data:
        return [(d, w) for d, w in cfg.data]
    from hopchain_jax.synth.pipeline import run_synthesis
    from hopchain_jax.synth.presets import preset
    root = Path(cfg.out_dir) / "data"
    if jax.process_index() == 0:
        run_synthesis(root, preset(cfg.synth_preset, seed=cfg.seed, num_images=cfg.synth_images), workers=1,
                      progress=False)
    multihost_utils.sync_global_devices("synth data ready")
    return [(str(root), 1.0)]


def _allgather_prompts(local: list[dict]) -> list[dict]:
    """Every process's prompts, in process order (single process: unchanged)."""
    if jax.process_count() == 1:
        return local
    keys = ("prompt_ids", "pixel_values", "image_grid_thw", "target_ids")
    has_targets = "vision_targets" in local[0]
    if has_targets:
        local = [{**el, **{f"vision_targets/{k}": el["vision_targets"][k] for k in TARGET_KEYS}} for el in local]
        keys += tuple(f"vision_targets/{k}" for k in TARGET_KEYS)
    arrays = {}
    for key in keys:
        arrs = [np.asarray(el[key]) for el in local]
        floating = np.issubdtype(arrs[0].dtype, np.floating)
        flat = np.concatenate([a.reshape(-1) for a in arrs]).astype(np.float32 if floating else np.int64)
        shapes = np.asarray([list(a.shape) + [0] * (2 - a.ndim) for a in arrs], np.int64)
        arrays[key] = (flat, shapes)
    answers = np.asarray([el["answer"] for el in local], np.float64)
    gathered = []
    n_local = len(local)
    for key in keys:
        flat, shapes = arrays[key]
        sizes = multihost_utils.process_allgather(np.asarray([flat.size]))
        padded = np.zeros(int(sizes.max()), flat.dtype)
        padded[:flat.size] = flat
        gathered.append((multihost_utils.process_allgather(padded), multihost_utils.process_allgather(shapes), sizes))
    all_answers = multihost_utils.process_allgather(answers)
    out = []
    for p in range(jax.process_count()):
        for i in range(n_local):
            el = {"answer": float(all_answers[p][i])}
            for key, (flat, shapes, sizes) in zip(keys, gathered):
                offset = int(sum(int(np.prod([d for d in s if d])) for s in shapes[p][:i]))
                shape = tuple(int(d) for d in shapes[p][i] if d)
                el[key] = flat[p][offset:offset + int(np.prod(shape))].reshape(shape)
            if has_targets:
                el["vision_targets"] = {k: el.pop(f"vision_targets/{k}") for k in TARGET_KEYS}
            out.append(el)
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        self.cfg = cfg
        self.is_main = jax.process_index() == 0
        self.out = Path(cfg.out_dir)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(dumps(cfg))
        self.mesh = make_mesh(*cfg.mesh)
        self.progress = progress and self.is_main
        model = build_model(cfg, self.mesh)
        self.model_config = model.config
        tok_dir = cfg.model if Path(cfg.model).is_dir() else None
        self.tokenizer = load_tokenizer(tok_dir)
        processor = improc.from_pretrained_dir(cfg.model) if tok_dir else model.config.family.image_processor
        self.prompt_config = PromptConfig(processor=processor.replace(max_pixels=cfg.max_pixels),
                                          max_prompt_tokens=cfg.max_prompt_tokens, on_over_budget="skip")
        self.sources = default_data(cfg)
        self.train_sources, heldout = self._split(self.sources)
        vis = model.config.vision
        transforms = prompt_transforms(self.tokenizer, self.prompt_config, vis.spatial_merge_size)
        if cfg.mode == "vision":
            transforms.append(TokenTargets(vis.patch_size, vis.spatial_merge_size))
        self.data = make_mixture(self.train_sources, seed=cfg.seed, batch_size=cfg.prompts_per_step,
                                 transforms=transforms)
        self.data_iter = iter(self.data)
        self.updater = VisionUpdater(model, cfg, self.mesh) if cfg.mode == "vision" else Updater(model, cfg, self.mesh)
        self.engine = None
        if cfg.mode != "vision":   # the warm-up generates nothing
            self.engine = InferenceEngine(
                self.updater.model(), self.tokenizer, mesh=self.mesh,
                rollout_mesh=make_mesh(*cfg.rollout_mesh) if cfg.rollout_mesh else None,
                max_slots=cfg.rollout_slots or cfg.prompts_per_step * cfg.group_size,
                decode_chunk=cfg.rollout_decode_chunk)
            self.engine.release_weights()   # each RL step hands it the current weights (none needed for SFT)
        self.checkpointer = Checkpointer(self.out / "checkpoints", keep=cfg.keep_checkpoints)
        self.metrics = MetricsWriter(self.out, enabled=self.is_main)
        self.step = 0
        self.pad_id = model.config.pad_token_id or 0
        self._peak = flops.peak_flops(jax.devices()[0].device_kind) if jax.default_backend() != "cpu" else None
        self.eval_prompts = self._eval_prompts(heldout, model.config.vision.spatial_merge_size) if heldout else []

    # -- held-out split and evaluation -------------------------------------------------------------------
    def _split(self, sources: list[tuple[str, float]]):
        """(training sources, held-out parts): with eval_every > 0 each source's held-out images are taken
        out of training (data/split.py); _eval_prompts records the split in OUT/heldout.json. With
        train_variants the training sources keep only those variants' records."""
        only = (lambda src: keep_variants(src, self.cfg.train_variants)) if self.cfg.train_variants else (lambda src: src)
        if not self.cfg.eval_every:
            return [(only(d), w) for d, w in sources], None
        parts = [split_sources(d, self.cfg.heldout_fraction) for d, _ in sources]
        return [(only(train), w) for (train, _), (_, w) in zip(parts, sources)], [heldout for _, heldout in parts]

    def _eval_prompts(self, heldout: list[SplitSource], merge_size: int) -> list[dict]:
        """eval_items held-out records of eval_variants (a fixed sample: the lowest id hashes), as prompts;
        in vision mode eval_items held-out images (one record each) with their token targets."""
        cfg = self.cfg
        where, records = {}, []
        for src in heldout:
            for i in range(len(src)):
                records.append(src.record(i))
                where.setdefault(records[-1]["id"], (src, i))
        build = BuildPrompt(self.tokenizer, self.prompt_config, merge_size)
        vis = self.model_config.vision
        prompts, images = [], set()
        for rec in select_records(records, cfg.eval_variants):   # hopchain eval's fixed order
            src, i = where[rec["id"]]
            if cfg.mode == "vision":
                if rec["image"]["sha256"] in images:
                    continue
                images.add(rec["image"]["sha256"])
            el = build.map(src[i])
            if el.get("prompt_ids") is not None:
                if cfg.mode == "vision":
                    el["vision_targets"] = element_targets(src.dataset, el, vis.patch_size, vis.spatial_merge_size)
                prompts.append(el)
            if len(prompts) == cfg.eval_items:
                break
        if not prompts:
            raise ValueError(f"no held-out record of variants {cfg.eval_variants} fits the prompt budget: set "
                             "TrainConfig.eval_variants to variants the data has, or raise heldout_fraction")
        if self.is_main:
            (self.out / "heldout.json").write_text(json.dumps({
                "fraction": cfg.heldout_fraction, "salt": heldout[0].salt,
                "sources": [{"dir": d, "train_records": len(train), "heldout_records": len(held),
                             "heldout_images": held.image_hashes}
                            for (d, _), (train, _), held in zip(self.sources, self.train_sources, heldout)],
                "eval_ids": [str(p["id"]) for p in prompts]}, indent=1))
        return prompts

    def evaluate(self) -> dict:
        """Greedy accuracy of the current weights on the held-out prompts: eval_accuracy (all),
        eval_accuracy_<variant>, eval_format_failure, eval_truncated (fractions). Vision mode: the warm-up's
        loss and per-head token accuracies on the held-out images (eval_loss, eval_<head>_accuracy)."""
        cfg = self.cfg
        if cfg.mode == "vision":
            vision, targets = pack_targets(self.eval_prompts, self.model_config, cfg.pad_to_patches)
            stats = to_host(self.updater.metrics(*self.updater.put(vision, targets)))
            return {f"eval_{k}": float(v) for k, v in stats.items() if k == "loss" or k.endswith("_accuracy")}
        self.engine.update_weights(self.updater.model())
        outs = self.engine.generate(
            [Request(p["prompt_ids"], p["pixel_values"], p["image_grid_thw"]) for p in self.eval_prompts],
            SamplingParams(temperature=0.0, max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens, n=1))
        self.engine.release_weights()
        scores = [score_response(o.text or "", self.eval_prompts[o.prompt_index]["answer"], o.finish_reason,
                                 count_truncated=not cfg.zero_reward_truncated) for o in outs]
        m = {"eval_accuracy": float(np.mean([s.correct for s in scores])),
             "eval_format_failure": float(np.mean([s.format_failure for s in scores])),
             "eval_truncated": float(np.mean([s.truncated for s in scores])),
             "eval_response_length": float(np.mean([len(o.token_ids) for o in outs]))}
        for variant in sorted({str(p["variant"]) for p in self.eval_prompts}):
            mine = [s.correct for o, s in zip(outs, scores) if str(self.eval_prompts[o.prompt_index]["variant"]) == variant]
            m[f"eval_accuracy_{variant}"] = float(np.mean(mine))
        return m

    # -- checkpoints -------------------------------------------------------------------------------------
    # The trainable parameters and their optimizer state are saved; frozen ones (TrainConfig.freeze_vision)
    # never change and come back from --model on resume.
    def save(self) -> None:
        self.checkpointer.save(self.step, self.updater.params, self.updater.opt_state, self.data_iter,
                               {"step": self.step, "seed": self.cfg.seed, "config": json.loads(dumps(self.cfg))})

    def restore(self) -> bool:
        step = self.checkpointer.latest_step()
        if step is None:
            return False
        params, opt_state, meta = self.checkpointer.restore(step, self.updater.params, self.updater.opt_state,
                                                            self.data_iter)
        saved = json.loads(dumps(TrainConfig.from_json(meta["config"])))   # older configs in today's fields
        if saved != json.loads(dumps(self.cfg)):
            diff = sorted(k for k in saved if saved[k] != json.loads(dumps(self.cfg)).get(k))
            raise ValueError(f"{self.out}: the checkpoint was made with a different config (differs in {diff}); "
                             "resume with the same config or use a new --out")
        self.updater.params, self.updater.opt_state = params, opt_state
        self.step = int(meta["step"])
        self.metrics.truncate_after(self.step)
        return True

    # -- one step ----------------------------------------------------------------------------------------
    def _prompts(self) -> list[dict]:
        local = next(self.data_iter)
        digest = hashlib.sha256("|".join(str(el["id"]) for el in local).encode()).digest()[:7]
        codes = multihost_utils.process_allgather(np.asarray([int.from_bytes(digest, "little")], np.int64)) \
            if jax.process_count() > 1 else np.asarray([int.from_bytes(digest, "little")])
        self._data_fingerprint = "-".join(f"{int(c):014x}" for c in np.asarray(codes).reshape(-1))
        return _allgather_prompts(local)

    def rl_iteration(self) -> dict:
        """One RL iteration (module docstring, steps 1-5): rollouts, rewards, then cfg.minibatches optimizer
        steps (Updater.rl_step each)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        elements = self._prompts()
        prompts = [Prompt(el["prompt_ids"], el["pixel_values"], el["image_grid_thw"]) for el in elements]
        self.engine.update_weights(self.updater.model())
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                max_new_tokens=cfg.max_new_tokens, n=cfg.group_size,
                                seed=cfg.seed * 1_000_003 + self.step)
        outs = self.engine.generate([Request(p.prompt_ids, p.pixel_values, p.image_grid_thw) for p in prompts], params)
        self.engine.release_weights()   # the rollout copy is not needed (nor kept in memory) during the updates
        roll = self.engine.last_stats
        t_roll = time.perf_counter() - t0
        # A response holding a vision id (the engine masks them; a custom engine or sampler may not) would be
        # read as an image by packing: it is dropped from the step (empty, reward 0, advantage 0) and counted.
        vision_ids = set(self.model_config.vision_token_ids)
        dropped = np.asarray([bool(vision_ids.intersection(o.token_ids)) for o in outs])
        truncated = np.asarray([o.finish_reason == "length" for o in outs])
        rewards = np.asarray([0.0 if drop or (cut and cfg.zero_reward_truncated) else
                              reward(o.text or "", elements[o.prompt_index]["answer"])
                              for o, drop, cut in zip(outs, dropped, truncated)],
                             np.float32).reshape(len(prompts), cfg.group_size)
        if cfg.shuffle_rewards:   # the control: which response earned which reward is forgotten
            rewards = np.random.default_rng([cfg.seed, self.step, 7]).permutation(rewards.reshape(-1)).reshape(
                rewards.shape)
        adv, zero_var = group_advantages(rewards, scale=get_loss(cfg.loss).std_advantages)
        adv = np.where(dropped.reshape(adv.shape), 0.0, adv).astype(np.float32)
        rows = [o.prompt_index for o in outs]
        responses = [[] if drop else o.token_ids for o, drop in zip(outs, dropped)]
        sampler_logprobs = [[] if drop else o.logprobs for o, drop in zip(outs, dropped)]
        # Minibatches over a seeded shuffle of the rows. Old log-probs of every minibatch are scored
        # before the first update (they must come from the weights that sampled).
        order = np.random.default_rng([cfg.seed, self.step]).permutation(len(outs))
        per = len(outs) // cfg.minibatches
        length = max(len(prompts[r].prompt_ids) + len(resp) for r, resp in zip(rows, responses)) + 1
        t1 = time.perf_counter()
        minibatches = []
        gaps, entropies, tokens, seq_lengths, grids = [], [], 0, [], []
        for k in range(cfg.minibatches):
            idx = np.sort(order[k * per:(k + 1) * per])
            sub_np = pack_micro(prompts, [rows[i] for i in idx], [responses[i] for i in idx], self.model_config,
                                cfg.grad_accum, pad_id=self.pad_id, min_length=max(length, cfg.pad_to_tokens),
                                min_patches=cfg.pad_to_patches, min_loss_cols=cfg.max_new_tokens)
            sub = self.updater.put_batch(sub_np.arrays())
            old, ent = self.updater.score(sub)
            (old_np, ent_np), mask = to_host((old, ent)), sub_np.loss_mask.reshape(old.shape)
            sampler = np.zeros_like(old_np)
            for j, i in enumerate(idx):
                start = len(prompts[rows[i]].prompt_ids) - 1
                sampler[j, start:start + len(sampler_logprobs[i])] = sampler_logprobs[i]
            gaps.append(np.abs(sampler - old_np)[mask])
            entropies.append(ent_np[mask])
            tokens += sub_np.num_tokens
            seq_lengths += sub_np.attention_mask.reshape(-1, sub_np.attention_mask.shape[-1]).sum(-1).tolist()
            grids += self._micro_grids(prompts, [rows[i] for i in idx])
            minibatches.append((idx, sub, old))
        stats = []
        for idx, sub, old in minibatches:
            out = self.updater.rl_step(sub, old, adv.reshape(-1)[idx], self.updater.ref_score(sub))
            stats.append({k: float(v) for k, v in to_host(out).items()})   # one transfer (one gather)
        t_update = time.perf_counter() - t1
        seconds = time.perf_counter() - t0
        gaps, entropies = np.concatenate(gaps), np.concatenate(entropies)
        lengths = np.asarray([len(r) for r in responses])
        m = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        m.update(reward_mean=float(rewards.mean()), accuracy=float((rewards > 0).mean()),
                 truncation_rate=float(truncated.mean()), dropped_responses=float(dropped.sum()),
                 zero_variance_groups=float(zero_var.mean()), response_length=float(lengths.mean()),
                 entropy=float(entropies.mean()) if entropies.size else 0.0,
                 logprob_gap=float(gaps.mean()) if gaps.size else 0.0,
                 rollout_seconds=t_roll, update_seconds=t_update, step_seconds=seconds,
                 rollout_wasted_fraction=roll.wasted_fraction, rollout_prefill_rows=float(roll.prefill_rows),
                 rollout_tokens_per_s=roll.generated_tokens / max(roll.seconds, 1e-9),
                 tokens_per_s=tokens / seconds,
                 learning_rate=self.updater.learning_rate(self.step * cfg.minibatches),
                 skipped_steps=float(sum(s["skipped"] for s in stats)),
                 # update phase: scoring forward(s) + the training step, per component (rl/flops.py)
                 mfu=self._mfu(flops.rl_update_flops(self.model_config, seq_lengths, grids, cfg.freeze_vision,
                                                     reference_forward=cfg.kl_coef > 0), t_update))
        m["data"] = self._data_fingerprint
        m["rollout"] = hashlib.sha256(np.asarray([t for r in responses for t in r], np.int64).tobytes()).hexdigest()[:16]
        return m

    def sft_step(self) -> dict:
        t0 = time.perf_counter()
        elements = self._prompts()
        prompts = [Prompt(el["prompt_ids"], el["pixel_values"], el["image_grid_thw"]) for el in elements]
        rows = list(range(len(prompts)))
        batch_np = pack_micro(prompts, rows, [el["target_ids"] for el in elements], self.model_config,
                              self.cfg.grad_accum, pad_id=self.pad_id, min_length=self.cfg.pad_to_tokens,
                              min_patches=self.cfg.pad_to_patches)
        m = self.updater.sft_step(self.updater.put_batch(batch_np.arrays()))
        m = {k: float(v) for k, v in to_host(m).items()}
        seconds = time.perf_counter() - t0
        m.update(step_seconds=seconds, tokens_per_s=batch_np.num_tokens / seconds,
                 learning_rate=self.updater.learning_rate(self.step),
                 mfu=self._mfu(flops.train_step_flops(
                     self.model_config, batch_np.attention_mask.reshape(len(rows), -1).sum(-1).tolist(),
                     self._micro_grids(prompts, rows), self.cfg.freeze_vision), seconds))
        m["data"] = self._data_fingerprint
        return m

    def vision_step(self) -> dict:
        """One perception warm-up step (rl/vision_warmup.py) on the next prompts_per_step records' images."""
        t0 = time.perf_counter()
        elements = self._prompts()
        vision, targets = pack_targets(elements, self.model_config, self.cfg.pad_to_patches)
        m = {k: float(v) for k, v in to_host(self.updater.step(*self.updater.put(vision, targets))).items()}
        m.update(step_seconds=time.perf_counter() - t0, learning_rate=self.updater.learning_rate(self.step),
                 data=self._data_fingerprint)
        return m

    def _micro_grids(self, prompts: list[Prompt], prompt_of_row: list[int]) -> list:
        """Image grids the tower encodes for these rows (as pack_micro packs them), for the FLOP count."""
        return [g for gs in encoded_grids(prompts, prompt_of_row, self.cfg.grad_accum) for g in gs]

    def _mfu(self, model_flops: float, seconds: float) -> float:
        """Model FLOPs utilisation (NaN where the device's peak is unknown, e.g. CPU)."""
        if not self._peak:
            return float("nan")
        return flops.mfu(model_flops, seconds, self._peak, jax.device_count())

    # -- loop --------------------------------------------------------------------------------------------
    def train(self, max_steps: int | None = None) -> list[dict]:
        """Run until cfg.steps (or max_steps) steps are done; returns the metrics of the steps run."""
        end = min(self.cfg.steps, max_steps) if max_steps is not None else self.cfg.steps
        history = []
        bar = tqdm.tqdm(total=self.cfg.steps, initial=self.step, desc=f"{self.cfg.mode} {self.cfg.name}",
                        disable=not self.progress)
        every = self.cfg.eval_every
        self.eval_history: list[dict] = []
        try:
            if every and self.step == 0 and self.step < end:   # the starting point (a resumed run has it logged)
                first = self.evaluate()
                self.eval_history.append({"step": 0, **first})
                self.metrics.write(0, first)
            while self.step < end:
                m = {"rl": self.rl_iteration, "sft": self.sft_step, "vision": self.vision_step}[self.cfg.mode]()
                self.step += 1
                if every and (self.step % every == 0 or self.step == end):
                    m.update(self.evaluate())
                    self.eval_history.append({"step": self.step, **{k: v for k, v in m.items()
                                                                    if k.startswith("eval_")}})
                history.append(m)
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    self.metrics.write(self.step, m)
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.4f}", **({"reward": f"{m['reward_mean']:.2f}"}
                                                             if "reward_mean" in m else {}),
                                **({"eval": f"{m['eval_accuracy']:.2f}"} if "eval_accuracy" in m else {}),
                                **({"category": f"{m['category_accuracy']:.2f}"} if "category_accuracy" in m else {}))
                if self.step % self.cfg.save_every == 0 or self.step == end:
                    self.save()  # the NaN guard kept the last finite state, so what is saved is always good
        finally:
            bar.close()
            self.checkpointer.wait()
        return history

    def export_hf(self) -> Path:
        """Current weights as a Hugging Face checkpoint in OUT/hf (+ tokenizer): loadable by transformers,
        vLLM, `hopchain generate / eval / serve`, or `--model OUT/hf` of a next run (e.g. RL after SFT). With
        preprocessor_config.json (the training image size: min/max_pixels) and generation_config.json (the
        rollout sampling settings), so every consumer sees the images and settings the model was trained on."""
        from hopchain_jax.models.checkpoint import save_pretrained
        cfg = self.cfg
        path = save_pretrained(self.updater.model(), self.out / "hf", processor=self.prompt_config.processor,
                               generation={"temperature": cfg.temperature, "top_p": cfg.top_p,
                                           "top_k": cfg.top_k or None, "max_new_tokens": cfg.max_new_tokens})
        if self.is_main:
            self.tokenizer.save_pretrained(path)
        return path

    def close(self) -> None:
        self.checkpointer.close()
        self.metrics.close()

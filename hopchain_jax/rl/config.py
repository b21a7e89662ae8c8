"""Typed training configs. A config names everything a run needs and the command that runs it:

    python launch/train.py --config tiny                      # CPU, minutes, default synthesized data
    python launch/train.py --config qwen2_5_vl_3b --model CKPT --data DIR:1.0 --data HOPCHAIN:0.3
    python launch/train.py --config tiny --resume             # continue exactly where the last run stopped
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    model: a model preset name (configs/models.py, random init) or a checkpoint directory.
    data: (dataset directory, mixture weight) pairs; an empty directory list with synth_images > 0 makes the
      procedural dataset of synth_preset ("default" or "learnable", synth/presets.py) under out_dir/data first.
    mode: "rl" (SAPO over sampled groups), "sft" (cross-entropy on gold rationales) or "vision" (perception
      warm-up, rl/vision_warmup.py: the vision tower and merger learn per-token targets from the datasets'
      instance masks -- what lies under each image token, its colour, parts and number -- with the language
      model untouched; export it and start SFT from it with freeze_vision=True).
    Batch: prompts_per_step prompts x group_size samples per rollout; the rollout batch is split into
      minibatches optimizer steps (SPEC §4: several updates per rollout batch; 2 in the paper's VL runs).
    Optimizer: AdamW, linear warmup then cosine decay to lr * min_lr_ratio over total_steps optimizer steps,
      global-norm clipping. kl_coef > 0 adds a k3 KL penalty to the initial policy.
    Loss (RL): loss names a registered policy-gradient loss (rl/losses.py: "sapo" -- the default, "grpo",
      "dr_grpo", "gspo"); loss_settings overrides its settings as (name, value) pairs, e.g.
      (("tau_pos", 1.0), ("tau_neg", 1.05)) for SAPO's gate temperatures or (("clip_high", 0.28),) for GRPO;
      a "max_tokens" of 0 means max_new_tokens. Mesh: (data, fsdp, tensor) device counts, -1 = the rest.
    Precision: parameters and optimizer state in param_dtype (float32 master weights), activations and
      matmuls in dtype (bfloat16 on accelerators); rollouts read a dtype copy of the weights.
    Memory: each minibatch is split into grad_accum micro-batches whose gradients are accumulated
      (activation memory of one micro-batch); remat is the layers' rematerialisation policy
      (models.stack.REMAT: none | full | dots | dots_no_batch).
    Rollouts (infer/engine.py): rollout_slots decode slots (0: one per sampled sequence of a step;
      fewer bound the KV cache and are refilled as sequences end); rollout_mesh (data, fsdp, tensor) is the
      decode layout of the weights on the same devices, e.g. (-1, 1, 1) replicates the bf16 copy on every
      device and splits the rollout batch over all of them (no per-step all-gathers); None decodes from
      the training layout. rollout_decode_chunk: decode steps per device call.
    LM head + loss (head_impl): "recompute" (default) -- log-probs from the fused kernel (kernel_impl), whose
      backward recomputes the logits (4 head-sized matmuls); "fused_forward" -- kernels/fused_head.py forms the
      loss gradient in the forward over token chunks (3 matmuls, pure XLA; kernel_impl then only serves
      scoring); needs kl_coef == 0. Its chunking: head_chunk_tokens rows per chunk (0: auto, N / 16), scratch
      ~ rows x vocabulary x 4 bytes; head_chunk_vocab columns per dz/dh/dw tile (0: auto, V / 128, bounded
      memory; -1: the whole vocabulary, one dw matmul per chunk); head_dw_accum the dw accumulator ("auto": the
      compute dtype, in place; "float32": half the rounding error for a [D, V] float32 buffer).
    Rewards: zero_reward_truncated -- a response that reaches max_new_tokens without EOS earns 0 whatever it
      says (a policy that stops emitting EOS and keeps writing boxes is not rewarded); logged as
      truncation_rate. shuffle_rewards: a control for benchmarks -- each step's rewards are permuted over
      the whole rollout batch (seeded) before the advantages, so the updates carry no signal about which
      response was right while every other statistic stays the same. Responses holding a vision placeholder id (never sampled: the engine masks them) would
      be dropped from the step and counted (dropped_responses).
    Held-out evaluation: eval_every > 0 holds out heldout_fraction of the images of every data source (by
      image hash, data/split.py; recorded in OUT/heldout.json), never trains on them, and scores greedy
      accuracy on eval_items of their records (eval_variants) before the first step, every eval_every steps
      and at the end (eval_max_new_tokens, 0: max_new_tokens), logged as eval_accuracy beside the reward.
    train_variants: train only on records of these variants (e.g. ("half",): the paper's ablation of full vs
      half vs single chains); () trains on every record. The held-out evaluation is not restricted by it.
    Step shapes: a step's rows are padded to its length bucket (rl.sequences.LENGTH_BUCKETS) and each
      micro-batch's images to a power-of-two patch count, and every new (length, patches) pair compiles
      the scoring and update programs again. pad_to_tokens / pad_to_patches (0: off) pad every step to at
      least that many tokens per row / image patches per micro-batch, so a run whose steps fit compiles
      each program once (padding costs compute; e.g. pad_to_tokens = max_prompt_tokens + max_new_tokens).
    """

    name: str = "tiny"
    model: str = "tiny"
    dtype: str = "float32"
    param_dtype: str = "float32"
    data: tuple[tuple[str, float], ...] = ()
    synth_images: int = 48
    synth_preset: str = "default"
    mode: str = "rl"
    steps: int = 8
    prompts_per_step: int = 4
    group_size: int = 4
    minibatches: int = 2
    grad_accum: int = 1
    remat: str = "full"
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    lr: float = 1e-4
    warmup_steps: int = 2
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    loss: str = "sapo"
    loss_settings: tuple[tuple[str, float], ...] = ()
    kl_coef: float = 0.0
    freeze_vision: bool = False
    max_prompt_tokens: int = 2048
    max_pixels: int = 64 * 28 * 28
    mesh: tuple[int, int, int] = (1, -1, 1)
    seed: int = 0
    out_dir: str = "runs/tiny"
    save_every: int = 2
    keep_checkpoints: int = 3
    log_every: int = 1
    kernel_impl: str = "auto"
    rollout_slots: int = 0
    rollout_mesh: tuple[int, int, int] | None = None
    rollout_decode_chunk: int = 16
    head_impl: str = "recompute"
    head_chunk_tokens: int = 0
    head_chunk_vocab: int = 0
    head_dw_accum: str = "auto"
    pad_to_tokens: int = 0
    pad_to_patches: int = 0
    zero_reward_truncated: bool = True
    shuffle_rewards: bool = False
    eval_every: int = 0
    eval_items: int = 32
    eval_variants: tuple[str, ...] = ("full", "external")
    eval_max_new_tokens: int = 0
    heldout_fraction: float = 0.1
    train_variants: tuple[str, ...] = ()

    def __post_init__(self):
        settings = self.loss_settings.items() if isinstance(self.loss_settings, dict) else self.loss_settings
        object.__setattr__(self, "loss_settings", tuple(sorted((str(k), float(v)) for k, v in settings)))
        if self.mode not in ("rl", "sft", "vision"):
            raise ValueError(f"mode must be 'rl', 'sft' or 'vision', got {self.mode!r}")
        if self.mode == "vision" and (self.freeze_vision or self.grad_accum != 1):
            raise ValueError("mode='vision' trains the vision tower in one micro-batch per step: set "
                             f"freeze_vision=False and grad_accum=1 (got {self.freeze_vision} and {self.grad_accum})")
        if self.prompts_per_step * self.group_size % self.minibatches:
            raise ValueError(f"prompts_per_step x group_size ({self.prompts_per_step * self.group_size}) must split "
                             f"into minibatches={self.minibatches} equal parts")
        rows = self.prompts_per_step * (self.group_size if self.mode == "rl" else 1) // \
            (self.minibatches if self.mode == "rl" else 1)
        if self.grad_accum < 1 or rows % self.grad_accum:
            raise ValueError(f"grad_accum={self.grad_accum} must divide the {rows} rows of each optimizer step "
                             "(prompts_per_step x group_size / minibatches; prompts_per_step for sft and vision)")
        from hopchain_jax.variants import ALL_VARIANTS
        unknown = [v for v in (*self.train_variants, *self.eval_variants) if v not in ALL_VARIANTS]
        if unknown:
            raise ValueError(f"train_variants / eval_variants: unknown variant(s) {unknown}; use {ALL_VARIANTS}")
        from hopchain_jax.models.stack import REMAT
        if self.remat not in REMAT:
            raise ValueError(f"remat must be one of {sorted(REMAT)}, got {self.remat!r}")
        if self.rollout_slots < 0 or self.rollout_decode_chunk < 1:
            raise ValueError(f"rollout_slots must be >= 0 (0: all sequences) and rollout_decode_chunk >= 1, got "
                             f"{self.rollout_slots} and {self.rollout_decode_chunk}")
        if self.rollout_mesh is not None and len(self.rollout_mesh) != 3:
            raise ValueError(f"rollout_mesh takes (data, fsdp, tensor), got {self.rollout_mesh}")
        if self.head_impl not in ("recompute", "fused_forward"):
            raise ValueError(f"head_impl must be 'recompute' or 'fused_forward', got {self.head_impl!r}")
        from hopchain_jax.rl.losses import get_loss
        if self.head_impl == "fused_forward" and not get_loss(self.loss).fused_head:
            raise ValueError(f"head_impl='fused_forward' implements the 'sapo' loss only, not {self.loss!r}: use "
                             "head_impl='recompute' with this loss")
        self.loss_config()   # refuses unknown settings by name
        if self.head_impl == "fused_forward" and self.kl_coef > 0:
            raise ValueError("head_impl='fused_forward' has no KL term: use head_impl='recompute' with kl_coef > 0")
        if self.head_chunk_tokens < 0 or self.head_chunk_vocab < -1:
            raise ValueError(f"head_chunk_tokens must be >= 0 (0: auto) and head_chunk_vocab >= -1 (0: auto, -1: the "
                             f"whole vocabulary), got {self.head_chunk_tokens} and {self.head_chunk_vocab}")
        if self.head_dw_accum not in ("auto", "float32"):
            raise ValueError(f"head_dw_accum must be 'auto' (the compute dtype) or 'float32', got {self.head_dw_accum!r}")
        if self.pad_to_tokens < 0 or self.pad_to_patches < 0:
            raise ValueError(f"pad_to_tokens and pad_to_patches must be >= 0 (0: each step's own bucket), got "
                             f"{self.pad_to_tokens} and {self.pad_to_patches}")
        if self.eval_every < 0 or self.eval_items < 1 or self.eval_max_new_tokens < 0:
            raise ValueError(f"eval_every must be >= 0 (0: no held-out evaluation), eval_items >= 1 and "
                             f"eval_max_new_tokens >= 0, got {self.eval_every}, {self.eval_items} and "
                             f"{self.eval_max_new_tokens}")
        if self.eval_every and not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must lie in (0, 1) when eval_every > 0, got {self.heldout_fraction}")
        for name, weight in self.data:
            if weight <= 0:
                raise ValueError(f"data source {name!r} has weight {weight}; weights must be > 0")

    def loss_config(self) -> dict[str, float]:
        """The loss's settings: its defaults (rl/losses.py), loss_settings on top, max_tokens 0 -> max_new_tokens."""
        from hopchain_jax.rl.losses import resolve_settings
        settings = resolve_settings(self.loss, self.loss_settings)
        if settings.get("max_tokens") == 0:
            settings["max_tokens"] = float(self.max_new_tokens)
        return settings

    @property
    def total_optimizer_steps(self) -> int:
        return self.steps * (self.minibatches if self.mode == "rl" else 1)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        data["data"] = tuple((str(d), float(w)) for d, w in data.get("data", ()))
        data["mesh"] = tuple(data.get("mesh", (1, -1, 1)))
        # configs written before the loss registry carried SAPO's temperatures as fields of their own
        # (__post_init__ sorts loss_settings, from pairs or a dict)
        legacy = {k: float(data.pop(k)) for k in ("tau_pos", "tau_neg") if k in data}
        settings = dict(data.get("loss_settings") or ())
        if legacy and data.get("loss", "sapo") == "sapo":
            settings = {**{k: v for k, v in legacy.items() if v != {"tau_pos": 1.0, "tau_neg": 1.05}[k]}, **settings}
        data["loss_settings"] = settings
        for key in ("eval_variants", "train_variants"):
            if key in data:
                data[key] = tuple(data[key])
        if data.get("rollout_mesh") is not None:
            data["rollout_mesh"] = tuple(data["rollout_mesh"])
        return cls(**data)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def command(self) -> str:
        return f"python launch/train.py --config {self.name}"


def dumps(config: TrainConfig) -> str:
    return json.dumps(config.to_json(), indent=1, sort_keys=True)

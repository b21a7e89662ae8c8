"""Training presets (typed TrainConfig). Each carries its run command: `config.command()`.

  tiny            CPU, minutes: the tiny model (random init, real tokenizer) on 48 synthesized scenes; a check that
                  the whole RL loop runs, not a run that learns (8 steps from random weights teach nothing: reward
                  and held-out accuracy stay at 0). Held-out greedy accuracy is measured before and after.
  tiny_sft        the same in SFT mode on the gold rationales (the loss falls; 8 steps are far too few to learn the
                  answer format, so held-out accuracy stays at 0)
  qwen2_5_vl_3b   GPU/TPU: Qwen2.5-VL-3B (pass --model CKPT for real weights), HopChain + your RLVR data
  qwen2_5_vl_7b   GPU/TPU: Qwen2.5-VL-7B

The GPU presets keep float32 master weights and Adam moments (a bf16 update at lr 1e-6 would round
away), compute in bfloat16, rematerialise every layer, and split each 256-row optimizer step into 32
micro-batches of 8 rows (one per device on 8 GPUs). Rollouts decode from a bf16 copy replicated on every
device (rollout_mesh (-1, 1, 1): the 512 sequences of a step split over all devices, no weight gathers in
the decode loop); benchmarks/memory_fit.py checks that all of it fits.
"""
from __future__ import annotations

from hopchain_jax.rl.config import TrainConfig

TINY = TrainConfig(eval_every=8, eval_items=16)
TINY_SFT = TrainConfig(name="tiny_sft", mode="sft", steps=8, prompts_per_step=8, lr=3e-3, out_dir="runs/tiny_sft",
                       eval_every=8, eval_items=16)
QWEN2_5_VL_3B = TrainConfig(
    name="qwen2_5_vl_3b", model="qwen2_5_vl_3b", dtype="bfloat16", param_dtype="float32", synth_images=3000,
    steps=500, prompts_per_step=64, group_size=8, minibatches=2, grad_accum=32, remat="full",
    max_new_tokens=2048, lr=1e-6, warmup_steps=10,
    weight_decay=0.1, max_prompt_tokens=4096, max_pixels=1003520, mesh=(1, -1, 1), out_dir="runs/qwen2_5_vl_3b",
    save_every=25, freeze_vision=True, rollout_mesh=(-1, 1, 1))
QWEN2_5_VL_7B = QWEN2_5_VL_3B.replace(name="qwen2_5_vl_7b", model="qwen2_5_vl_7b", out_dir="runs/qwen2_5_vl_7b")

PRESETS = {c.name: c for c in (TINY, TINY_SFT, QWEN2_5_VL_3B, QWEN2_5_VL_7B)}

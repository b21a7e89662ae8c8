"""One SFT phase of benchmarks/learning.py's setup (its Plan and _base: the tiny model, 112 px, batch 16,
cosine lr) on the dataset in $DATA, with TrainConfig overrides as JSON ("plan": Plan overrides; "model":
"small" is a 4-layer, 128-wide LM with a 4-layer, 64-wide tower, registered here only).

  DATA=DIR sft.py STEPS LR OUT ['{"freeze_vision": true, "model": CKPT, ...}']
"""
import sys, json, os, time, dataclasses
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))

import learning as L
from hopchain_jax.configs import models as _M
from hopchain_jax.models.config import TextConfig, VisionConfig, QwenVLConfig
def small():
    t = _M.tiny()
    text = TextConfig(vocab_size=t.text.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=16, rope_theta=10000.0,
                      mrope_section=(2, 3, 3), qkv_bias=True, max_position_embeddings=4096)
    vision = VisionConfig(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                          patch_size=14, hidden_act="silu", window_size=56, fullatt_block_indexes=(1, 3))
    return QwenVLConfig(arch="qwen2_5_vl", text=text, vision=vision)
_M.PRESETS["small"] = small
from absl import flags; flags.FLAGS.mark_as_parsed()
steps=int(sys.argv[1]); lr=float(sys.argv[2]); out=Path(sys.argv[3]); extra=json.loads(sys.argv[4]) if len(sys.argv)>4 else {}
planx = extra.pop("plan", {})
plan=L.Plan(**planx)
data=Path(os.environ["DATA"])
cfg=L._base(plan,0,data,out,mode="sft",steps=steps,prompts_per_step=16,lr=lr,eval_every=max(1,steps//10))
extra={k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}
cfg=dataclasses.replace(cfg, **extra)
ph=L.run_phase("sft",cfg,False)
json.dump(ph,open(out/"phase.json","w"),indent=1)
print([(c["step"],round(c["eval_accuracy"],3)) for c in ph["curve"]], ph["train_seconds"])

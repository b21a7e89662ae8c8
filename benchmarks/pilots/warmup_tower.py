"""Warm up the tiny model's vision tower + merger on a dense per-token signal before any SFT: for each of
the 16 merged image tokens (112 x 112 px, 4 x 4 tokens of 28 x 28 px), predict the fraction of its block an
object covers (sigmoid cross-entropy through a linear head on the RMS-normalised token). The language model
is left at its random init. Saves a checkpoint (config, weights, tokenizer, preprocessor config).

  warmup_tower.py --jsonl DIR OUT STEPS     images of DIR/data.jsonl; objects = pixels darker than 230 (discs.py)
  warmup_tower.py --dataset DIR OUT STEPS   a hopchain synth dataset; objects = its instance masks
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from hopchain_jax.configs.models import tiny
from hopchain_jax.models.checkpoint import save_pretrained
from hopchain_jax.models.image_processor import QWEN2_5_VL, preprocess
from hopchain_jax.models.qwen_vl import init_sharded
from hopchain_jax.models.sharding import make_mesh
from hopchain_jax.models.tokenizer import load_tokenizer
from hopchain_jax.models.vision import prepare_vision_inputs

SIDE, TOKENS, BATCH, MAX_IMAGES = 112, 16, 32, 1600


def block_cover(mask: np.ndarray) -> np.ndarray:
    """bool [112, 112] -> float [16]: covered fraction of each 28 x 28 block, in the tokens' raster order."""
    return mask.reshape(4, 28, 4, 28).mean((1, 3)).reshape(-1)


def from_jsonl(root: Path):
    rows = [json.loads(line) for line in open(root / "data.jsonl")][:MAX_IMAGES]
    images = [Image.open(root / r["image"]).convert("RGB") for r in rows]
    labels = [block_cover(np.asarray(im.resize((SIDE, SIDE), Image.BICUBIC)).min(-1) < 230) for im in images]
    return images, labels


def from_dataset(root: Path):
    from hopchain_jax.data.store import HopChainDataset
    ds = HopChainDataset(root)
    seen, images, labels = set(), [], []
    for rec in ds.records():
        key = (rec["image"]["shard"], rec["image"]["index"])
        if key in seen:
            continue
        seen.add(key)
        images.append(Image.fromarray(ds.image(*key)))
        labels.append(block_cover(np.asarray(Image.fromarray(ds.labels(*key)).resize((SIDE, SIDE), Image.NEAREST)) > 0))
        if len(images) == MAX_IMAGES:
            break
    return images, labels


def main() -> None:
    kind, src, out, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    images, labels = (from_jsonl if kind == "--jsonl" else from_dataset)(src)
    proc = QWEN2_5_VL.replace(max_pixels=SIDE * SIDE)
    pixels = preprocess(images, proc).pixel_values.reshape(len(images), 64, -1)
    labels = np.asarray(labels, np.float32)
    model = init_sharded(tiny(), dtype=jnp.float32, param_dtype=jnp.float32, mesh=make_mesh(), seed=0)
    cfg = model.config
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grid = np.tile(np.array([[1, 8, 8]]), (BATCH, 1))

    def vision(idx):
        vi = prepare_vision_inputs(pixels[idx].reshape(BATCH * 64, -1), grid, cfg, BATCH * 64)
        return {k: jnp.asarray(v) for k, v in vi.arrays().items()}

    def loss_fn(p, head, vis, y):
        feats = nnx.merge(graphdef, p, rest).encode_images(vis)
        f = (feats[0] if isinstance(feats, tuple) else feats)[:BATCH * TOKENS].reshape(BATCH, TOKENS, -1)
        f = f / (jnp.sqrt(jnp.mean(f * f, -1, keepdims=True)) + 1e-6)
        z = f @ head["w"] + head["b"]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(z, y)), z

    tx = optax.adam(3e-3)
    head = {"w": jnp.zeros((cfg.text.hidden_size,)), "b": jnp.zeros(())}
    state = tx.init((params, head))

    @jax.jit
    def step(p, h, s, vis, y):
        (loss, _), g = jax.value_and_grad(lambda ph: loss_fn(ph[0], ph[1], vis, y), has_aux=True)((p, h))
        updates, s = tx.update(g, s, (p, h))
        p, h = optax.apply_updates((p, h), updates)
        return p, h, s, loss

    rng = np.random.default_rng(0)
    train, test = np.arange(len(images) - 128), np.arange(len(images) - 128, len(images))
    t0 = time.time()
    for i in range(steps):
        idx = rng.choice(train, BATCH, replace=False)
        params, head, state, loss = step(params, head, state, vision(idx), jnp.asarray(labels[idx]))
        if i % 50 == 0 or i == steps - 1:
            acc = np.mean([np.mean((np.asarray(loss_fn(params, head, vision(test[j:j + BATCH]), 0.0)[1]) > 0)
                                   == (labels[test[j:j + BATCH]] > 0.5)) for j in range(0, 128, BATCH)])
            print(f"{i} loss {float(loss):.4f} held-out token accuracy {acc:.3f} {time.time() - t0:.0f}s", flush=True)
    save_pretrained(nnx.merge(graphdef, params, rest), out, processor=proc, generation={})
    load_tokenizer().save_pretrained(out)
    print("saved", out)


if __name__ == "__main__":
    main()

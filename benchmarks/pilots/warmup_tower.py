"""Warm up the tiny model's vision tower + merger on a dense per-token signal before any SFT: for each of
the 16 merged image tokens (112 x 112 px, 4 x 4 tokens of 28 x 28 px), predict the fraction of its block an
object covers (sigmoid cross-entropy through a linear head on the RMS-normalised token). The language model
is left at its random init. Saves a checkpoint (config, weights, tokenizer, preprocessor config).

  warmup_tower.py --jsonl DIR OUT STEPS     images of DIR/data.jsonl; objects = pixels darker than 230 (discs.py)
  warmup_tower.py --dataset DIR OUT STEPS   a hopchain synth dataset; objects = its instance masks

  --global-counts (after --jsonl, colour_discs.py data): also predict, from every token, the whole image's number
  of red and of blue discs (the JSONL's "counts"; softmax cross-entropy over 0..8 through one linear head per
  colour on the same normalised token), added to the cover loss. --global-counts=pool predicts them from the
  mean of the normalised tokens instead. Prints each head's held-out accuracy.
  --colour-cover (control, after --jsonl): instead, per token the covered fraction by red and by blue discs
  (non-white pixels, red where R > B), sigmoid cross-entropy like the cover head: colour without any count.
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
COUNT_COLOURS, COUNT_CLASSES = ("red", "blue"), 9


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


def global_counts(root: Path) -> np.ndarray:
    """int [n, 2]: each image's number of red and blue discs (colour_discs.py's "counts")."""
    rows = [json.loads(line) for line in open(root / "data.jsonl")][:MAX_IMAGES]
    return np.asarray([[r["counts"][c] for c in COUNT_COLOURS] for r in rows], np.int32)


def _tower(images):
    """The tiny model at seed 0 split for training, and vision(idx): the tower inputs of images[idx] (BATCH of them)."""
    proc = QWEN2_5_VL.replace(max_pixels=SIDE * SIDE)
    pixels = preprocess(images, proc).pixel_values.reshape(len(images), 64, -1)
    model = init_sharded(tiny(), dtype=jnp.float32, param_dtype=jnp.float32, mesh=make_mesh(), seed=0)
    cfg = model.config
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grid = np.tile(np.array([[1, 8, 8]]), (BATCH, 1))

    def vision(idx):
        vi = prepare_vision_inputs(pixels[idx].reshape(BATCH * 64, -1), grid, cfg, BATCH * 64)
        return {k: jnp.asarray(v) for k, v in vi.arrays().items()}
    return proc, cfg, graphdef, params, rest, vision


def _save(model, out, proc) -> None:
    save_pretrained(model, out, processor=proc, generation={})
    load_tokenizer().save_pretrained(out)
    print("saved", out)


def main() -> None:
    flag = [a for a in sys.argv[1:] if a.startswith("--global-counts") or a == "--colour-cover"]
    if flag:
        sys.argv.remove(flag[0])
        main_counts({"--global-counts": "tokens", "--global-counts=pool": "pool"}.get(flag[0], "colour-cover"))
        return
    kind, src, out, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    images, labels = (from_jsonl if kind == "--jsonl" else from_dataset)(src)
    labels = np.asarray(labels, np.float32)
    proc, cfg, graphdef, params, rest, vision = _tower(images)

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
    _save(nnx.merge(graphdef, params, rest), out, proc)


def colour_cover(root: Path) -> np.ndarray:
    """float [n, 16, 2]: per token, the covered fraction by red and by blue discs."""
    rows = [json.loads(line) for line in open(root / "data.jsonl")][:MAX_IMAGES]
    out = []
    for r in rows:
        a = np.asarray(Image.open(root / r["image"]).convert("RGB").resize((SIDE, SIDE), Image.BICUBIC)).astype(int)
        disc, red = a.min(-1) < 230, a[..., 0] > a[..., 2]
        out.append(np.stack([block_cover(disc & red), block_cover(disc & ~red)], -1))
    return np.asarray(out, np.float32)


def main_counts(mode: str) -> None:
    """main() plus two extra heads (the cover head, data, split, optimiser and seeds unchanged): mode "tokens" /
    "pool": global red / blue counts from every token / the mean token; "colour-cover": per-token red / blue cover."""
    kind, src, out, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    assert kind == "--jsonl", "--global-counts / --colour-cover need --jsonl colour_discs.py data"
    images, labels = from_jsonl(src)
    pool, ccover = mode == "pool", mode == "colour-cover"
    counts = global_counts(src)
    cc = colour_cover(src) if ccover else None
    labels = np.asarray(labels, np.float32)
    proc, cfg, graphdef, params, rest, vision = _tower(images)

    def loss_fn(p, head, vis, y, c):
        feats = nnx.merge(graphdef, p, rest).encode_images(vis)
        f = (feats[0] if isinstance(feats, tuple) else feats)[:BATCH * TOKENS].reshape(BATCH, TOKENS, -1)
        f = f / (jnp.sqrt(jnp.mean(f * f, -1, keepdims=True)) + 1e-6)
        z = f @ head["w"] + head["b"]
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(z, y))
        g = f.mean(1, keepdims=True) if pool else f                      # [B, 1 or 16, H]
        logits = []
        if ccover:                                                          # c: float [B, 16, 2]
            for j, colour in enumerate(COUNT_COLOURS):
                lz = f @ head["w_" + colour] + head["b_" + colour]        # [B, 16]
                loss = loss + jnp.mean(optax.sigmoid_binary_cross_entropy(lz, c[..., j]))
                logits.append(lz)
            return loss, (z, logits)
        for j, colour in enumerate(COUNT_COLOURS):
            lz = g @ head["w_" + colour] + head["b_" + colour]            # [B, T, 9]
            lab = jnp.broadcast_to(c[:, None, j], lz.shape[:2])
            loss = loss + jnp.mean(optax.softmax_cross_entropy_with_integer_labels(lz, lab))
            logits.append(lz)
        return loss, (z, logits)

    tx = optax.adam(3e-3)
    head = {"w": jnp.zeros((cfg.text.hidden_size,)), "b": jnp.zeros(())}
    for colour in COUNT_COLOURS:
        head["w_" + colour] = jnp.zeros((cfg.text.hidden_size,) + (() if ccover else (COUNT_CLASSES,)))
        head["b_" + colour] = jnp.zeros(() if ccover else (COUNT_CLASSES,))
    state = tx.init((params, head))

    @jax.jit
    def step(p, h, s, vis, y, c):
        (loss, _), g = jax.value_and_grad(lambda ph: loss_fn(ph[0], ph[1], vis, y, c), has_aux=True)((p, h))
        updates, s = tx.update(g, s, (p, h))
        p, h = optax.apply_updates((p, h), updates)
        return p, h, s, loss

    zeros_c = jnp.zeros((BATCH, TOKENS, 2)) if ccover else jnp.zeros((BATCH, 2), jnp.int32)
    evaluate = jax.jit(lambda p, h, vis: loss_fn(p, h, vis, jnp.zeros((BATCH, TOKENS)), zeros_c)[1])
    targets = cc if ccover else counts

    def held_out(test):
        cover, tok, img = [], [[], []], [[], []]
        for j in range(0, 128, BATCH):
            idx = test[j:j + BATCH]
            z, logits = evaluate(params, head, vision(idx))
            cover.append(np.mean((np.asarray(z) > 0) == (labels[idx] > 0.5)))
            for k in range(2):
                lz = np.asarray(logits[k])
                if ccover:                                       # token covered > 0.5 by colour k; image: no count
                    tok[k].append(np.mean((lz > 0) == (cc[idx, :, k] > 0.5)))
                    img[k].append(np.nan)
                    continue
                tok[k].append(np.mean(lz.argmax(-1) == counts[idx, k][:, None]))      # every token's own guess
                img[k].append(np.mean(lz.mean(1).argmax(-1) == counts[idx, k]))       # tokens' mean logits
        return np.mean(cover), [np.mean(t) for t in tok], [np.mean(t) for t in img]

    rng = np.random.default_rng(0)
    train, test = np.arange(len(images) - 128), np.arange(len(images) - 128, len(images))
    majority = [np.mean(counts[test, k] == np.bincount(counts[train, k]).argmax()) for k in range(2)]
    print(f"held-out majority-class count accuracy red {majority[0]:.3f} blue {majority[1]:.3f}", flush=True)
    t0 = time.time()
    for i in range(steps):
        idx = rng.choice(train, BATCH, replace=False)
        params, head, state, loss = step(params, head, state, vision(idx), jnp.asarray(labels[idx]),
                                         jnp.asarray(targets[idx]))
        if i % 50 == 0 or i == steps - 1:
            cover, tok, img = held_out(test)
            print(f"{i} loss {float(loss):.4f} held-out token accuracy {cover:.3f} | {'colour cover' if ccover else 'count'} per token red {tok[0]:.3f} "
                  f"blue {tok[1]:.3f} | per image red {img[0]:.3f} blue {img[1]:.3f} {time.time() - t0:.0f}s", flush=True)
    _save(nnx.merge(graphdef, params, rest), out, proc)


if __name__ == "__main__":
    main()

"""Is the disc count linear in a checkpoint's image tokens? Ridge regression (1,200 train / 400 test images
of discs.py's train set) from the RMS-normalised tokens, mean-pooled and flattened.  decode_count.py CKPT DISCS_TRAIN_DIR"""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import numpy as np, jax, jax.numpy as jnp
from PIL import Image
from hopchain_jax.models.image_processor import QWEN2_5_VL, preprocess
from hopchain_jax.models.vision import prepare_vision_inputs
ck = sys.argv[1]
from hopchain_jax.infer.generate import Generator
g = Generator(ck, progress=False); model = g.model; cfg = model.config
proc = QWEN2_5_VL.replace(max_pixels=112 * 112)
src = sys.argv[2]
rows = [json.loads(l) for l in open(src + "/data.jsonl")]
y = np.array([r["answer"] for r in rows])
imgs = [Image.open(src + "/" + r["image"]).convert("RGB") for r in rows]
pv = preprocess(imgs, proc).pixel_values.reshape(len(imgs), 64, -1)
B = 32; grid = np.tile(np.array([[1, 8, 8]]), (B, 1))
enc = jax.jit(lambda a: model.encode_images(a))
F = []
for i in range(0, len(imgs), B):
    idx = np.arange(i, min(i + B, len(imgs)))
    batch = np.concatenate([pv[idx], np.zeros((B - len(idx), 64, pv.shape[-1]), np.float32)])
    vi = prepare_vision_inputs(batch.reshape(B * 64, -1), grid, cfg, B * 64)
    f = enc({k: jnp.asarray(v) for k, v in vi.arrays().items()})
    f = np.asarray(f[0] if isinstance(f, tuple) else f)[:B * 16].reshape(B, 16, -1)[:len(idx)]
    F.append(f)
F = np.concatenate(F)
Fn = F / np.sqrt((F ** 2).mean(-1, keepdims=True))
def ridge(X, lam=1.0):
    tr, te = slice(0, 1200), slice(1200, None)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    A, At = (X[tr] - mu) / sd, (X[te] - mu) / sd
    w = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ (y[tr] - y[tr].mean()))
    pred = np.clip(np.rint(At @ w + y[tr].mean()), 1, 4)
    return (pred == y[te]).mean()
print(ck, "count from mean-pooled normalized features: acc %.3f" % ridge(Fn.mean(1)), "| flattened: %.3f" % ridge(Fn.reshape(len(F), -1), 10.0))

"""Discs of two colours (red, blue) on white, 224 px; "How many red/blue discs are there?" (answer 1-4):
OUT/{train,test}/data.jsonl and their `hopchain import` datasets OUT/{train,test}_ds. Usage: colour_discs.py OUT"""
import json, subprocess, sys
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw
COLS = {"red": (220, 40, 40), "blue": (40, 95, 220)}
def make(root, n, seed, size=224):
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    with open(root / "data.jsonl", "w") as f:
        for i in range(n):
            asked = ["red", "blue"][int(rng.integers(2))]
            other = "blue" if asked == "red" else "red"
            k, m = int(rng.integers(1, 5)), int(rng.integers(0, 5))
            im = Image.new("RGB", (size, size), (255, 255, 255)); d = ImageDraw.Draw(im)
            cells = rng.permutation(9)[:k + m]
            for j, c in enumerate(cells):
                cy, cx = divmod(int(c), 3); r = int(rng.integers(18, 30))
                x = cx * size / 3 + size / 6 + rng.integers(-8, 9); y = cy * size / 3 + size / 6 + rng.integers(-8, 9)
                d.ellipse([x - r, y - r, x + r, y + r], fill=COLS[asked if j < k else other])
            im.save(root / "img" / f"{i}.png")
            f.write(json.dumps({"image": f"img/{i}.png", "question": f"How many {asked} discs are there?", "answer": k}) + "\n")
if __name__ == "__main__":
    out = Path(sys.argv[1])
    for part, n, seed in (("train", 1600, 1), ("test", 200, 2)):
        make(out / part, n, seed)
        subprocess.run([sys.executable, "-m", "hopchain_jax.cli", "import", "--jsonl", str(out / part / "data.jsonl"),
                        "--out", str(out / f"{part}_ds"), "--no-progress"], check=True)

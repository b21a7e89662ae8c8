"""1-4 discs of random colour on white (224 x 224), "How many discs are there?": OUT/{train,test}/data.jsonl
and their `hopchain import` datasets OUT/{train,test}_ds. Usage: discs.py OUT"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make(root: Path, n: int, seed: int, size: int = 224) -> None:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    with open(root / "data.jsonl", "w") as f:
        for i in range(n):
            k = int(rng.integers(1, 5))
            im = Image.new("RGB", (size, size), (255, 255, 255))
            d = ImageDraw.Draw(im)
            for c in rng.permutation(9)[:k]:   # one disc per cell of a 3 x 3 grid
                cy, cx = divmod(int(c), 3)
                r = int(rng.integers(18, 30))
                x = cx * size / 3 + size / 6 + rng.integers(-8, 9)
                y = cy * size / 3 + size / 6 + rng.integers(-8, 9)
                d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
            im.save(root / "img" / f"{i}.png")
            f.write(json.dumps({"image": f"img/{i}.png", "question": "How many discs are there?", "answer": k}) + "\n")


def write_parts(out: Path, make_part=make) -> None:
    """1,600 training (seed 1) and 200 test (seed 2) images by make_part, each imported as OUT/<part>_ds."""
    for part, n, seed in (("train", 1600, 1), ("test", 200, 2)):
        make_part(out / part, n, seed)
        subprocess.run([sys.executable, "-m", "hopchain_jax.cli", "import", "--jsonl", str(out / part / "data.jsonl"),
                        "--out", str(out / f"{part}_ds"), "--no-progress"], check=True)


if __name__ == "__main__":
    write_parts(Path(sys.argv[1]))

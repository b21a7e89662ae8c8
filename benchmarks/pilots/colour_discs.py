"""Discs of two colours (red, blue) on white, 224 px; "How many red/blue discs are there?" (answer 1-4, the
other colour 0-4): OUT/{train,test}/data.jsonl and their `hopchain import` datasets OUT/{train,test}_ds
(discs.py's layout and split). Each JSONL row also records both colours' counts, "counts": {"red": .., "blue": ..}
(`hopchain import` ignores the extra key). Usage: colour_discs.py OUT"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from discs import write_parts  # noqa: E402

COLOURS = {"red": (220, 40, 40), "blue": (40, 95, 220)}


def make(root: Path, n: int, seed: int, size: int = 224) -> None:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    with open(root / "data.jsonl", "w") as f:
        for i in range(n):
            asked = ["red", "blue"][int(rng.integers(2))]
            other = "blue" if asked == "red" else "red"
            k, m = int(rng.integers(1, 5)), int(rng.integers(0, 5))
            im = Image.new("RGB", (size, size), (255, 255, 255))
            d = ImageDraw.Draw(im)
            for j, c in enumerate(rng.permutation(9)[:k + m]):   # one disc per cell of a 3 x 3 grid
                cy, cx = divmod(int(c), 3)
                r = int(rng.integers(18, 30))
                x = cx * size / 3 + size / 6 + rng.integers(-8, 9)
                y = cy * size / 3 + size / 6 + rng.integers(-8, 9)
                d.ellipse([x - r, y - r, x + r, y + r], fill=COLOURS[asked if j < k else other])
            im.save(root / "img" / f"{i}.png")
            f.write(json.dumps({"image": f"img/{i}.png", "question": f"How many {asked} discs are there?",
                                "answer": k, "counts": {c: k if c == asked else m for c in COLOURS}}) + "\n")


if __name__ == "__main__":
    write_parts(Path(sys.argv[1]), make)

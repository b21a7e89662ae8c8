"""The install: one top-level import name (hopchain_jax), Hugging Face's `kernels` package beside ours.

The repository's kernels/, configs/ and launch/ folders are imported as hopchain_jax.kernels / .configs /
.launch (symlinks under hopchain_jax/, pyproject.toml); a wheel holds nothing else at its top level, and a
bare `import kernels` is never ours, not even with the checkout's root first on sys.path.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("kernels", "configs", "launch")


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_bare_kernels_is_never_ours_even_from_the_checkout_root():
    """With the checkout's root first on sys.path (python -m pytest, a REPL there, launch/train.py), `import
    kernels` is Hugging Face's package when it is installed, and a plain ModuleNotFoundError naming our
    import path when it is not -- never our folder; hopchain_jax.kernels works in the same process, and so
    does transformers' Qwen-VL modeling import (which failed when our folder shadowed Hugging Face's)."""
    code = f"""
import sys, json, importlib.util
sys.path.insert(0, {str(ROOT)!r})
hf = importlib.util.find_spec("kernels") is not None
try:
    import kernels
    bare = kernels.__file__
except ModuleNotFoundError as e:
    bare = "missing: " + str(e)
import hopchain_jax.kernels as ours
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401
print(json.dumps({{"bare": bare, "ours": ours.__file__, "ours_has": hasattr(ours, "fused_logprob_entropy"),
                  "same": sys.modules.get("kernels") is ours}}))
"""
    out = _run(code, ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ours_has"] and not got["same"]
    assert Path(got["ours"]).resolve() == ROOT / "kernels" / "__init__.py"
    # (a prefix test of ROOT would flag a venv created inside the checkout, as a new user may do)
    assert got["bare"].startswith("missing") or not Path(got["bare"]).resolve().is_relative_to(ROOT / "kernels"), \
        f"a bare `import kernels` got our folder: {got['bare']}"
    if got["bare"].startswith("missing: "):
        assert "hopchain_jax.kernels" in got["bare"]


def test_hugging_face_kernels_package_and_ours_in_one_process():
    """The `kernels` distribution (Hugging Face's, pulled in by transformers >= 5.25's kernel hub) imports
    by its own name beside hopchain_jax.kernels."""
    pytest.importorskip("kernels", reason="Hugging Face's kernels package is not installed (pip install kernels)")
    import kernels as hf_kernels
    import hopchain_jax.kernels as ours
    assert hf_kernels is not ours and "site-packages" in str(Path(hf_kernels.__file__).resolve())
    assert callable(ours.fused_logprob_entropy)


def _wheel(tmp_path: Path) -> Path:
    """`pip wheel` of a clean copy of the tree (a checkout's build/ may hold stale files from older builds)."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("hopchain_jax", *FOLDERS):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("hopchain_jax-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_holds_one_top_level_name_and_runs_synth_and_training_outside_the_checkout(tmp_path):
    """`pip wheel .` -> only hopchain_jax/ (and its dist-info) at the wheel's top level, every module of the
    library and of kernels/, configs/, launch/ inside it, the measured tuned.json, both console entry points.
    Installed (--no-deps) into a fresh venv that borrows this interpreter's dependencies, its `hopchain synth`
    and `hopchain-train` (the tiny SFT preset, on the data it synthesizes) run from a folder outside the
    checkout, on the installed copy."""
    wheel = _wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"hopchain_jax"}, tops
    expected = {f"hopchain_jax/{p.relative_to(ROOT / 'hopchain_jax').as_posix()}"
                for p in (ROOT / "hopchain_jax").rglob("*.py") if p.parent.name != "__pycache__"
                and p.relative_to(ROOT / "hopchain_jax").parts[0] not in FOLDERS}
    for folder in FOLDERS:
        expected |= {f"hopchain_jax/{folder}/{p.relative_to(ROOT / folder).as_posix()}"
                     for p in (ROOT / folder).rglob("*.py") if p.parent.name != "__pycache__"}
    assert expected - set(names) == set()
    assert "hopchain_jax/kernels/tuned.json" in names
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert dict(scripts["console_scripts"]) == {"hopchain": "hopchain_jax.cli:main",
                                                "hopchain-train": "hopchain_jax.launch.train:main"}

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*cmd):
        return subprocess.run([str(c) for c in cmd], cwd=outside, capture_output=True, text=True, timeout=300)

    where = run(bin_dir / "python", "-c", "import hopchain_jax.kernels as k, hopchain_jax.configs.train as c; "
                "print(k.__file__); print(c.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(Path(line).resolve().is_relative_to(venv.resolve()) for line in where.stdout.split()), where.stdout
    synth = run(bin_dir / "hopchain", "synth", "--preset", "learnable", "--num-images", "4", "--images-per-shard",
                "2", "--workers", "1", "--out", "data", "--no-progress")
    assert synth.returncode == 0, synth.stderr[-2000:]
    train = run(bin_dir / "hopchain-train", "--config", "tiny_sft", "--steps", "1", "--out", "run", "--no-progress")
    assert train.returncode == 0, train.stderr[-3000:]
    assert (outside / "run" / "metrics.jsonl").exists()

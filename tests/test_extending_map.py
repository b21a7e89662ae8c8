"""docs/extending.md names the files and symbols to edit for each kind of change: every one must exist."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`([\w./-]+\.py)(?:::(\w+))?`")


def _names(path: Path) -> set[str]:
    """Every function, class (at any depth) and module-level assignment target in a Python file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def test_every_file_and_symbol_the_extension_map_names_exists():
    text = (ROOT / "docs" / "extending.md").read_text()
    refs = REFERENCE.findall(text)
    assert len(refs) > 30 and sum(1 for _, symbol in refs if symbol) > 25
    missing = []
    for file, symbol in refs:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif symbol and symbol not in _names(path):
            missing.append(f"{file}::{symbol}")
    assert not missing, f"docs/extending.md names what the code no longer has: {missing}"


def test_the_map_is_linked_from_the_readme_guides():
    assert "docs/extending.md" in (ROOT / "README.md").read_text()


def test_cli_help_and_readme_name_the_schema_version_the_code_writes():
    from hopchain_jax.cli import build_parser
    from hopchain_jax.synth.record import SCHEMA_VERSION
    text = build_parser().format_help()
    versions = set(re.findall(r"schema-v(\d+)", text))
    assert versions == {str(SCHEMA_VERSION)}, text
    readme = (ROOT / "README.md").read_text()
    said = set(re.findall(r"schema[ (-]+v(\d+)", readme))
    assert said and said <= {str(SCHEMA_VERSION)}


def test_model_families_come_from_the_registry_and_an_unknown_one_is_refused_by_name():
    import pytest
    from hopchain_jax.configs.models import tiny
    from hopchain_jax.models.config import ARCHES, QwenVLConfig
    from hopchain_jax.models.families import FAMILIES, family
    assert ARCHES == tuple(FAMILIES) and set(FAMILIES) >= {"qwen2_5_vl", "qwen3_vl"}
    hf = tiny("qwen3_vl").to_hf()
    assert hf["architectures"] == [family("qwen3_vl").architecture]
    with pytest.raises(ValueError, match=r"model_type 'qwen3_5_vl' is not supported; supported: \['qwen2_5_vl', 'qwen3_vl'\]"):
        QwenVLConfig.from_hf({**hf, "model_type": "qwen3_5_vl"})
    for arch in FAMILIES:   # every family round-trips through its config.json
        cfg = tiny(arch)
        assert QwenVLConfig.from_hf(cfg.to_hf()) == cfg and cfg.family is FAMILIES[arch]

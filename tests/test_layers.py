"""The package's imports point one way (docs/architecture.md): base -> data -> models ->
metrics, checkpoint -> infer -> train -> interfaces; Triton only in train/gpu/kernels.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "captionkit"
LAYERS = {  # first component after "captionkit" -> layer, lower is more basic
    "config": 0, "config_stages": 0, "errors": 0, "registry": 0, "progress": 0, "threads": 0,
    "data": 1,
    "models": 2,
    "metrics": 3, "checkpoint": 3,
    "infer": 4,
    "train": 5,
}
INTERFACES = 6  # cli, demo, server, __init__, __main__


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], INTERFACES) if len(parts) > 1 else INTERFACES


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("captionkit", *parts)).removesuffix(".__init__")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every captionkit or triton import in the file, top level or not."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            names = ([f"{base}.{a.name}" for a in node.names] if base == "captionkit"
                     else [base])
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, n) for line, n in found if n.split(".")[0] in ("captionkit", "triton")]


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down_the_layers(path):
    own = layer(module_name(path))
    upward = [f"line {line}: {name}" for line, name in imports(path)
              if name.startswith("captionkit") and layer(name) > own]
    assert not upward, f"{module_name(path)} (layer {own}) imports from above: {upward}"


def test_only_the_kernels_module_imports_triton():
    users = {module_name(p) for p in MODULES
             if any(n.split(".")[0] == "triton" for _, n in imports(p))}
    assert users == {"captionkit.train.gpu.kernels"}


def test_the_layer_map_knows_every_top_level_name():
    """A new top-level module or package must be placed in a layer (or be an interface)."""
    names = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file())}
    interfaces = {"__init__", "__main__", "cli", "demo", "server"}
    assert names - interfaces == set(LAYERS)
    assert len([p for p in SRC.glob("*.py")]) <= 12  # the top level stays small

"""The package's layer rule (docs/ARCHITECTURE.md), checked by reading the source with `ast`:

- each module imports sj_jax modules of its own layer or of a lower one, never a higher one;
- every import sits at the top of its module, except an optional dependency's (`OPTIONAL`);
- no module takes a private name (`_x`) from another module;
- no two modules of one layer import each other (no circles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sj_jax"

# Lowest first: a module may import from its own layer or any layer before it.
LAYERS = ("core", "tasks", "models", "objectives", "weights", "loading", "inference", "judge", "data",
          "evaluation", "train", "algorithms", "experiments", "cli", "__init__")

# Imports that may sit inside a function: dependencies a run may not have (the test and bench extras)
# or that cost start-up time only for the command that needs them.
OPTIONAL = ("torch", "transformers", "matplotlib", "psutil", "resource", "tensorboardX", "wandb")


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(module: str, path: Path):
    """(node, imported module, names, at top) for every import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, [], id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield node, name, [a.name for a in node.names], id(node) in top


def _resolve(name: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The sj_jax modules an import statement reaches (`from sj_jax.x import y`: y if it is a module)."""
    hits = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules]
    return hits or [name]


def _violations(root: Path = PACKAGE) -> dict[str, list[str]]:
    modules = _modules(root)
    found: dict[str, list[str]] = {"upward": [], "inner": [], "private": [], "circle": []}
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        here = LAYERS.index(_layer(module))
        for node, name, names, at_top in _imports(module, path):
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            if not name.startswith("sj_jax"):
                if not at_top and name.split(".")[0] not in OPTIONAL:
                    found["inner"].append(f"{where}: import {name} inside a function")
                continue
            if not at_top:
                found["inner"].append(f"{where}: import {name} inside a function")
            for target in _resolve(name, names, modules):
                if target not in modules:
                    continue
                edges.setdefault(module, set()).add(target)
                if LAYERS.index(_layer(target)) > here:
                    found["upward"].append(f"{where}: {module} ({_layer(module)}) imports {target} "
                                           f"({_layer(target)}), a higher layer")
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    found["private"].append(f"{where}: takes the private name {n} from {name}")
    for a, targets in edges.items():
        for b in targets:
            if a != b and a in edges.get(b, set()) and a < b:
                found["circle"].append(f"{a} and {b} import each other")
    return found


@pytest.mark.parametrize("kind", ["upward", "inner", "private", "circle"])
def test_layer_rule(kind):
    bad = _violations()[kind]
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer():
    for module in _modules(PACKAGE):
        assert _layer(module) in LAYERS, f"{module}: in no layer of LAYERS (tests/test_layers.py); add its folder"


def test_the_check_can_fail(tmp_path):
    """The checker itself: a planted upward, inner and private import are each found."""
    pkg = tmp_path / "sj_jax"
    for layer in ("core", "train"):
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "steps.py").write_text("X = 1\n_Y = 2\n")
    (pkg / "core" / "bad.py").write_text(
        "from sj_jax.train.steps import X\nfrom sj_jax.train.steps import _Y\n\ndef f():\n    import json\n")
    found = _violations(pkg)
    assert any("core.bad" in v and "train.steps" in v for v in found["upward"])
    assert any("json" in v for v in found["inner"])
    assert any("_Y" in v for v in found["private"])

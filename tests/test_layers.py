"""Imports flow one way (docs/architecture.md): a module imports only from its own layer or a lower one.

Every import of every module counts, the lazy ones inside functions included: a lazy import hides an upward edge
from a reader, not from this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "activations", "probes")

LAYERS: list[tuple[str, ...]] = [
    ("interp.errors", "interp.io", "interp.sites", "interp.provenance", "interp.estimates", "interp.text_metrics",
     "interp.task_prompts", "interp.resources", "interp.data", "interp.models", "interp"),
    ("activations",),
    ("probes", "interp.lens", "interp.erasure", "interp.compare_text", "interp.trace"),
    ("interp.behavior", "interp.stats", "interp.serve", "interp.erasure_eval"),
    ("interp.study", "interp.report", "interp.cli", "interp.erasure_sweep", "interp.__main__"),
]
"""Lowest first. A module belongs to the layer of its longest listed prefix; `interp` alone is the package's
__init__, which must stay at the bottom."""


def layer_of(module: str) -> int:
    """The layer of a dotted module name (longest matching prefix); ValueError for a module no layer lists."""
    best, found = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), index
    if found is None:
        raise ValueError(f"{module} is in no layer of LAYERS: add it to tests/test_layers.py and docs/architecture.md")
    return found


def imported_modules(source: str, module: str) -> set[str]:
    """Every project module `source` imports, at any depth (function bodies included), resolved to dotted names."""
    found: set[str] = set()
    package = module if module.endswith("__init__") else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def upward_imports(source: str, module: str) -> list[str]:
    """The imports of `source` (module `module`) that reach a higher layer than the module's own."""
    own = layer_of(module)
    upward = []
    for name in sorted(imported_modules(source, module)):
        try:
            target = layer_of(name)
        except ValueError:
            continue  # a name imported from a package (`from interp.models import x`) resolves through its module
        if target > own:
            upward.append(f"{module} imports {name} (layer {target} > {own})")
    return upward


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found.append((dotted, path))
    return found


@pytest.mark.parametrize("module, path", _modules(), ids=[name for name, _ in _modules()])
def test_module_imports_only_its_layer_or_below(module: str, path: Path) -> None:
    assert upward_imports(path.read_text(encoding="utf-8"), module) == []


def test_an_upward_import_is_caught_even_when_lazy() -> None:
    """The rule's positive control: a lazy import of the harness inside the lens is an upward edge."""
    source = "def f():\n    from interp.behavior import run_system\n    return run_system\n"
    assert upward_imports(source, "interp.lens") == [
        "interp.lens imports interp.behavior (layer 3 > 2)",
        "interp.lens imports interp.behavior.run_system (layer 3 > 2)",
    ]
    assert upward_imports("from interp.models.base import Site\n", "activations.hooks") == []


def test_every_module_has_a_layer() -> None:
    for module, _ in _modules():
        layer_of(module)

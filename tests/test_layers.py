"""The package's layers: every import (inside functions too) points down, and none runs in a circle.

The layers, bottom to top, as README's "Layout" section describes them.  A module
may import modules of its own layer or of lower layers; the imports inside one
layer must not form a circle.  The test reads the source (``ast``), so an import
inside a function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "affvae"

LAYERS = [
    ("errors", "provenance", "runtime", "kernels"),
    ("config", "labels", "volumes", "raysession", "transforms"),
    ("affinity",),
    ("data",),
    ("latent_map", "evaluate", "embed", "plots", "figures", "latent_html"),
    ("deconv", "model", "losses", "checkpoints", "train", "supervised"),
    ("distributed",),
    ("tracking", "runs", "tune"),
    ("cli", "commands", "__main__"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The affvae modules that ``name`` imports, anywhere in its source."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name and t != "affvae":
                found.add(t)
    return found


def _layer(name: str) -> int:
    top = name.split(".")[1] if name.count(".") else ""
    for i, members in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"module {name} is in no layer: add it to LAYERS (and the README's layout)")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items() if m != "affvae"}


def test_every_import_points_down_or_sideways(graph):
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in graph.items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circle(graph):
    # Tarjan's strongly connected components over the module graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_check_sees_imports_inside_functions():
    # the scan must count a function-level import: affinity.matrix imports Ray's
    # session helper only inside sharded_values
    modules = _modules()
    found = _imports("affvae.affinity.matrix", modules["affvae.affinity.matrix"], modules)
    assert "affvae.raysession" in found

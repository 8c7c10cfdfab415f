"""The package layout: imports run one way (stages stand on model/ and data/, nothing imports upward), no
import cycles (lazy imports inside functions count), no module over 400 lines, and every subpackage says
what it owns and what it may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "posinterp"
LAYERS = {"core": 0, "model": 1, "data": 1, "evals": 2, "theory": 3, "train": 4, "run": 5}
"""Each part and its height: a module imports its own part or a lower one (model and data: neither the other)."""
ENTRY = {"posinterp", "posinterp.__main__"}
"""The CLI and the lazy public API, which reach every verb."""
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """posinterp modules `name` imports anywhere in its body (a function's lazy import counts)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def part(name: str) -> str:
    bits = name.split(".")
    return bits[1] if len(bits) > 2 or (len(bits) == 2 and bits[1] in LAYERS) else "core"


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, targets in graph.items():
        if name in ENTRY:
            continue
        for t in targets:
            a, b = part(name), part(t)
            if t in ENTRY or (a != b and LAYERS[b] >= LAYERS[a]):
                bad.append(f"{name} ({a}) imports {t} ({b})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_sits_in_a_known_part():
    assert {part(n) for n in GRAPH} <= set(LAYERS)


def test_imports_run_one_way():
    assert upward_imports(GRAPH) == []


def test_there_are_no_import_cycles():
    graph = {n: {t for t in ts if t not in ENTRY} for n, ts in GRAPH.items() if n not in ENTRY}
    assert cycles(graph) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"posinterp.model.refs": {"posinterp.train.loop"}, "posinterp.train.loop": {"posinterp.model.refs"},
             "posinterp.data.files": {"posinterp.model.refs"}}
    assert upward_imports(graph) == ["posinterp.data.files (data) imports posinterp.model.refs (model)",
                                     "posinterp.model.refs (model) imports posinterp.train.loop (train)"]
    assert cycles(graph) == [["posinterp.model.refs", "posinterp.train.loop"]]


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_400_lines(name):
    assert len(modules()[name].read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("sub", [s for s in LAYERS if s != "core"])
def test_each_subpackage_says_what_it_owns_and_may_import(sub):
    doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text())) or ""
    assert "Owns:" in doc and "May import:" in doc

"""The package's import graph: no cycle of any kind, and dependencies point down the layers only.

Every import form counts — module level, inside functions and under ``TYPE_CHECKING`` — because each is
a dependency a reader has to hold in their head, whether or not Python happens to resolve it lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llama_convert"

# Lower layers never import higher ones (the picture in ARCHITECTURE.md). A module's layer is that of the
# longest prefix listed here.
LAYERS: dict[str, int] = {
    "errors": 0,
    "dtypes": 0,
    "version": 0,
    "faults": 0,
    "formats": 1,
    "tokenizer": 1,
    "output": 1,
    "md5state": 0,
    "md5lanes": 0,
    "ahead": 0,
    "resume": 1,
    "verify": 1,
    "verify_remote": 1,
    "spec": 2,
    "plan": 2,
    "options": 2,
    "families": 3,
    "execute": 4,
    "reverse": 4,
    "detect": 4,
    "routes": 5,
    "describe": 6,
    "cli": 6,
    "demo": 6,
    "__main__": 6,
    "__init__": 6,
    "testing": 6,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.joinpath(*name.split(".")) / "__init__.py").is_file() if name != "__init__" else True


def _exists(name: str) -> bool:
    if name == "__init__":
        return True
    base = PACKAGE.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, in any form."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    if me == "__init__":
        package = ""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "llama_convert" or alias.name.startswith("llama_convert."):
                    found.add(alias.name.removeprefix("llama_convert").lstrip(".") or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "llama_convert" or node.module.startswith("llama_convert.")):
                target = node.module.removeprefix("llama_convert").lstrip(".")
            else:
                continue
            target = target or "__init__"
            subs = [f"{target}.{a.name}" if target != "__init__" else a.name for a in node.names]
            modules = [s for s in subs if _exists(s) and not (_is_package(target) and s == target)]
            found.update(modules)
            if len(modules) < len(subs):
                found.add(target)
    found.discard(me)
    return {f for f in found if _exists(f)}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(name: str) -> int:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{name} has no layer in LAYERS; add it")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_every_import_form(tmp_path: Path) -> None:
    # The checks below are only as good as the edges found: lazy and TYPE_CHECKING imports count.
    graph = _graph()
    assert "families.base" in graph["spec"] or "spec" in graph["families.base"]
    assert any(m.startswith("routes") for m in graph["cli"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" ⇄ ".join(c) for c in cycles)


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("upper", ["families", "routes", "execute", "reverse", "detect", "plan", "spec", "options"])
def test_formats_know_no_family_or_route(upper: str) -> None:
    graph = _graph()
    offenders = [m for m, targets in graph.items() if m.startswith("formats") for t in targets if t.startswith(upper)]
    assert not offenders, f"formats modules import {upper}: {offenders}"


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500
    }
    assert not big, f"modules over 500 lines: {big}"

"""The import graph of harness, its built-in backends and scenarios, read from the source.

``grimp.build_graph("harness")`` walks only ``harness/``; the built-in plugins install
as ``harness.backends`` and ``harness.scenarios`` from the top-level ``backends/`` and
``scenarios/`` folders, so the graph is built here from every file's syntax tree
(imports inside functions and under ``TYPE_CHECKING`` included: a cycle hidden in a
function is still a cycle) and handed to grimp for its queries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package name it installs as.
PACKAGES = {"harness": "harness", "backends": "harness.backends", "scenarios": "harness.scenarios"}


def _module_name(path: Path, folder: Path, package: str) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int, str]]:
    """(imported name, line, text) for every import of a harness module in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                found.append((f"{origin}.{alias.name}", node.lineno, f"from {origin} import {alias.name}"))
                found.append((origin, node.lineno, f"from {origin} import {alias.name}"))
    return [f for f in found if f[0] == "harness" or f[0].startswith("harness.")]


def build() -> grimp.ImportGraph:
    """Every harness module and the imports between them."""
    graph = grimp.ImportGraph()
    sources: dict[str, tuple[Path, bool]] = {}
    for folder_name, package in PACKAGES.items():
        folder = ROOT / folder_name
        for path in sorted(folder.rglob("*.py")):
            sources[_module_name(path, folder, package)] = (path, path.name == "__init__.py")
    for module in sources:
        graph.add_module(module)
    for module, (path, is_package) in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        seen = set()
        for name, line, text in _imports(tree, module, is_package):
            # ``from harness import errors`` imports the module harness.errors, not the package
            target = name if name in sources else None
            if target is None or target == module or (target, line) in seen:
                continue
            if name == "harness" and any(n != "harness" and n in sources for n, ln, _ in _imports(tree, module, is_package) if ln == line):
                continue
            seen.add((target, line))
            graph.add_import(importer=module, imported=target, line_number=line, line_contents=text)
    return graph


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found

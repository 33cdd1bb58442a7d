"""What `make lint` checks of llmgen's imports beyond import-linter's contracts (pyproject.toml):

- no import cycle between any two modules, a package's __init__ with its own modules included;
- no module imports another module's underscore name (`from llmgen.x import _helper`, or `x._helper` of an
  imported llmgen module): a name another module needs is public, and lives where it belongs.

Prints each problem and exits 1, or prints a summary and exits 0.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parent.parent / "src"


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in edges[node]:
                if child in on_stack:
                    low[node] = min(low[node], low[child])
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


def private_imports(path: Path, module: str) -> list[str]:
    """`from llmgen.other import _name`, and `alias._name` where alias is an imported llmgen module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmgen"):
            for alias in node.names:
                if alias.name.startswith("_") and node.module != module:
                    problems.append(f"{path.relative_to(SRC)}:{node.lineno}: imports {node.module}.{alias.name}")
                if not alias.name.startswith("_"):
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("llmgen")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            problems.append(f"{path.relative_to(SRC)}:{node.lineno}: uses {node.value.id}.{node.attr}")
    return problems


def main() -> int:
    sys.path.insert(0, str(SRC))
    graph = grimp.build_graph("llmgen", cache_dir=None)
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for path in sorted((SRC / "llmgen").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        problems += private_imports(path, module)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"{len(graph.modules)} modules: no import cycles, no underscore names imported across modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())

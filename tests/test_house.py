"""The house keeps its shape: no import cycles, no module reaching into another's privates.

Read from the source with ``ast`` (lazy imports inside functions count too): what two
modules share is a documented internal name without an underscore.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medeq"

#: Private names still shared, to be given public names where the compiled engine is
#: restructured: the caching decorator of medeq._jit.
KNOWN = {("_clahe_kernels", "_jit", "_jit")}


def _modules() -> dict[str, ast.Module]:
    return {f.stem: ast.parse(f.read_text(), str(f)) for f in sorted(SRC.glob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """The medeq modules a module imports (``from . import x``, ``from .x import y``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(tree) & set(modules) for name, tree in modules.items()}
    cycles = []

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                cycles.append(" -> ".join([*path, nxt]))
            elif nxt not in path and nxt > start:  # each cycle once, from its least module
                visit(start, nxt, [*path, nxt])

    for name in graph:
        visit(name, name, [name])
    assert cycles == []


def test_no_module_uses_another_modules_private_names() -> None:
    modules = _modules()
    uses = set()
    for name, tree in modules.items():
        aliases: dict[str, str] = {}  # local name -> medeq module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for alias in node.names:
                    if node.module is None:
                        aliases[alias.asname or alias.name] = alias.name
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        uses.add((name, node.module, alias.name))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                uses.add((name, aliases[node.value.id], node.attr))
    assert uses - KNOWN == set()
    assert uses >= KNOWN  # a debt paid is taken off the list


def test_only_the_reader_touches_an_images_private_state() -> None:
    # DicomImage keeps where its header ends, its file's version and its pixels in
    # private attributes; other modules use its public methods (place, keep_stored, ...).
    private = {"_place", "_stored", "_version", "_source", "_dataset"}
    found = []
    for name, tree in _modules().items():
        if name == "reader":
            continue
        for node in ast.walk(tree):
            own = isinstance(node, ast.Attribute) and (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            )
            if isinstance(node, ast.Attribute) and node.attr in private and not own:
                found.append(f"{name}.py:{node.lineno} {ast.unparse(node)}")
            if (  # getattr(image, "_place") is the same reach
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in private
            ):
                found.append(f"{name}.py:{node.lineno} {ast.unparse(node)}")
    assert found == []

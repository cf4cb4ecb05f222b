"""The shape of the package: no import cycles, and Router's insides stay its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import routing_db

PACKAGE = Path(routing_db.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level(tree: ast.Module, typing: bool) -> list[ast.stmt]:
    """Module-level statements; with ``typing``, those under TYPE_CHECKING too."""
    body: list[ast.stmt] = []
    for node in tree.body:
        body.append(node)
        checking = getattr(getattr(node, "test", None), "id", "") == "TYPE_CHECKING"
        if typing and isinstance(node, ast.If) and checking:
            body.extend(node.body)
    return body


def _imports(path: Path, *, typing: bool = False) -> set[str]:
    """routing_db modules ``path`` imports at its top (``typing``: for types too)."""
    tree = ast.parse(path.read_text())
    package = _module(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found: set[str] = set()
    for node in _top_level(tree, typing):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            if node.module:
                found.add(f"{base}.{node.module}")
            else:  # from . import _module
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "routing_db"
        ):
            found.add(str(node.module))
    return found


def test_the_modules_import_each_other_without_cycles() -> None:
    graph = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


# The router: its two faces, what they share, and how they are built.
ROUTER_MODULES = {
    "routing_db._router",
    "routing_db._router_base",
    "routing_db._router_constructors",
    "routing_db._sync_router",
}


def test_the_routers_collaborators_do_not_know_the_router() -> None:
    """They get the Topology (or less), so Router can change without them."""
    collaborators = "_monitor _starvation _observe _topology _replicas _health"
    for name in f"{collaborators} _engines _hooks _sa_compat _session".split():
        imported = _imports(PACKAGE / f"{name}.py", typing=True)
        assert not imported & ROUTER_MODULES, name


def test_no_other_module_touches_the_routers_private_attributes() -> None:
    # Every self._name in the router's modules: its state and helpers.
    private = {
        node.attr
        for module in ROUTER_MODULES
        for node in ast.walk(
            ast.parse((PACKAGE / f"{module.split('.')[1]}.py").read_text())
        )
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    assert {"_monitor", "_hooks", "_detector"} <= private
    for path in PACKAGE.rglob("*.py"):
        if f"routing_db.{path.stem}" in ROUTER_MODULES:
            continue
        # Attributes of other objects (a module's own self._x is its own).
        used = {
            node.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        }
        assert not used & private, (path, used & private)


def test_importing_routing_db_imports_no_integration() -> None:
    """The core never imports an edge's library: each comes with its extra."""
    code = (
        "import sys, routing_db; "
        "print(sorted(m for m in ('redis', 'sqlmodel', 'opentelemetry', 'flask', "
        "'prometheus_client', 'fastapi', 'starlette', 'werkzeug') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"

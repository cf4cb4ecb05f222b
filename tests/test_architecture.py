"""The shape of the package: layers that point down, no import circles (every
import counted: function-local and TYPE_CHECKING too), no subpackage reaching
into another's private names, and Router's insides its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import routing_db

PACKAGE = Path(routing_db.__file__).parent

# Bottom to top: a unit (a subpackage, or a module at the top of routing_db)
# imports only units of lower layers, and its own modules. The docs'
# architecture page draws the same map.
LAYERS: list[set[str]] = [
    {"_exceptions", "_compat"},
    {"_retry", "_events"},
    {"_decide"},
    {"_causal"},
    {"_backends", "_options"},
    {"_engines"},
    {"_bounds", "_replicas"},
    {"_topology"},
    {"_monitor"},
    # The causal store a settings URL names.
    {"redis"},
    # The router's from_settings() builds from settings: the only edge the
    # core reaches, and only from the router.
    {"_settings"},
    {"_router"},
    {"_session"},
    # The public surface and the command line, over everything.
    {"routing_db", "__main__", "_cli", "asgi", "wsgi", "fastapi", "metrics"}
    | {"otel", "sqlmodel", "loadtest", "testing"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): path for path in PACKAGE.rglob("*.py")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(module: str) -> Iterator[tuple[str, ast.ImportFrom | ast.Import]]:
    """Every routing_db module ``module`` imports, wherever the import is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(
                    [*parts[: len(parts) - node.level + 1], *filter(None, [base])]
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target, node  # type: ignore[misc]
                break


def test_there_are_no_import_circles() -> None:
    graph = {module: {t for t, _ in _imports(module)} for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_every_unit_has_a_layer() -> None:
    assert {_unit(module) for module in MODULES} == set(LAYER)


def test_layers_point_down() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module in MODULES
        for target, _ in _imports(module)
        if _unit(target) != _unit(module)
        and LAYER[_unit(target)] >= LAYER[_unit(module)]
        and LAYER[_unit(module)] < len(LAYERS) - 1  # the surface: any order
    )
    assert not upward


def test_no_unit_imports_anothers_private_names() -> None:
    reaching = sorted(
        f"{module} imports {alias.name} from {target}"
        for module in MODULES
        for target, node in _imports(module)
        if isinstance(node, ast.ImportFrom) and _unit(target) != _unit(module)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
        and f"{target}.{alias.name}" not in MODULES  # a module, not a name
    )  # fmt: skip
    assert not reaching


def test_the_top_of_the_package_is_small() -> None:
    top = [path for path in PACKAGE.glob("*.py")]
    assert len(top) <= 20, sorted(path.name for path in top)


# The router: its two faces and what they share.
ROUTER_MODULES = {
    "routing_db._router.base",
    "routing_db._router.router",
    "routing_db._router.sync_router",
}


def test_no_other_module_touches_the_routers_private_attributes() -> None:
    # Every self._name in the router's modules: its state and helpers.
    private = {
        node.attr
        for module in ROUTER_MODULES
        for node in ast.walk(ast.parse(MODULES[module].read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    assert {"_monitor", "_hooks", "_detector"} <= private
    for module, path in MODULES.items():
        if module in ROUTER_MODULES:
            continue
        # Attributes of other objects (a module's own self._x is its own).
        used = {
            node.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        }
        assert not used & private, (module, used & private)


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


def test_log_messages_do_not_repeat_the_logger_s_name() -> None:
    # The logger is "routing_db": a format with %(name)s would print it twice.
    repeated = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logger"
                and node.args
            ):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and str(first.value).startswith(
                "routing_db"
            ):
                repeated.append(f"{module}:{node.lineno}")
    assert not repeated

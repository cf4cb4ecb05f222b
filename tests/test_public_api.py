"""The public names of the design exist, and nothing private leaks into them."""

import importlib
import pkgutil
import re

import pytest

import routing_db

DESIGN_NAMES = {
    "Router",
    "RoutingSession",
    "routing_sessionmaker",
    "read_only",
    "use_writer",
    "RoutingSettings",
    "RoutingDBError",
    "ReadOnlyViolation",
    "ConfigurationError",
    "NoReplicaAvailable",
}


def test_design_names_are_exported() -> None:
    assert set(routing_db.__all__) >= DESIGN_NAMES
    for name in routing_db.__all__:
        assert getattr(routing_db, name) is not None


def test_no_private_name_is_public() -> None:
    assert not [name for name in routing_db.__all__ if name.startswith("_")]


@pytest.mark.parametrize(
    "module",
    sorted(
        m.name
        for m in pkgutil.walk_packages(routing_db.__path__, "routing_db.")
        if m.name != "routing_db.__main__"
    ),
)
def test_every_module_declares_all(module: str) -> None:
    mod = importlib.import_module(module)
    assert isinstance(mod.__all__, list)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"


def test_implementation_modules_are_private() -> None:
    public = {
        m.name
        for m in pkgutil.iter_modules(routing_db.__path__)
        if not m.name.startswith("_")
    }
    # The edges users import by name; everything else is private.
    edges = {"testing", "loadtest", "metrics", "asgi", "wsgi", "fastapi", "otel"}
    edges |= {"redis", "sqlmodel"}
    assert public == edges


def test_exception_tree() -> None:
    from sqlalchemy.exc import DBAPIError, InvalidRequestError

    assert issubclass(routing_db.ConfigurationError, routing_db.RoutingDBError)
    assert issubclass(routing_db.ConfigurationError, ValueError)
    assert issubclass(routing_db.ReadOnlyViolation, routing_db.RoutingDBError)
    assert issubclass(routing_db.ReadOnlyViolation, InvalidRequestError)
    assert issubclass(routing_db.NoReplicaAvailable, routing_db.RoutingDBError)
    assert issubclass(routing_db.NoReplicaAvailable, ConnectionError)
    assert issubclass(routing_db.CommitOutcomeUnknown, routing_db.RoutingDBError)
    assert issubclass(routing_db.CommitOutcomeUnknown, DBAPIError)


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("routing_db").joinpath("py.typed").is_file()


def test_each_integration_extra_brings_only_its_own_package() -> None:
    """``pip install routing_db[sqlmodel]`` does not pull Redis, and so on."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads(
        (Path(__file__).parent.parent / "pyproject.toml").read_text()
    )["project"]
    extras = project["optional-dependencies"]
    own = {
        "sqlmodel": "sqlmodel",
        "redis": "redis",
        "otel": "opentelemetry-api",
        "psycopg2": "psycopg2-binary",
        "pymysql": "pymysql",
        "flask": "flask",
    }
    for extra, package in own.items():
        names = [re.split(r"[<>=\[ ]", spec)[0] for spec in extras[extra]]
        assert names == [package], (extra, names)
    # Nor does the core: none of them is a dependency of routing_db itself.
    core = {re.split(r"[<>=\[ ]", spec)[0] for spec in project["dependencies"]}
    assert not core & set(own.values())

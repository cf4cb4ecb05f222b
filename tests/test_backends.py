"""The backend registry: every dialect and driver routing_db accepts has one
backend that knows it (no server needed)."""

from __future__ import annotations

import importlib.util

import pytest

from routing_db import ConfigurationError
from routing_db._backends.registry import BACKENDS, backend_for, backend_of
from routing_db._engines.make import check_url


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_each_backend_accepts_its_drivers_and_suggests_one(name: str) -> None:
    backend = BACKENDS[name]
    assert backend_for(name) is backend
    assert backend.async_default in backend.async_drivers
    assert backend.sync_default in backend.sync_drivers
    for driver in backend.async_drivers:
        assert check_url(f"{name}+{driver}://h/db", field="u").get_driver_name()
    for driver in backend.sync_drivers:
        check_url(f"{name}+{driver}://h/db", field="u", sync=True)
    sync_only = sorted(backend.sync_drivers - backend.async_drivers)[0]
    with pytest.raises(ConfigurationError, match=f"{name}\\+{backend.async_default}"):
        check_url(f"{name}+{sync_only}://h/db", field="u")


def test_an_unknown_dialect_has_no_backend() -> None:
    assert backend_for("oracle") is None
    with pytest.raises(ConfigurationError, match="unsupported database 'oracle'"):
        check_url("oracle+oracledb://h/db", field="u")


@pytest.mark.parametrize(
    ("name", "positions"),
    [("postgresql", True), ("mariadb", True), ("mysql", False), ("sqlite", False)],
)
def test_positions_are_known_where_routing_db_can_compare_them(
    name: str, positions: bool
) -> None:
    assert BACKENDS[name].has_positions is positions


@pytest.mark.parametrize(
    ("name", "driver"),
    [(n, d) for n, b in sorted(BACKENDS.items()) for d in sorted(b.creators)],
)
def test_each_asyncio_driver_s_connect_is_found(name: str, driver: str) -> None:
    package = "psycopg" if driver.startswith("psycopg") else driver
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    assert callable(BACKENDS[name].creators[driver]())


def test_a_connection_of_no_known_driver_is_treated_as_having_no_socket() -> None:
    class Unknown:
        pass

    backend = backend_of(Unknown())
    assert backend.socket_of(Unknown()) is None
    assert backend.session_id(Unknown()) is None
    assert not backend.says_closed(Unknown())


def test_the_networked_backends_cancel_and_refuse_writes_on_replicas() -> None:
    for name in ("postgresql", "mysql", "mariadb"):
        backend = BACKENDS[name]
        assert backend.cancel_sql is not None and "{}" in backend.cancel_sql
        assert backend.standby_sql and backend.takes_writes_sql
        assert backend.connect_timeout_args(backend.async_default, 3.0)
    assert BACKENDS["sqlite"].connect_timeout_args("aiosqlite", 3.0) == {}

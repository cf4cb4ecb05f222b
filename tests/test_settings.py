"""RoutingSettings and Router construction: clear typed errors, no secrets shown."""

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from routing_db import ConfigurationError, Router, RoutingSettings
from routing_db._options import BY_NAME

from .routers import RouterMaker

SECRET = "s3cr3t-pw"
WRITER = f"postgresql+asyncpg://app:{SECRET}@db.example:5432/app"
REPLICA = f"postgresql+asyncpg://app:{SECRET}@replica.example:5432/app"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ROUTING_DB_") and not name.startswith("ROUTING_DB_TEST_"):
            monkeypatch.delenv(name)


def test_from_arguments() -> None:
    s = RoutingSettings(writer_url=WRITER, replica_urls=[REPLICA], pool_size=3)
    kwargs = s.router_kwargs()
    assert kwargs["writer_url"] == WRITER
    assert kwargs["replica_urls"] == [REPLICA]
    assert kwargs["pool_size"] == 3
    assert "pool_pre_ping" not in kwargs  # the router's idle check by default
    assert kwargs["router_options"]["default_role"] == "writer"
    assert kwargs["router_options"]["fallback_to_writer"] is True


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", WRITER)
    monkeypatch.setenv(
        "ROUTING_DB_REPLICA_URLS", f"{REPLICA}, {REPLICA.replace('replica', 'r2')}"
    )
    monkeypatch.setenv("ROUTING_DB_REPLICA_POOL_SIZE", "7")
    monkeypatch.setenv("ROUTING_DB_DEFAULT_ROLE", "auto")
    monkeypatch.setenv("ROUTING_DB_FALLBACK_TO_WRITER", "false")
    s = RoutingSettings()
    kwargs = s.router_kwargs()
    assert len(kwargs["replica_urls"]) == 2
    assert kwargs["replica_kwargs"] == {"pool_size": 7}
    assert kwargs["writer_kwargs"] == {}
    assert kwargs["router_options"]["default_role"] == "auto"
    assert kwargs["router_options"]["fallback_to_writer"] is False


def test_resilience_options_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "WRITER_URL": WRITER,
        "REPLICA_URLS": f"{REPLICA},{REPLICA.replace('replica', 'r2')}",
        "POLICY": "weighted",
        "REPLICA_WEIGHTS": "3, 1",
        "MAX_LAG_BYTES": "1048576",
        "MAX_LAG_SECONDS": "2.5",
        "MONITOR_INTERVAL": "0.25",
        "EJECT_AFTER": "3",
        "MAX_WRITER_FALLBACKS": "4",
        "STICKY_SECONDS": "1",
        "CAUSAL_WAIT_TIMEOUT": "0.5",
        "RETRY_ATTEMPTS": "5",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"ROUTING_DB_{name}", value)
    options = RoutingSettings().router_kwargs()["router_options"]
    assert options["policy"] == "weighted"
    assert options["weights"] == [3.0, 1.0]
    assert options["max_lag_bytes"] == 1048576
    assert options["max_lag_seconds"] == 2.5
    assert options["monitor_interval"] == 0.25
    assert options["eject_after"] == 3
    assert options["max_writer_fallbacks"] == 4
    assert options["sticky_seconds"] == 1.0
    assert options["causal_wait_timeout"] == 0.5
    assert options["retry"].attempts == 5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("policy", "fastest"),
        ("max_lag_bytes", -1),
        ("monitor_interval", 0),
        ("eject_after", 0),
        ("retry_attempts", 0),
        ("replica_weights", "1,x"),
    ],
)
def test_bad_resilience_options(name: str, value: object) -> None:
    with pytest.raises(ValidationError, match=name):
        RoutingSettings(writer_url=WRITER, **{name: value})


def test_empty_replica_list_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", WRITER)
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", "")
    assert RoutingSettings().replica_urls == []


def test_secrets_are_not_in_repr() -> None:
    s = RoutingSettings(writer_url=WRITER, replica_urls=[REPLICA])
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in s.model_dump_json()


def _error_text(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    err = excinfo.value
    text = str(err) + repr(err)
    if isinstance(err, ValidationError):
        text += str(err.errors()) + err.json()
    return text


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        ({}, "writer_url is required"),
        ({"writer_url": ""}, "writer_url"),
        ({"writer_url": f"not a url {SECRET}"}, "not a valid database URL"),
        (
            {"writer_url": f"postgresql+psycopg2://u:{SECRET}@h/db"},
            "postgresql+asyncpg",
        ),
        ({"writer_url": f"postgresql+pg8000://u:{SECRET}@h/db"}, "asyncio driver"),
        (
            {"writer_url": f"postgresql+pyscopg://u:{SECRET}@h/db"},
            "unknown driver 'postgresql+pyscopg'; use postgresql+asyncpg",
        ),
        ({"writer_url": f"mysql://u:{SECRET}@h/db"}, "mysql+aiomysql"),
        ({"writer_url": f"mysql+pymysql://u:{SECRET}@h/db"}, "mysql+aiomysql"),
        ({"writer_url": "sqlite:///x.db"}, "sqlite+aiosqlite"),
        ({"writer_url": f"oracle+oracledb://u:{SECRET}@h/db"}, "unsupported database"),
        (
            {
                "writer_url": WRITER,
                "replica_urls": [f"postgresql+psycopg2://u:{SECRET}@h/db"],
            },
            "replica_urls[0]",
        ),
        ({"writer_url": WRITER, "pool_size": -1}, "pool_size"),
        ({"writer_url": WRITER, "max_overflow": -5}, "max_overflow"),
        ({"writer_url": WRITER, "replica_pool_size": -1}, "replica_pool_size"),
        ({"writer_url": WRITER, "pool_timeout": 0}, "pool_timeout"),
        ({"writer_url": WRITER, "default_role": "replica"}, "default_role"),
        ({"writer_url": WRITER, "no_such_option": 1}, "no_such_option"),
        ({"cluster_urls": [WRITER], "writer_url": WRITER}, "cluster_urls replaces"),
        ({"cluster_urls": [WRITER], "replica_urls": [REPLICA]}, "cluster_urls repl"),
        ({"cluster_urls": [WRITER, "nonsense"]}, "cluster_urls[1]"),
        ({"cluster_urls": [WRITER], "cluster_names": ["a", "b"]}, "one name per"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], expect: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        RoutingSettings(**kwargs)
    text = _error_text(excinfo)
    assert expect in text
    assert SECRET not in text


def test_bad_environment_does_not_echo_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ROUTING_DB_WRITER_URL", f"postgresql+psycopg2://u:{SECRET}@h/db"
    )
    with pytest.raises(ValidationError) as excinfo:
        RoutingSettings()
    assert SECRET not in _error_text(excinfo)
    assert "postgresql+asyncpg" in _error_text(excinfo)


def test_bare_postgresql_url_is_accepted_when_it_means_psycopg3() -> None:
    import sqlalchemy

    if sqlalchemy.__version__.startswith("2.0"):
        with pytest.raises(ValidationError, match="asyncio driver"):
            RoutingSettings(writer_url="postgresql://u@h/db")
    else:
        assert RoutingSettings(writer_url="postgresql://u@h/db").writer_url is not None


@pytest.mark.parametrize(
    ("call", "expect"),
    [
        (lambda: Router.from_urls(""), "writer_url is required"),
        (lambda: Router.from_urls(f"garbage {SECRET}"), "not a valid database URL"),
        (lambda: Router.from_urls(f"postgresql+psycopg2://u:{SECRET}@h/db"), "asyncpg"),
        (lambda: Router.from_urls(WRITER, REPLICA), "must be a list"),
        (lambda: Router.from_urls(WRITER, default_role="auto!"), "default_role"),
        (lambda: Router.from_urls(WRITER, [REPLICA], weights=[1, 2]), "weights"),
        (lambda: Router.from_urls(WRITER, policy="fastest"), "unknown policy"),
        (lambda: Router.from_urls(WRITER, monitor_interval=0), "monitor_interval"),
        (lambda: Router.from_urls(WRITER, eject_after=0), "eject_after"),
        (lambda: Router.from_urls(WRITER, max_lag_bytes=-1), "max_lag_bytes"),
        (lambda: Router.from_urls(WRITER, sticky_seconds=-1), "sticky_seconds"),
        (
            lambda: Router.from_urls(WRITER, no_such_engine_option=1),
            "no_such_engine_option",
        ),
        (lambda: Router.from_urls(WRITER, [REPLICA], replica_names=[]), "one name"),
        (lambda: Router.from_urls(WRITER, [REPLICA], replica_names="r"), "one name"),
        (lambda: Router.from_urls(WRITER, writer_name=" "), "cannot be empty"),
        (
            lambda: Router.from_urls(
                WRITER, [REPLICA, REPLICA], replica_names=["eu", "eu"]
            ),
            "must be unique",
        ),
        (
            lambda: Router.from_urls(
                WRITER, [REPLICA], writer_name="db", replica_names=["db"]
            ),
            "must be unique",
        ),
    ],
)
def test_bad_router_arguments(call: object, expect: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        call()  # type: ignore[operator]
    text = _error_text(excinfo)
    assert expect in text
    assert SECRET not in text
    assert excinfo.value.__cause__ is None or SECRET not in str(excinfo.value.__cause__)


def test_router_rejects_wrong_engines(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    writer = create_async_engine(url)
    with pytest.raises(ConfigurationError, match="needs a writer"):
        Router(writer=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        Router(writer=create_engine(f"sqlite:///{tmp_path / 'y.db'}"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot also be a replica"):
        Router(writer=writer, replicas=[writer])
    other = create_async_engine(url)
    with pytest.raises(ConfigurationError, match="listed twice"):
        Router(writer=writer, replicas=[other, other])


async def test_router_repr_and_status_hide_passwords(make_router: RouterMaker) -> None:
    router = make_router(WRITER, [REPLICA], pool_size=2)
    for text in (repr(router), str(router), str(router.status())):
        assert SECRET not in text
        assert "***" in text or "db.example" in text
    import json

    status = json.loads(json.dumps(router.status()))
    assert [e["role"] for e in status] == ["writer", "replica"]
    assert status[0]["name"] == "db.example:5432/app"
    assert status[0]["pool"]["size"] == 2
    assert status[0]["pool"]["checked_out"] == 0
    # An idle pool has no overflow (SQLAlchemy counts it as -2 here).
    assert router.writer.sync_engine.pool.overflow() == -2  # type: ignore[attr-defined]
    assert status[0]["pool"]["overflow"] == 0
    assert status[0]["pool"]["capacity"] == 2 + 10  # SQLAlchemy's max_overflow
    # Pooled connections are checked by the idle check, not pre-ping.
    assert router.writer.pool._pre_ping is False
    assert router.ping_after_idle == 1.0


async def test_engines_named_by_the_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", WRITER)
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", f"{REPLICA},{REPLICA}")
    monkeypatch.setenv("ROUTING_DB_WRITER_NAME", "primary")
    monkeypatch.setenv("ROUTING_DB_REPLICA_NAMES", "eu-1, eu-2")
    router = Router.from_settings()
    try:
        assert [row["name"] for row in router.status()] == ["primary", "eu-1", "eu-2"]
        assert router.replicas[1].sync_engine.logging_name == "eu-2"
    finally:
        await router.dispose()
    # Engines made by hand carry SQLAlchemy's own name, logging_name; unnamed
    # ones keep host:port/db (the same URL twice gets a #2).
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    router = Router(
        writer=create_async_engine(url, logging_name="main"),
        replicas=[create_async_engine(url), create_async_engine(url)],
        require_standby=False,
    )
    try:
        names = [row["name"] for row in router.status()]
        assert names == [
            "main",
            f"sqlite:{tmp_path / 'x.db'}",
            f"sqlite:{tmp_path / 'x.db'}#2",
        ]
    finally:
        await router.dispose()
    monkeypatch.setenv("ROUTING_DB_REPLICA_NAMES", "eu-1")
    with pytest.raises(ValidationError, match="one name per replica"):
        RoutingSettings()


async def test_per_role_engine_options(make_router: RouterMaker) -> None:
    router = make_router(
        WRITER,
        [REPLICA],
        pool_size=4,
        replica_kwargs={"pool_size": 9, "pool_pre_ping": False},
    )
    assert router.writer.pool.size() == 4  # type: ignore[attr-defined]
    assert router.replicas[0].pool.size() == 9  # type: ignore[attr-defined]
    assert router.replicas[0].pool._pre_ping is False


async def test_from_settings_uses_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    make_router: RouterMaker,
) -> None:
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", WRITER)
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", REPLICA)
    monkeypatch.setenv("ROUTING_DB_WRITER_POOL_SIZE", "3")
    monkeypatch.setenv("ROUTING_DB_DEFAULT_ROLE", "auto")
    router = make_router.keep(Router.from_settings())
    assert router.writer.pool.size() == 3  # type: ignore[attr-defined]
    assert router.replicas[0].pool.size() == 5  # type: ignore[attr-defined]
    assert router.default_role == "auto"


async def test_cluster_urls_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    make_router: RouterMaker,
) -> None:
    monkeypatch.setenv("ROUTING_DB_CLUSTER_URLS", f"{WRITER}, {REPLICA}")
    monkeypatch.setenv("ROUTING_DB_CLUSTER_NAMES", "a,b")
    monkeypatch.setenv("ROUTING_DB_WRITER_POOL_SIZE", "3")
    monkeypatch.setenv("ROUTING_DB_MONITOR_INTERVAL", "0.2")
    router = make_router.keep(Router.from_settings())
    assert router.topology.discovery is not None
    assert [row["name"] for row in router.status()] == ["writer", "a", "b"]
    assert router.writer.pool.size() == 3  # type: ignore[attr-defined]
    assert router.replicas[1].pool.size() == 5  # type: ignore[attr-defined]
    assert router.health.monitor_interval == 0.2
    assert SECRET not in repr(router)


async def test_pgbouncer_from_environment(
    monkeypatch: pytest.MonkeyPatch, make_router: RouterMaker
) -> None:
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", "postgresql+asyncpg://u:pw@h1/db")
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", "postgresql+psycopg://u:pw@h2/db")
    monkeypatch.setenv("ROUTING_DB_PGBOUNCER", "true")
    router = make_router.keep(Router.from_settings())
    # asyncpg: SQLAlchemy's own statement cache off (a URL setting); the
    # driver's settings are connect arguments, tested on a real PgBouncer.
    assert router.writer.url.query["prepared_statement_cache_size"] == "0"
    assert "prepared_statement_cache_size" not in router.replicas[0].url.query


def test_a_missing_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every accepted driver is installed here: hide one as if it were not.
    monkeypatch.setitem(sys.modules, "asyncmy", None)
    with pytest.raises(ConfigurationError, match="pip install asyncmy") as caught:
        Router.from_urls(f"mysql+asyncmy://u:{SECRET}@h/db")
    assert SECRET not in str(caught.value)


async def test_lag_limits_are_on_by_default_and_off_by_name(
    monkeypatch: pytest.MonkeyPatch,
    make_router: RouterMaker,
) -> None:
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", WRITER)
    router = Router.from_settings()
    try:
        assert router.health.max_lag_bytes == 16 * 2**20
        assert router.health.max_lag_seconds == 60.0
    finally:
        await router.dispose()
    monkeypatch.setenv("ROUTING_DB_MAX_LAG_BYTES", "off")
    monkeypatch.setenv("ROUTING_DB_MAX_LAG_SECONDS", "off")
    router = make_router.keep(Router.from_settings())
    assert router.health.max_lag_bytes is None
    assert router.health.max_lag_seconds is None


def test_every_setting_is_described() -> None:
    """The configuration page's description column has no hole: a field says
    what it does, or is a router option (described in the option table), or
    a writer_/replica_ override of a described field."""
    fields = RoutingSettings.model_fields
    for name, field in fields.items():
        role, _, base = name.partition("_")
        override = role in ("writer", "replica") and base in fields
        assert field.description or name in BY_NAME or override, name


@pytest.mark.parametrize("sync", [False, True])
async def test_in_memory_sqlite_from_settings(
    monkeypatch: pytest.MonkeyPatch, make_router: RouterMaker, sync: bool
) -> None:
    """The zero-setup URL works from the environment as from ``from_urls``:
    pool sizes left at their defaults are not forced on a pool without them."""
    from sqlalchemy import text

    from routing_db import SyncRouter, SyncRoutingSettings

    monkeypatch.setenv(
        "ROUTING_DB_WRITER_URL", "sqlite://" if sync else "sqlite+aiosqlite://"
    )
    if sync:
        sync_router = make_router.keep(SyncRouter.from_settings(SyncRoutingSettings()))
        with sync_router.writer.connect() as connection:
            assert connection.execute(text("SELECT 41 + 1")).scalar() == 42
        return
    router = make_router.keep(Router.from_settings())
    async with router.writer.connect() as connection:
        assert (await connection.execute(text("SELECT 41 + 1"))).scalar() == 42
    # Set, a pool size still reaches the engine (and says where it went wrong).
    monkeypatch.setenv("ROUTING_DB_POOL_SIZE", "3")
    with pytest.raises(ConfigurationError, match="writer_url: Invalid argument"):
        Router.from_settings()

"""Router options: the groups, the keywords that mirror them, and the hooks."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from routing_db import (
    ConfigurationError,
    ConsistencyOptions,
    HealthOptions,
    ObservabilityOptions,
    Router,
    RoutingSettings,
    read_only,
    routing_sessionmaker,
)
from routing_db._options import BY_NAME, OPTIONS, ROUTER_KEYWORDS

from .routers import RouterMaker

GROUPS = {
    "health": HealthOptions,
    "consistency": ConsistencyOptions,
    "observability": ObservabilityOptions,
}


def _keywords() -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(Router.__init__).parameters
    return {name: p for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}


def test_the_option_table_is_the_signature() -> None:
    """Router's keywords are the declared options, with their defaults."""
    keywords = _keywords()
    assert set(keywords) - {"writer", "replicas"} == ROUTER_KEYWORDS
    assert set(GROUPS) <= ROUTER_KEYWORDS
    for option in OPTIONS:
        if option.keyword:
            assert keywords[option.name].default == option.default, option.name


def test_each_group_field_is_a_declared_option() -> None:
    for group, cls in GROUPS.items():
        for field in dataclasses.fields(cls):
            option = BY_NAME[field.name]
            assert (option.group, field.default) == (group, option.default)
    fields = {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)}
    routers = {option.name for option in OPTIONS if option.group == "router"}
    assert fields | routers == set(BY_NAME)


def test_each_settings_field_of_an_option_has_its_default() -> None:
    fields = RoutingSettings.model_fields
    for option in OPTIONS:
        if option.name in {"weights", "retry", "causal_store"} or not option.keyword:
            assert option.name not in fields
            continue
        assert fields[option.name].default == option.default, option.name


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.minimum is not None], ids=lambda o: o.name
)
@pytest.mark.parametrize("value", [0, -1])
def test_zero_and_negatives_get_one_answer_everywhere(option: Any, value: int) -> None:
    """The router, its group and the settings all accept the value, or all
    refuse it with the same words (ROUTING_DB_CONNECT_TIMEOUT=0 once passed
    the settings and failed when the router was built)."""
    answers: list[str | None] = []

    def answer(make: Any) -> None:
        try:
            make()
        except (ConfigurationError, ValidationError) as error:
            answers.append(option.rule() if option.rule() in str(error) else str(error))
        else:
            answers.append(None)

    answer(lambda: option.check(value))
    if option.group != "router":
        group = GROUPS[option.group]
        answer(lambda: group(**{option.name: value}))
    if option.name in RoutingSettings.model_fields:
        answer(
            lambda: RoutingSettings(
                writer_url="postgresql+asyncpg://u@h/db", **{option.name: value}
            )
        )
    assert len(answers) >= 2
    assert len(set(answers)) == 1, answers
    if value < 0:
        assert answers[0] == option.rule()


def test_connect_timeout_zero_is_refused_by_the_settings() -> None:
    with pytest.raises(ValidationError, match=r"connect_timeout must be > 0 seconds"):
        RoutingSettings(writer_url="postgresql+asyncpg://u@h/db", connect_timeout=0)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_keyword_of_a_group_has_the_fields_default(group: str) -> None:
    keywords = _keywords()
    mirrored = [f for f in dataclasses.fields(GROUPS[group]) if f.name in keywords]
    assert mirrored, group
    for field in mirrored:
        assert keywords[field.name].default == field.default, field.name


def test_the_keywords_belong_to_one_group_each() -> None:
    fields = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    assert len(fields) == len(set(fields))


@pytest.fixture
def engines(tmp_path: Path) -> tuple[AsyncEngine, AsyncEngine]:
    return (
        create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"),
        create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"),
    )


async def test_a_group_or_its_keywords_configure_the_same_router(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    writer, replica = engines
    grouped = Router(
        writer=writer,
        replicas=[replica],
        health=HealthOptions(eject_after=3, monitor_interval=0.1),
        consistency=ConsistencyOptions(sticky_seconds=0),
    )
    named = Router(
        writer=writer,
        replicas=[replica],
        eject_after=3,
        monitor_interval=0.1,
        sticky_seconds=0,
    )
    assert grouped.health == named.health
    assert (
        grouped.consistency == named.consistency == ConsistencyOptions(sticky_seconds=0)
    )
    assert named.observability == ObservabilityOptions()
    for router in (grouped, named):
        await router.dispose()


def test_an_option_given_twice_is_refused(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    writer, _ = engines
    with pytest.raises(ConfigurationError, match="eject_after given both"):
        Router(writer=writer, health=HealthOptions(eject_after=2), eject_after=3)
    with pytest.raises(ConfigurationError, match="expected a HealthOptions"):
        Router(writer=writer, health=ConsistencyOptions())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("group", "kwargs", "message"),
    [
        (HealthOptions, {"monitor_interval": 0}, "monitor_interval"),
        (HealthOptions, {"eject_after": 0}, "eject_after"),
        (HealthOptions, {"ping_after_idle": -1}, "ping_after_idle"),
        (ConsistencyOptions, {"sticky_seconds": -1}, "sticky_seconds"),
        (ConsistencyOptions, {"causal_wait_timeout": -1}, "causal_wait_timeout"),
        (ObservabilityOptions, {"checkout_wait_warning": 2}, "checkout_wait"),
        (ObservabilityOptions, {"hold_warning_seconds": -1}, "hold_warning"),
    ],
)
def test_a_group_checks_its_range_when_made(
    group: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        group(**kwargs)


async def test_from_urls_takes_groups_by_name(
    tmp_path: Path, make_router: RouterMaker
) -> None:
    router = make_router(
        f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
        observability=ObservabilityOptions(slow_query_seconds=1.5),
        health=HealthOptions(eject_after=2),
    )
    assert router.observability.slow_query_seconds == 1.5
    assert router.health.eject_after == 2
    # As with the keywords: without pool_pre_ping, the idle check is on.
    assert router.health.ping_after_idle == BY_NAME["ping_after_idle"].built


def _listeners(engine: AsyncEngine) -> tuple[int, ...]:
    sync = engine.sync_engine
    return (
        len(sync.pool.dispatch.connect),
        len(sync.pool.dispatch.checkout),
        len(sync.pool.dispatch.checkin),
        len(sync.dialect.dispatch.handle_error),
        len(sync.dispatch.commit),
        len(sync.dispatch.before_cursor_execute),
        # The commit recorder (read-your-writes for plain sessions) wraps
        # the writer's dialect: no event exists after a COMMIT.
        len(vars(sync.dialect).get("routing_db_commit_recorders", ())),
        int("do_commit" in vars(sync.dialect)),
    )


async def test_dispose_removes_every_hook_the_router_installed(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    writer, replica = engines
    before = (_listeners(writer), _listeners(replica))
    routers = [
        Router(
            writer=writer,
            replicas=[replica],
            ping_after_idle=1.0,
            slow_query_seconds=1.0,
            hold_warning_seconds=1.0,
            policy="least_busy",
        )
        for _ in range(3)
    ]
    during = (_listeners(writer), _listeners(replica))
    assert during != before
    for router in routers:
        await router.dispose()
    assert (_listeners(writer), _listeners(replica)) == before


async def test_a_disposed_router_makes_no_sessions_until_started_again(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    writer, replica = engines
    router = Router(writer=writer, replicas=[replica])
    hooked = _listeners(replica)
    Session = routing_sessionmaker(router)
    await router.dispose()
    with pytest.raises(ConfigurationError, match="disposed"):
        Session()
    # As an application's lifespan does when it runs again.
    async with router:
        assert _listeners(replica) == hooked
        async with Session() as session, read_only:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1


def _other_value(field: dataclasses.Field[Any]) -> Any:
    default: Any = field.default
    if isinstance(default, bool):
        return not default
    if field.name == "checkout_wait_warning":
        return 0.5  # a fraction
    return 1 if default is None else default + 1


@pytest.mark.parametrize(
    ("group", "field"),
    [
        (name, field)
        for name, cls in GROUPS.items()
        for field in dataclasses.fields(cls)
        if field.name in _keywords()
    ],
    ids=lambda item: getattr(item, "name", item),
)
async def test_each_keyword_reaches_its_group(
    engines: tuple[AsyncEngine, AsyncEngine],
    group: str,
    field: Any,
    make_router: RouterMaker,
) -> None:
    writer, _ = engines
    value = _other_value(field)
    router = make_router.keep(Router(writer=writer, **{field.name: value}))
    assert getattr(getattr(router, group), field.name) == value


def test_infinity_is_a_limit_but_not_a_weight() -> None:
    """As before the option table: a timeout or limit of infinity means
    never; a weight must be a real share."""
    assert HealthOptions(writer_wait_timeout=float("inf")).writer_wait_timeout > 0
    with pytest.raises(ConfigurationError, match="a finite number >= 0"):
        BY_NAME["writer_read_weight"].check(float("inf"))
    with pytest.raises(ConfigurationError, match="eject_window"):
        HealthOptions(eject_window=float("nan"))

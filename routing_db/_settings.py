"""``RoutingSettings``: environment/config edge (pydantic-settings, ``ROUTING_DB_``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from ._engines.make import check_url
from ._exceptions import ConfigurationError
from ._options import BY_NAME, OPTIONS, default
from ._retry import RetryPolicy
from ._topology.patroni import check_rest_urls

__all__ = ["POOL_FIELDS", "RoutingSettings", "SyncRoutingSettings"]

POOL_FIELDS = (
    "pool_size",
    "max_overflow",
    "pool_timeout",
    "pool_recycle",
    "pool_pre_ping",
)

# settings field -> PostgreSQL setting sent when each connection opens
_SESSION_SETTINGS = {
    "statement_timeout_ms": "statement_timeout",
    "timezone": "TimeZone",
    "application_name": "application_name",
    "search_path": "search_path",
}

# The router's own options that map one to one onto settings fields (each
# declared in _options, with its default, range and description).
# Settings are flat: the option groups' fields are settings of their own.
_ROUTER_FIELDS = tuple(
    option.name
    for option in OPTIONS
    if option.keyword and option.name not in {"weights", "retry", "causal_store"}
)

# Router options whose None means "off", not "the router's default".
_OFF_AS_NONE = tuple(
    option.name
    for option in OPTIONS
    if option.off and option.default is not None and option.name in _ROUTER_FIELDS
)

PoolCount = Annotated[int, Field(ge=0)]
AtLeastOne = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]
Limit = Annotated[float, Field(ge=0)]
Recycle = Annotated[int, Field(ge=-1)]


def _without_inputs(error: ValidationError) -> ValidationError:
    """The same errors with every input replaced: ``errors()`` would echo URLs."""
    line_errors: list[Any] = [
        {
            "type": item["type"],
            "loc": item["loc"],
            "input": "<hidden>",
            **({"ctx": item["ctx"]} if "ctx" in item else {}),
        }
        for item in error.errors(include_url=False, include_input=False)
    ]
    return ValidationError.from_exception_data(
        error.title, line_errors, hide_input=True
    )


class RoutingSettings(BaseSettings):
    """Router settings from arguments or ``ROUTING_DB_*`` environment variables."""

    # hide_input_in_errors: a validation error must never echo a URL's password.
    # SyncRoutingSettings: the URLs name synchronous drivers (SyncRouter's).
    _sync_urls: ClassVar[bool] = False

    model_config = SettingsConfigDict(
        env_prefix="ROUTING_DB_",
        hide_input_in_errors=True,
        extra="forbid",
    )

    writer_url: SecretStr | None = Field(
        None,
        description="The writer's URL (with its driver: postgresql+asyncpg://...).",
    )
    replica_urls: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="The replicas' URLs, comma-separated.",
    )
    cluster_urls: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Every node of one cluster, comma-separated: the writer is found "
            "among them (instead of writer_url and replica_urls)."
        ),
    )
    patroni_urls: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "The members' Patroni REST API URLs (with cluster_urls): the writer is the "
            "leader Patroni names."
        ),
    )
    writer_name: str | None = Field(
        None,
        description=(
            "The writer's label in metrics, logs and status() (else host:port/db)."
        ),
    )
    replica_names: Annotated[list[str], NoDecode] | None = Field(
        None,
        description="The replicas' labels, one per replica URL.",
    )
    cluster_names: Annotated[list[str], NoDecode] | None = Field(
        None,
        description="The nodes' labels, one per cluster URL.",
    )

    pool_size: PoolCount = Field(
        5,
        description="Connections each engine's pool keeps (SQLAlchemy's pool_size).",
    )
    max_overflow: PoolCount = Field(
        10,
        description="Connections a pool may open beyond pool_size.",
    )
    pool_timeout: Seconds = Field(
        30.0,
        description="Seconds a checkout waits for a pooled connection.",
    )
    pool_recycle: Recycle = Field(
        -1,
        description="Seconds after which a pooled connection is replaced (-1: never).",
    )
    # None: routing_db's idle check (ping_after_idle) instead of SQLAlchemy's
    # ping on every checkout; true: SQLAlchemy's pre-ping; false: no check.
    pool_pre_ping: bool | None = Field(
        None,
        description=(
            "SQLAlchemy's ping on every checkout (unset: routing_db's cheaper "
            "idle check, ping_after_idle)."
        ),
    )
    ping_after_idle: float | None = default("ping_after_idle")

    writer_pool_size: PoolCount | None = None
    writer_max_overflow: PoolCount | None = None
    writer_pool_timeout: Seconds | None = None
    writer_pool_recycle: Recycle | None = None
    writer_pool_pre_ping: bool | None = None
    replica_pool_size: PoolCount | None = None
    replica_max_overflow: PoolCount | None = None
    replica_pool_timeout: Seconds | None = None
    replica_pool_recycle: Recycle | None = None
    replica_pool_pre_ping: bool | None = None

    # The router's options (_options.OPTIONS: defaults, ranges, descriptions);
    # "off" sets those whose None turns them off.
    default_role: Literal["writer", "auto"] = default("default_role")
    fallback_to_writer: bool = default("fallback_to_writer")
    startup_check: Literal["warn", "strict", "off"] = default("startup_check")
    require_standby: bool = default("require_standby")

    policy: Literal["round_robin", "random", "weighted", "least_busy"] = default(
        "policy"
    )
    replica_weights: Annotated[list[Limit], NoDecode] | None = Field(
        None,
        description="One weight per replica URL, for the weighted policy.",
    )
    max_lag_bytes: int | None = default("max_lag_bytes")
    max_lag_seconds: float | None = default("max_lag_seconds")
    monitor_interval: float = default("monitor_interval")
    eject_after: int = default("eject_after")
    eject_window: float = default("eject_window")
    max_writer_fallbacks: int | None = default("max_writer_fallbacks")
    writer_wait_timeout: float = default("writer_wait_timeout")
    connect_timeout: float | None = default("connect_timeout")
    replica_read_timeout: float | None = default("replica_read_timeout")
    writer_read_weight: float = default("writer_read_weight")

    # Observability: slow-query log and starvation detector (None: off).
    slow_query_seconds: float | None = default("slow_query_seconds")
    log_slow_parameters: bool = default("log_slow_parameters")
    hold_warning_seconds: float | None = default("hold_warning_seconds")
    checkout_wait_warning: float | None = default("checkout_wait_warning")

    # Session settings for every new connection (asyncpg server_settings,
    # psycopg startup options),
    # with writer_/replica_ overrides. Replicas stay read-only regardless.
    statement_timeout_ms: PoolCount | None = Field(
        None,
        description="PostgreSQL statement_timeout for every new connection, in ms.",
    )
    timezone: str | None = Field(
        None,
        description="PostgreSQL TimeZone for every new connection.",
    )
    application_name: str | None = Field(
        None,
        description="PostgreSQL application_name for every new connection.",
    )
    search_path: str | None = Field(
        None,
        description="PostgreSQL search_path for every new connection.",
    )
    writer_statement_timeout_ms: PoolCount | None = None
    writer_timezone: str | None = None
    writer_application_name: str | None = None
    writer_search_path: str | None = None
    replica_statement_timeout_ms: PoolCount | None = None
    replica_timezone: str | None = None
    replica_application_name: str | None = None
    replica_search_path: str | None = None

    # PgBouncer in transaction pooling mode in front of the servers.
    pgbouncer: bool = Field(
        False,
        description="The servers sit behind PgBouncer in transaction pooling mode.",
    )

    # Read-your-writes and retries.
    sticky_seconds: float = default("sticky_seconds")
    causal_wait_timeout: float | None = default("causal_wait_timeout")
    # A Redis causal store (routing_db.redis, the redis extra): a user's
    # position shared by processes, for reads under causal_key.
    causal_store_url: SecretStr | None = Field(
        None,
        description=(
            "A Redis URL: a user's position shared by processes (routing_db.redis)."
        ),
    )
    causal_store_ttl: Seconds = Field(
        30.0,
        description="Seconds the Redis causal store keeps a position.",
    )
    retry_attempts: AtLeastOne = Field(
        3,
        description="Attempts of a connection-level retry (RetryPolicy).",
    )
    retry_max_seconds: Seconds = Field(
        10.0,
        description="Seconds a connection-level retry may take in all.",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            # ``from None``: the original error keeps the raw inputs.
            raise _without_inputs(error) from None

    @field_validator(
        "replica_urls",
        "replica_weights",
        "replica_names",
        "cluster_urls",
        "cluster_names",
        "patroni_urls",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(*_OFF_AS_NONE, mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"off", "none", ""}:
            return None
        return value

    @field_validator("writer_url")
    @classmethod
    def _check_writer(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_url(value.get_secret_value(), field="writer_url", sync=cls._sync_urls)
        return value

    @field_validator("replica_urls", "cluster_urls")
    @classmethod
    def _check_urls(cls, value: list[SecretStr], info: ValidationInfo) -> Any:
        for i, url in enumerate(value):
            field = f"{info.field_name}[{i}]"
            check_url(url.get_secret_value(), field=field, sync=cls._sync_urls)
        return value

    @model_validator(mode="after")
    def _check_options(self) -> RoutingSettings:
        # The router's own checks: the same answer here as from Router().
        for name in _ROUTER_FIELDS:
            BY_NAME[name].check(getattr(self, name))
        return self

    @model_validator(mode="after")
    def _require_writer(self) -> RoutingSettings:
        if self.cluster_urls:
            if self.writer_url is not None or self.replica_urls:
                raise ValueError(
                    "cluster_urls replaces writer_url and replica_urls: set one "
                    "or the other (ROUTING_DB_CLUSTER_URLS)"
                )
            _one_each(self.cluster_names, self.cluster_urls, "cluster")
            if self.patroni_urls:
                check_rest_urls([u.get_secret_value() for u in self.patroni_urls])
            return self
        if self.patroni_urls:
            raise ValueError(
                "patroni_urls go with cluster_urls (ROUTING_DB_CLUSTER_URLS): "
                "Patroni names the leader among a cluster's nodes"
            )
        if self.writer_url is None or not self.writer_url.get_secret_value():
            raise ValueError(
                "writer_url is required (set ROUTING_DB_WRITER_URL, or "
                "ROUTING_DB_CLUSTER_URLS for a cluster whose writer is found)"
            )
        _one_each(self.replica_names, self.replica_urls, "replica")
        return self

    def _role_overrides(self, role: str) -> dict[str, Any]:
        overrides = {
            name: value
            for name in POOL_FIELDS
            if (value := getattr(self, f"{role}_{name}")) is not None
        }
        connect_args = self._connect_args(role)
        if connect_args:
            overrides["connect_args"] = connect_args
        return overrides

    def _connect_args(self, role: str) -> dict[str, Any]:
        settings: dict[str, str] = {}
        for field, guc in _SESSION_SETTINGS.items():
            value = getattr(self, f"{role}_{field}")
            if value is None:
                value = getattr(self, field)
            if value is not None:
                ms = field == "statement_timeout_ms"
                settings[guc] = f"{value}ms" if ms else value
        if not settings:
            return {}
        urls = self.replica_urls if role == "replica" else [self.writer_url]
        if self.cluster_urls:
            urls = self.cluster_urls
        drivers = {make_url(url.get_secret_value()).drivername for url in urls if url}
        if drivers == {"postgresql+asyncpg"}:
            return {"server_settings": settings}
        libpq = {
            "postgresql+psycopg",
            "postgresql+psycopg_async",
            "postgresql+psycopg2",
        }
        if drivers <= libpq:
            # libpq's startup options: sent with the connection, no round trip.
            return {
                "options": " ".join(_libpq_option(k, v) for k, v in settings.items())
            }
        raise ConfigurationError(
            "statement_timeout_ms, timezone, application_name and search_path "
            f"need all {role} URLs to use one PostgreSQL driver: "
            "postgresql+asyncpg or postgresql+psycopg"
        )

    def _causal_store(self) -> Any:
        if self.causal_store_url is None:
            return None
        # Imported here: only settings that name a store need redis.
        from .redis import RedisCausalStore

        return RedisCausalStore(
            self.causal_store_url.get_secret_value(), ttl=self.causal_store_ttl
        )

    def router_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Router.from_urls``, or ``Router.from_cluster``
        with ``cluster_urls`` (they contain the secrets)."""
        if self.cluster_urls:
            urls: dict[str, Any] = {
                "urls": [url.get_secret_value() for url in self.cluster_urls],
                "names": self.cluster_names,
                "patroni": [u.get_secret_value() for u in self.patroni_urls] or None,
            }
        else:
            assert self.writer_url is not None  # enforced by _require_writer
            urls = {
                "writer_url": self.writer_url.get_secret_value(),
                "replica_urls": [url.get_secret_value() for url in self.replica_urls],
                "writer_name": self.writer_name,
                "replica_names": self.replica_names,
            }
        return {
            "pgbouncer": self.pgbouncer,
            **urls,
            "writer_kwargs": self._role_overrides("writer"),
            "replica_kwargs": self._role_overrides("replica"),
            "router_options": {
                # None means "the router's default" for every router option.
                **{
                    name: value
                    for name in _ROUTER_FIELDS
                    if (value := getattr(self, name)) is not None
                    or name in _OFF_AS_NONE
                },
                "weights": self.replica_weights,
                "causal_store": self._causal_store(),
                "retry": RetryPolicy(
                    attempts=self.retry_attempts, max_seconds=self.retry_max_seconds
                ),
            },
            # Only those set: their defaults are SQLAlchemy's own, and a pool
            # without sizing (in-memory SQLite's) refuses them by name.
            **{
                name: value
                for name in POOL_FIELDS
                if name in self.model_fields_set
                and (value := getattr(self, name)) is not None
            },
        }


_LIBPQ_DRIVERS = {
    "postgresql+psycopg",
    "postgresql+psycopg_async",
    "postgresql+psycopg2",
}


def _one_each(names: list[str] | None, urls: list[SecretStr], role: str) -> None:
    if names is not None and len(names) != len(urls):
        raise ValueError(f"{role}_names needs one name per {role} URL")


def _libpq_option(name: str, value: str) -> str:
    # libpq splits ``options`` on spaces; a backslash keeps one in a value.
    escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
    return f"-c {name}={escaped}"


class SyncRoutingSettings(RoutingSettings):
    """``RoutingSettings`` for ``SyncRouter``: the same fields and environment
    variables, with URLs of synchronous drivers (``postgresql+psycopg2``...)."""

    _sync_urls: ClassVar[bool] = True

"""routing-db: check (is the set-up sound?) and bench (load the pools)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .._engines.make import check_url, create_engine
from .._exceptions import ConfigurationError, RoutingDBError
from .._router.router import Router
from .._session.async_session import routing_sessionmaker
from .._settings import POOL_FIELDS, RoutingSettings
from ..loadtest import (
    PROFILES,
    LoadSummary,
    Workload,
    plot_summaries,
    prepare,
    run_load,
    run_load_in_processes,
)
from .doctor import check_setup

__all__ = ["main"]


def _setting_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.writer_url:
        values["writer_url"] = args.writer_url
    if args.replica_url:
        values["replica_urls"] = args.replica_url
    for name in ("pool_size", "max_overflow", "pool_timeout", "policy", "pgbouncer"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return values


def _settings(args: argparse.Namespace) -> RoutingSettings:
    return RoutingSettings(**_setting_values(args))


def _plain_writer(values: dict[str, Any]) -> AsyncEngine:
    """The writer as an application without routing_db opens it: the same URL
    and pool settings, none of the router's hooks (``bench --compare``)."""
    kwargs = RoutingSettings(**values).router_kwargs()
    engine_kwargs = {name: kwargs[name] for name in POOL_FIELDS if name in kwargs}
    engine_kwargs.update(kwargs["writer_kwargs"])
    if kwargs["writer_name"] is not None:
        engine_kwargs["logging_name"] = kwargs["writer_name"]
    engine: AsyncEngine = create_engine(
        check_url(kwargs["writer_url"], field="writer_url"),
        field="writer_url",
        pgbouncer=bool(kwargs["pgbouncer"]),
        **engine_kwargs,
    )
    return engine


@contextlib.asynccontextmanager
async def _sessions(
    values: dict[str, Any], variant: str
) -> AsyncIterator[async_sessionmaker[Any]]:
    """One load process's own pools (``bench --processes``)."""
    if variant == "plain":
        engine = _plain_writer(values)
        try:
            yield async_sessionmaker(engine)
        finally:
            await engine.dispose()
        return
    router = Router.from_settings(RoutingSettings(**values))
    try:
        async with router:
            yield routing_sessionmaker(router)
    finally:
        await router.dispose()


def _table(rows: Sequence[dict[str, object]]) -> str:
    if not rows:
        return ""
    headers = list(rows[0])
    cells = [[str(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += [
        "  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True))
        for cell in cells
    ]
    return "\n".join(lines)


def _progress(label: str) -> Any:
    def show(done: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed else 0.0
        print(
            f"\r{label}: {done} ops, {elapsed:5.1f} s, {rate:8.0f} ops/s",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return show


async def _bench(args: argparse.Namespace) -> list[tuple[str, LoadSummary]]:
    if args.processes < 1:
        raise ConfigurationError("--processes must be at least 1")
    values = _setting_values(args)  # also what each load process builds from
    router = Router.from_settings(RoutingSettings(**values))
    variants: list[tuple[str, async_sessionmaker[Any]]] = []
    plain = _plain_writer(values) if args.compare else None
    if plain is not None:
        variants.append(("plain", async_sessionmaker(plain)))
    variants.append(("routed", routing_sessionmaker(router)))
    workload = Workload(rows=args.rows, hold_ms=args.hold_ms, io_ms=args.io_ms)
    # A line rewritten in place is for a terminal; in a log it is noise.
    show = sys.stderr.isatty() if args.progress is None else args.progress
    results: list[tuple[str, LoadSummary]] = []
    try:
        if args.prepare:
            await prepare(router.writer, args.rows)
        async with router:
            for concurrency in args.concurrency:
                for label, factory in variants:
                    options: dict[str, Any] = {
                        "profile": args.profile,
                        "concurrency": concurrency,
                        "duration": args.duration,
                        "workload": workload,
                        "progress": (
                            _progress(f"{label} c={concurrency}") if show else None
                        ),
                    }
                    if args.processes > 1:
                        make = functools.partial(_sessions, values, label)
                        summary = await run_load_in_processes(
                            make, processes=args.processes, **options
                        )
                    else:
                        summary = await run_load(factory, **options)
                    if show:
                        print("\r\033[K", end="", file=sys.stderr)
                    results.append((label, summary))
    finally:
        await router.dispose()
        if plain is not None:
            await plain.dispose()
    return results


def _concurrency(value: str) -> list[int]:
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("e.g. 10,50,200") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("positive integers, e.g. 10,50,200")
    return levels


def _default(setting: str) -> object:
    """A setting's default, for help texts (RoutingSettings is the source)."""
    return RoutingSettings.model_fields[setting].default


def _connecting_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
) -> argparse.ArgumentParser:
    """A command that reaches the servers: the URLs and pool options first."""
    command = commands.add_parser(name, help=summary)
    _connection_arguments(command)
    return command


def _connection_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--writer-url", help="default: ROUTING_DB_WRITER_URL")
    command.add_argument(
        "--replica-url", action="append", help="repeatable; ROUTING_DB_REPLICA_URLS"
    )
    command.add_argument(
        "--pool-size",
        type=int,
        help=f"per engine; ROUTING_DB_POOL_SIZE ({_default('pool_size')})",
    )
    command.add_argument(
        "--max-overflow",
        type=int,
        help=f"per engine; ROUTING_DB_MAX_OVERFLOW ({_default('max_overflow')})",
    )
    command.add_argument(
        "--pgbouncer",
        action="store_true",
        default=None,
        help="the servers sit behind PgBouncer (transaction mode); "
        "ROUTING_DB_PGBOUNCER",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routing-db", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = _connecting_command(
        commands, "check", "check the writer, the replicas and the connection budget"
    )
    check.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes (workers) that each open these pools",
    )
    check.add_argument("--json", action="store_true", help="print JSON, not a table")
    bench = _connecting_command(
        commands, "bench", "load-test the pools: throughput, latency, checkout waits"
    )
    bench.add_argument(
        "--concurrency",
        type=_concurrency,
        default=[10, 50, 200],
        metavar="N[,N...]",
        help="concurrent workers, one run per level (default: 10,50,200)",
    )
    bench.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="point_read",
        help="what one operation does (default: %(default)s)",
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="seconds per run (default: %(default)s)",
    )
    bench.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load-generating processes, each with its own pools (one Python "
        "event loop uses one core); --concurrency is their total",
    )
    bench.add_argument(
        "--hold-ms",
        type=float,
        default=50.0,
        help="hold: milliseconds the session stays open between reads "
        "(default: %(default)s)",
    )
    bench.add_argument(
        "--io-ms",
        type=float,
        default=5.0,
        help="io_read: milliseconds each read sleeps on the server "
        "(default: %(default)s)",
    )
    bench.add_argument(
        "--rows",
        type=int,
        default=1000,
        help="rows in the routing_db_bench table (default: %(default)s)",
    )
    bench.add_argument(
        "--policy",
        choices=["round_robin", "random", "weighted", "least_busy"],
        help=f"how replicas are chosen; ROUTING_DB_POLICY ({_default('policy')})",
    )
    bench.add_argument(
        "--pool-timeout",
        type=float,
        help="seconds a checkout may wait; "
        f"ROUTING_DB_POOL_TIMEOUT ({_default('pool_timeout')})",
    )
    bench.add_argument(
        "--compare",
        action="store_true",
        help="also run a plain AsyncSession on the writer, with its own engine: "
        "the same URL and pool settings, none of routing_db's hooks",
    )
    bench.add_argument(
        "--no-prepare",
        dest="prepare",
        action="store_false",
        help="do not create and fill the routing_db_bench table (by default bench "
        "creates it in the writer's database, fills it with --rows rows, and "
        "leaves it there)",
    )
    bench.add_argument("--json", action="store_true", help="print JSON, not a table")
    bench.add_argument("--plot", metavar="PNG", help="draw the results (matplotlib)")
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="a progress line on stderr (default: when stderr is a terminal)",
    )
    return parser


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.processes < 1:
        raise ConfigurationError("--processes must be at least 1")

    def budget(role: str) -> int:
        size = getattr(settings, f"{role}_pool_size")
        overflow = getattr(settings, f"{role}_max_overflow")
        return (settings.pool_size if size is None else size) + (
            settings.max_overflow if overflow is None else overflow
        )

    kwargs = settings.router_kwargs()
    reports = asyncio.run(
        check_setup(
            kwargs["writer_url"],
            kwargs["replica_urls"],
            writer_pool=budget("writer"),
            replica_pool=budget("replica"),
            processes=args.processes,
            pgbouncer=settings.pgbouncer,
        )
    )
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in reports], indent=2))
    else:
        print(_table([r.row() for r in reports]))
    for report in reports:
        for warning in report.warnings:
            print(
                f"routing-db check: warning: {report.name}: {warning}", file=sys.stderr
            )
        for note in report.notes:
            print(f"routing-db check: note: {report.name}: {note}", file=sys.stderr)
    problems = [(r.name, p) for r in reports for p in r.problems]
    for name, problem in problems:
        print(f"routing-db check: {name}: {problem}", file=sys.stderr)
    if not problems:
        print("routing-db check: all good", file=sys.stderr)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``routing-db``."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        results = asyncio.run(_bench(args))
        if args.plot:
            plot_summaries(results, args.plot)
    except (RoutingDBError, ValidationError) as exc:
        print(f"routing-db: {exc}", file=sys.stderr)
        return 2
    except (OSError, DBAPIError) as exc:
        # Driver messages name hosts and users, never passwords; the URL itself
        # is not repeated here.
        print(f"routing-db: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps([{"variant": v, **s.model_dump()} for v, s in results], indent=2)
        )
    else:
        print(_table([{"variant": v, **s.row()} for v, s in results]))
    if any(s.client_bound for _, s in results):
        print(
            "routing-db bench: the client used a whole CPU core per process in "
            "some runs: there it measured itself, not the database (more "
            "--processes, if the machine has the cores, or a heavier --io-ms)",
            file=sys.stderr,
        )
    if args.plot:
        print(f"plot written to {os.path.abspath(args.plot)}", file=sys.stderr)
    return 0

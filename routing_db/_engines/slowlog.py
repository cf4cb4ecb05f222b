"""The slow-query log: statements slower than a threshold, per engine.

Logged on the ``routing_db.slow`` logger at WARNING: duration, engine name,
the SQL cut to 500 characters. Parameters only when asked for (they may
hold personal data).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .hooks import Hooks
from .make import AppEngine, core

__all__ = ["install_slow_query_log"]

logger = logging.getLogger("routing_db.slow")

_MAX_SQL = 500
_START = "routing_db.statement_started"


def install_slow_query_log(
    engine: AppEngine,
    hooks: Hooks,
    *,
    name: str,
    threshold: float,
    log_parameters: bool = False,
) -> None:
    """Log statements on ``engine`` that take at least ``threshold`` seconds."""
    sync = core(engine)

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
               executemany: bool) -> None:  # fmt: skip
        # One statement at a time runs on a connection: its info holds the
        # start of the current one (SQLAlchemy's documented timing recipe).
        conn.info[_START] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:  # fmt: skip
        started = conn.info.pop(_START, None)
        if started is None:
            return
        seconds = time.perf_counter() - started
        if seconds < threshold:
            return
        sql = " ".join(statement.split())
        if len(sql) > _MAX_SQL:
            sql = sql[:_MAX_SQL] + "…"
        extra = {"engine": name, "duration": seconds, "sql": sql}
        if log_parameters:
            extra["parameters"] = repr(params)[:_MAX_SQL]
            logger.warning(
                "slow query on %s: %.3f s: %s -- parameters: %s",
                name, seconds, sql, extra["parameters"], extra={"routing_db": extra},
            )  # fmt: skip
        else:
            logger.warning(
                "slow query on %s: %.3f s: %s",
                name, seconds, sql, extra={"routing_db": extra},
            )  # fmt: skip

    hooks.listen(sync, "before_cursor_execute", before)
    hooks.listen(sync, "after_cursor_execute", after)

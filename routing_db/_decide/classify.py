"""What kind of statement this is: a read, a write, or a bare connection request.

Pure functions, no I/O. Textual SQL is a read only when it is positively
identified as one; anything unclear is a write, because a write sent to the
writer is merely slower, while a write sent to a replica is a bug.
"""

from __future__ import annotations

import enum
import re
from functools import lru_cache
from typing import Any

from sqlalchemy.orm.context import FromStatement
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ClauseElement, ColumnElement, Label, TextClause
from sqlalchemy.sql.functions import FunctionElement, next_value
from sqlalchemy.sql.selectable import GenerativeSelect, Select, TextualSelect
from sqlalchemy.sql.visitors import iterate

from .._compat import for_update, select_list

__all__ = [
    "WRITE_FUNCTIONS",
    "WRITE_FUNCTION_PREFIXES",
    "Kind",
    "classify",
    "classify_sql",
    "is_write_function",
    "write_function_named",
]


class Kind(enum.Enum):
    """The routing-relevant kind of a statement."""

    READ = "read"
    WRITE = "write"
    # ``session.connection()`` with no statement: what runs on it is unknown.
    CONNECTION = "connection"


_READ, _WRITE, _CONNECTION = Kind.READ, Kind.WRITE, Kind.CONNECTION


_READ_STARTS = frozenset({"SELECT", "VALUES", "TABLE", "SHOW", "EXPLAIN", "WITH"})

# Words that make a statement starting like a read a write (or lock rows, which
# a hot standby refuses): data-modifying CTEs, SELECT INTO, sequence advances,
# FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE, MySQL's
# LOCK IN SHARE MODE and MariaDB's NEXT VALUE FOR.
# Calls of the functions in WRITE_FUNCTIONS (below), as textual SQL writes them.
_WRITE_CALL = (
    r"\b(PG_(?:TRY_)?ADVISORY_\w+|SET_CONFIG|PG_NOTIFY|TXID_CURRENT|"
    r"PG_CURRENT_XACT_ID|LO_\w+|GET_LOCK|RELEASE_(?:ALL_)?LOCKS?|IS_FREE_LOCK|"
    r"IS_USED_LOCK)\s*\("
)
_WRITE_WORDS = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|INTO|NEXTVAL|SETVAL|LOCK|"
    r"FOR\s+(KEY\s+)?SHARE|NEXT\s+VALUE\s+FOR)\b|" + _WRITE_CALL
)
_WRITE_CALL_RE = re.compile(_WRITE_CALL)
_ANALYZE = re.compile(r"\bANALY[SZ]E\b")
_FIRST_WORD = re.compile(r"[\s(]*([A-Z]+)")
_SPECIAL = re.compile(r"""[-/'"`#$]""")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z_0-9]")


def _skip_quoted(sql: str, i: int, quote: str, backslash: bool) -> int:
    """Return the index after the literal opened at ``i``, or -1 if unterminated."""
    n = len(sql)
    j = i + 1
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:  # doubled quote escapes itself
                j += 2
                continue
            return j + 1
        j += 1
    return -1


def _skip_block_comment(sql: str, i: int, nested: bool) -> int:
    depth = 0
    j = i
    n = len(sql)
    while j < n:
        if sql.startswith("/*", j):
            depth = depth + 1 if nested or depth == 0 else depth
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return -1


def _code_only(sql: str, mysql: bool) -> str | None:
    """Replace comments and literals with blanks; None when it cannot tell."""
    out: list[str] = []
    i = 0
    n = len(sql)
    while i < n:
        m = _SPECIAL.search(sql, i)
        if m is None:
            out.append(sql[i:])
            break
        k = m.start()
        out.append(sql[i:k])
        c = sql[k]
        end = k + 1
        blank = " "
        if c == "-" and sql.startswith("--", k):
            # MySQL needs whitespace after "--" for it to start a comment.
            if not mysql or k + 2 >= n or sql[k + 2].isspace():
                nl = sql.find("\n", k)
                end = n if nl < 0 else nl
            else:
                blank = c
        elif c == "#" and mysql:
            nl = sql.find("\n", k)
            end = n if nl < 0 else nl
        elif c == "/" and sql.startswith("/*", k):
            if mysql and sql.startswith(("/*!", "/*M!"), k):
                return None  # MySQL executes these "comments"
            end = _skip_block_comment(sql, k, nested=not mysql)
        elif c == "'" or (c == '"' and mysql):
            escaped = mysql or (
                k > 0
                and sql[k - 1] in "Ee"
                and not (k > 1 and _IDENT_CHAR.match(sql[k - 2]))
            )
            end = _skip_quoted(sql, k, c, backslash=escaped)
            blank = " ? "
        elif c == '"' or (c == "`" and mysql):
            end = _skip_quoted(sql, k, c, backslash=False)
            blank = " _ident_ "
        elif c == "$" and not mysql:
            tag = _DOLLAR_TAG.match(sql, k)
            if tag is not None and not (k > 0 and _IDENT_CHAR.match(sql[k - 1])):
                close = sql.find(tag.group(), tag.end())
                end = -1 if close < 0 else close + len(tag.group())
                blank = " ? "
            else:
                blank = c
        else:
            blank = c
        if end < 0:
            return None
        out.append(blank)
        i = end
    return "".join(out)


def _is_read(code: str | None) -> bool:
    if code is None:
        return False
    code = code.upper().strip().rstrip(";").strip()
    if ";" in code:  # more than one statement
        return False
    first = _FIRST_WORD.match(code)
    if first is None or first.group(1) not in _READ_STARTS:
        return False
    if first.group(1) == "EXPLAIN" and _ANALYZE.search(code):
        return False  # EXPLAIN ANALYZE runs the statement
    return _WRITE_WORDS.search(code) is None


def _is_write_fragment(code: str | None) -> bool:
    return code is None or _WRITE_WORDS.search(code.upper()) is not None


@lru_cache(maxsize=2048)
def classify_sql(sql: str) -> Kind:
    """Classify textual SQL; a read only if it reads as one in every dialect."""
    # Lexed twice: PostgreSQL and MySQL disagree on backslashes, "--", "#" and
    # double quotes, and one dialect's quoting trick must not hide a write.
    if _is_read(_code_only(sql, mysql=False)) and _is_read(_code_only(sql, mysql=True)):
        return _READ
    return _WRITE


@lru_cache(maxsize=512)
def _fragment_kind(sql: str) -> Kind:
    if _is_write_fragment(_code_only(sql, mysql=False)) or _is_write_fragment(
        _code_only(sql, mysql=True)
    ):
        return _WRITE
    return _READ


# Functions that count as writes although a SELECT calls them: they advance a
# sequence, or take a lock or change state that exists only on the server
# that ran them. An advisory lock taken on a standby excludes nobody on the
# primary, so code that relies on it must reach the writer.
WRITE_FUNCTIONS = frozenset(
    {
        "nextval",
        "setval",
        "set_config",
        "pg_notify",
        "txid_current",
        "pg_current_xact_id",
        "get_lock",
        "release_lock",
        "release_all_locks",
        "is_free_lock",
        "is_used_lock",
    }
)
# And every function whose name starts with one of these.
WRITE_FUNCTION_PREFIXES = ("pg_advisory_", "pg_try_advisory_", "lo_")


def is_write_function(name: str) -> bool:
    """Does calling the SQL function ``name`` count as a write for routing?"""
    name = name.lower()
    return name in WRITE_FUNCTIONS or name.startswith(WRITE_FUNCTION_PREFIXES)


# What a select list holds that could call a function; the rest is tables and
# entities.
_MAY_WRITE = (ColumnElement, TextClause)
# isinstance() walks the MRO, and an ORM entity's annotated table has ~45
# classes in it: the answer is kept per type (a fixed set of classes).
_may_write_by_type: dict[type, bool] = {}


def _column_kind(column: Any) -> Kind:
    if isinstance(column, Label):
        column = column.element
    if isinstance(column, next_value):
        return _WRITE
    if isinstance(column, FunctionElement):
        if is_write_function(getattr(column, "name", "")):
            return _WRITE
        # A lock function may sit inside another call: coalesce(pg_try_...).
        for argument in column.clauses:
            if _column_kind(argument) is _WRITE:
                return _WRITE
        return _READ
    if isinstance(column, TextClause):
        return _fragment_kind(column.text)
    if getattr(column, "is_literal", False):  # literal_column("nextval('s')")
        return _fragment_kind(str(column.name))
    return _READ


def write_function_named(clause: ClauseElement | None) -> str | None:
    """The lock or state function that makes ``clause`` a write, for messages."""
    if clause is None:
        return None
    for element in iterate(clause):
        if isinstance(element, FunctionElement):
            name = getattr(element, "name", "")
            if is_write_function(name):
                return str(name)
        text = getattr(element, "text", None)
        if isinstance(text, str):
            code = _code_only(text, mysql=False)
            found = _WRITE_CALL_RE.search((code or text).upper())
            if found is not None:
                return found.group(1).lower()
    return None


def classify(clause: ClauseElement | None, *, flushing: bool) -> Kind:
    """Classify what ``Session.get_bind`` was asked to route."""
    if flushing:
        return _WRITE
    if clause is None:
        return _CONNECTION
    if isinstance(clause, GenerativeSelect):
        # Row locks need the primary: a standby refuses FOR UPDATE/SHARE.
        if for_update(clause):
            return _WRITE
        if isinstance(clause, Select):
            # Only the select list is inspected (cheap, and where nextval()
            # is written in practice); a replica's read-only transaction
            # rejects anything deeper, which surfaces as ReadOnlyViolation.
            for column in select_list(clause):
                # Entities and tables (select(Model)) cannot call nextval().
                may = _may_write_by_type.get(type(column))
                if may is None:
                    may = isinstance(column, _MAY_WRITE)
                    _may_write_by_type[type(column)] = may
                if may and _column_kind(column) is _WRITE:
                    return _WRITE
        return _READ
    if isinstance(clause, UpdateBase):
        return _WRITE
    if isinstance(clause, TextClause):
        return classify_sql(clause.text)
    if isinstance(clause, TextualSelect):
        return classify(clause.element, flushing=False)
    if isinstance(clause, FromStatement):
        return classify(clause.element, flushing=False)
    if isinstance(clause, FunctionElement):
        return _column_kind(clause)
    return _WRITE  # DDL and anything we do not know

"""Statement classification: positive read identification, no I/O."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Sequence,
    String,
    Table,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    union,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateTable, DropTable

from routing_db._decide.classify import (
    Kind,
    classify,
    classify_sql,
    is_write_function,
    write_function_named,
)

metadata = MetaData()
t = Table("t", metadata, Column("id", Integer, primary_key=True), Column("s", String))


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "thing"
    id: Mapped[int] = mapped_column(primary_key=True)


READS = [
    "SELECT 1",
    "select * from t",
    "  \n\tSELECT 1",
    "(SELECT 1) UNION (SELECT 2)",
    "/* leading comment */ SELECT 1",
    "-- line comment\nSELECT 1",
    "SELECT 'delete from t; insert into t' AS s",
    'SELECT "update" FROM t',
    "SELECT $$ a dollar string $$",
    "SELECT $tag$ x $tag$",
    "SELECT E'it\\'s'",
    "SELECT 1;",
    "SELECT 1 ;  \n",
    "SELECT update_time, share, deleted_at FROM t",
    "VALUES (1), (2)",
    "TABLE t",
    "SHOW search_path",
    "EXPLAIN SELECT 1",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "WITH RECURSIVE r(n) AS (VALUES (1) UNION SELECT n+1 FROM r WHERE n<3) "
    "SELECT * FROM r",
    "SELECT 1 -- ; DELETE FROM t",
    "SELECT pg_last_wal_replay_lsn()",
    "SELECT * FROM t WHERE s = $1",
    # Look-alikes of the lock and state functions (names, literals, reads).
    "SELECT 'pg_advisory_lock(1)'",
    "SELECT halo_x(1), set_configuration FROM t",
    "SELECT txid_current_snapshot(), pg_current_xact_id_if_assigned()",
    "SELECT * FROM pg_locks WHERE locktype = 'advisory'",
]

# Functions whose effect is a lock or session state on the server that runs
# them: a replica would take the lock where nobody else looks for it.
LOCK_AND_STATE_CALLS = [
    "pg_advisory_lock(1)",
    "pg_advisory_lock_shared(1)",
    "pg_try_advisory_lock(1, 2)",
    "pg_try_advisory_lock_shared(1)",
    "pg_advisory_xact_lock(1)",
    "pg_advisory_xact_lock_shared(1)",
    "pg_try_advisory_xact_lock(1)",
    "pg_try_advisory_xact_lock_shared(1)",
    "pg_advisory_unlock(1)",
    "pg_advisory_unlock_shared(1)",
    "pg_advisory_unlock_all()",
    "set_config('search_path', 'x', false)",
    "pg_notify('c', 'x')",
    "txid_current()",
    "pg_current_xact_id()",
    "lo_create(0)",
    "lo_unlink(42)",
    "lo_import('/tmp/x')",
    "GET_LOCK('name', 10)",
    "RELEASE_LOCK('name')",
    "RELEASE_ALL_LOCKS()",
    "IS_FREE_LOCK('name')",
    "IS_USED_LOCK('name')",
]

WRITES = [
    "INSERT INTO t VALUES (1)",
    "update t set s = 'x'",
    "DELETE FROM t",
    "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE",
    "CREATE TABLE x (a int)",
    "DROP TABLE t",
    "TRUNCATE t",
    "VACUUM",
    "COPY t FROM STDIN",
    "CALL proc()",
    "DO $$ BEGIN END $$",
    "LOCK TABLE t",
    "SET search_path = x",
    "BEGIN",
    "/* SELECT */ DELETE FROM t",
    "-- SELECT\nDELETE FROM t",
    "SELECT * FROM t FOR UPDATE",
    "select * from t for no key update",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR KEY SHARE",
    "SELECT * FROM t FOR\n  UPDATE SKIP LOCKED",
    "SELECT * FROM t LOCK IN SHARE MODE",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1",
    "WITH u AS (UPDATE t SET s = 'a' RETURNING *) SELECT 1",
    "SELECT * INTO newtable FROM t",
    "SELECT nextval('s')",
    "SELECT NEXTVAL ( 's' )",
    "SELECT setval('s', 10)",
    "SELECT NEXT VALUE FOR s",
    "EXPLAIN ANALYZE SELECT 1",
    "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
    "EXPLAIN ANALYZE DELETE FROM t",
    "SELECT 1; DELETE FROM t",
    "SELECT 1; SELECT 2",
    "SELECT 'unterminated",
    "SELECT /* unterminated",
    "SELECT $$ unterminated",
    # MySQL reads this literal as "a' ; DELETE FROM t; -- ": both dialects must
    # agree that it is a read before it may go to a replica.
    "SELECT 'a\\' ; DELETE FROM t; -- '",
    "SELECT 1 /*! ; DELETE FROM t */",
    # PostgreSQL nests block comments, MySQL does not ("still */ SELECT 1").
    "/* nested /* comment */ still */ SELECT 1",
    "",
    "   ",
    "-- only a comment",
]


@pytest.mark.parametrize("sql", READS)
def test_reads(sql: str) -> None:
    assert classify_sql(sql) is Kind.READ


@pytest.mark.parametrize("sql", WRITES)
def test_writes(sql: str) -> None:
    assert classify_sql(sql) is Kind.WRITE


def test_text_clause_uses_the_sql_classifier() -> None:
    assert classify(text("SELECT 1"), flushing=False) is Kind.READ
    assert classify(text("DELETE FROM t"), flushing=False) is Kind.WRITE
    assert classify(text("SELECT id FROM t").columns(t.c.id), flushing=False) is (
        Kind.READ
    )
    assert classify(select(Thing).from_statement(text("SELECT 1")), flushing=False) is (
        Kind.READ
    )
    assert (
        classify(
            select(Thing).from_statement(text("DELETE FROM thing")), flushing=False
        )
        is Kind.WRITE
    )


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        (select(t), Kind.READ),
        (select(Thing), Kind.READ),
        (select(Thing).where(Thing.id == 1), Kind.READ),
        (union(select(t.c.id), select(t.c.id)), Kind.READ),
        (select(func.count()).select_from(t), Kind.READ),
        (select(t).with_for_update(), Kind.WRITE),
        (select(t).with_for_update(read=True), Kind.WRITE),
        (select(Thing).with_for_update(nowait=True), Kind.WRITE),
        (union(select(t.c.id), select(t.c.id)).with_for_update(), Kind.WRITE),
        (select(func.nextval("s")), Kind.WRITE),
        (select(func.setval("s", 1)), Kind.WRITE),
        (select(func.nextval("s").label("n")), Kind.WRITE),
        (select(Sequence("s").next_value()), Kind.WRITE),
        (select(literal_column("nextval('s')")), Kind.WRITE),
        (select(text("nextval('s')")), Kind.WRITE),
        (select(literal_column("1")), Kind.READ),
        (func.nextval("s"), Kind.WRITE),
        (func.now(), Kind.READ),
        (insert(t), Kind.WRITE),
        (update(t), Kind.WRITE),
        (delete(t), Kind.WRITE),
        (insert(Thing), Kind.WRITE),
        (CreateTable(t), Kind.WRITE),
        (DropTable(t), Kind.WRITE),
    ],
)
def test_constructs(statement: object, kind: Kind) -> None:
    assert classify(statement, flushing=False) is kind  # type: ignore[arg-type]


def test_flushing_is_always_a_write() -> None:
    assert classify(select(t), flushing=True) is Kind.WRITE
    assert classify(None, flushing=True) is Kind.WRITE


def test_no_statement_is_a_connection_request() -> None:
    assert classify(None, flushing=False) is Kind.CONNECTION


@pytest.mark.parametrize("call", LOCK_AND_STATE_CALLS)
def test_lock_and_state_functions_are_writes_in_every_form(call: str) -> None:
    name = call.split("(")[0]
    args = [int(a) if a.strip().isdigit() else a for a in _args(call)]
    assert is_write_function(name)
    for sql in (f"SELECT {call}", f"select {call.lower()} AS x", f"SELECT 1, {call}"):
        assert classify_sql(sql) is Kind.WRITE, sql
        assert write_function_named(text(sql)) == name.lower()
    function = getattr(func, name)(*args)
    for statement in (
        select(function),
        select(function.label("x")),
        select(func.coalesce(function, None)),  # nested in another call
        function,
    ):
        assert classify(statement, flushing=False) is Kind.WRITE, statement
        assert write_function_named(statement) == name


def _args(call: str) -> list[str]:
    inside = call[call.index("(") + 1 : -1]
    return [a.strip().strip("'") for a in inside.split(",") if a.strip()]


def test_an_ordinary_function_is_named_by_nobody() -> None:
    assert write_function_named(select(func.now())) is None
    assert write_function_named(text("SELECT 'pg_advisory_lock(1)'")) is None
    assert write_function_named(None) is None


_WRITE_STATEMENTS = [w for w in WRITES if w.strip() and not w.strip().startswith("--")]
_WRITE_STATEMENTS += [f"SELECT {call}" for call in LOCK_AND_STATE_CALLS]
_NOISE = st.lists(
    st.sampled_from(
        [" ", "\n", "\t", "/* SELECT */", "-- SELECT\n", "/* x */", "(", "--\n"]
    ),
    max_size=6,
).map("".join)


@given(prefix=_NOISE, write=st.sampled_from(_WRITE_STATEMENTS), suffix=_NOISE)
def test_comments_and_whitespace_never_turn_a_write_into_a_read(
    prefix: str, write: str, suffix: str
) -> None:
    assert classify_sql(prefix + write + suffix.replace("--", "/**/")) is Kind.WRITE


@given(
    read=st.sampled_from(READS),
    glue=_NOISE,
    write=st.sampled_from(
        ["DELETE FROM t", "INSERT INTO t VALUES (1)", "DROP TABLE t"]
    ),
)
def test_a_write_after_a_read_is_a_write(read: str, glue: str, write: str) -> None:
    assert classify_sql(f"{read.rstrip().rstrip(';')}\n;{glue}{write}") is Kind.WRITE

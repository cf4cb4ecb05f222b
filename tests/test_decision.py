"""The pure routing decision, exhaustively and as a property."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing_db._decide.classify import Kind
from routing_db._decide.context import Scope
from routing_db._decide.decision import DefaultRole, RoleOption, Route, decide

SCOPES = list(Scope)
KINDS = list(Kind)
OPTIONS: list[RoleOption] = [None, "writer", "replica"]
DEFAULTS: list[DefaultRole] = ["writer", "auto"]


def expected(
    kind: Kind, scope: Scope, option: RoleOption, default: DefaultRole, wrote: bool
) -> Route:
    """The design's rules 1-5, written independently of the implementation."""
    if scope is Scope.WRITER or option == "writer":
        return Route.WRITER
    if kind is Kind.WRITE:
        return Route.REFUSE if scope is Scope.READ_ONLY else Route.WRITER
    if wrote:
        return Route.WRITER
    if scope is Scope.READ_ONLY:
        return Route.REPLICA
    if kind is Kind.READ and (default == "auto" or option == "replica"):
        return Route.REPLICA
    return Route.WRITER


@pytest.mark.parametrize(
    ("kind", "scope", "option", "default", "wrote"),
    list(itertools.product(KINDS, SCOPES, OPTIONS, DEFAULTS, [False, True])),
)
def test_every_combination(
    kind: Kind, scope: Scope, option: RoleOption, default: DefaultRole, wrote: bool
) -> None:
    got = decide(kind, scope=scope, option=option, default_role=default, wrote=wrote)
    assert got is expected(kind, scope, option, default, wrote)


@given(
    scope=st.sampled_from(SCOPES),
    option=st.sampled_from(OPTIONS),
    default=st.sampled_from(DEFAULTS),
    wrote=st.booleans(),
)
def test_no_write_ever_goes_to_a_replica(
    scope: Scope, option: RoleOption, default: DefaultRole, wrote: bool
) -> None:
    route = decide(
        Kind.WRITE, scope=scope, option=option, default_role=default, wrote=wrote
    )
    assert route is not Route.REPLICA


@given(
    kind=st.sampled_from(KINDS),
    option=st.sampled_from(OPTIONS),
    default=st.sampled_from(DEFAULTS),
    wrote=st.booleans(),
)
def test_use_writer_always_wins(
    kind: Kind, option: RoleOption, default: DefaultRole, wrote: bool
) -> None:
    route = decide(
        kind, scope=Scope.WRITER, option=option, default_role=default, wrote=wrote
    )
    assert route is Route.WRITER


@given(
    kind=st.sampled_from(KINDS),
    scope=st.sampled_from(SCOPES),
    option=st.sampled_from(OPTIONS),
    default=st.sampled_from(DEFAULTS),
)
def test_after_a_write_nothing_reads_a_replica(
    kind: Kind, scope: Scope, option: RoleOption, default: DefaultRole
) -> None:
    route = decide(kind, scope=scope, option=option, default_role=default, wrote=True)
    assert route is not Route.REPLICA


def test_default_role_writer_without_flags_is_a_plain_session() -> None:
    for kind in KINDS:
        for wrote in (False, True):
            assert (
                decide(
                    kind,
                    scope=Scope.NONE,
                    option=None,
                    default_role="writer",
                    wrote=wrote,
                )
                is Route.WRITER
            )


def test_a_read_inside_read_only_before_any_write_goes_to_a_replica() -> None:
    for kind, default in itertools.product(KINDS, DEFAULTS):
        route = decide(
            kind, scope=Scope.READ_ONLY, option=None, default_role=default, wrote=False
        )
        assert route is (Route.REFUSE if kind is Kind.WRITE else Route.REPLICA)


def test_a_known_read_with_default_role_auto_goes_to_a_replica() -> None:
    for kind in KINDS:
        route = decide(
            kind, scope=Scope.NONE, option=None, default_role="auto", wrote=False
        )
        assert route is (Route.REPLICA if kind is Kind.READ else Route.WRITER)


def test_unknown_connection_request_only_goes_to_a_replica_under_read_only() -> None:
    assert (
        decide(
            Kind.CONNECTION,
            scope=Scope.NONE,
            option=None,
            default_role="auto",
            wrote=False,
        )
        is Route.WRITER
    )
    assert (
        decide(
            Kind.CONNECTION,
            scope=Scope.READ_ONLY,
            option=None,
            default_role="writer",
            wrote=False,
        )
        is Route.REPLICA
    )

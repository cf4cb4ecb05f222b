"""Patroni's verdict from its members' ``/cluster`` answers (no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from routing_db import ConfigurationError
from routing_db._topology.patroni import SILENT, check_rest_urls, judge

URLS = [f"http://127.0.0.1:800{i}" for i in range(3)]


def member(
    name: str, role: str, state: str, timeline: int | None = 1, **tags: Any
) -> dict[str, Any]:
    number = int(name[-1])
    return {
        "name": name,
        "role": role,
        "state": state,
        "host": "127.0.0.1",
        "port": 5430 + number,
        "timeline": timeline,
        "api_url": f"http://127.0.0.1:800{number}/patroni",
        "tags": tags,
    }


def cluster(*members: dict[str, Any]) -> dict[str, Any]:
    return {"members": list(members), "scope": "test"}


HEALTHY = cluster(
    member("pg0", "leader", "running"),
    member("pg1", "replica", "streaming"),
    member("pg2", "replica", "streaming"),
)


def test_every_member_names_the_leader() -> None:
    view = judge([(url, HEALTHY) for url in URLS])
    assert view.known and view.leader is not None and view.leader.name == "pg0"
    assert view.member("127.0.0.1", 5431, "x") is not None
    assert view.leads(view.member("127.0.0.1", 5430, "x"))


def test_no_answer_is_no_verdict() -> None:
    view = judge([(url, None) for url in URLS])
    assert not view.known and view.leader is None


def test_one_member_that_saw_the_lease_expire_wins() -> None:
    expired = cluster(
        member("pg1", "replica", "streaming"), member("pg2", "replica", "streaming")
    )
    view = judge([(URLS[0], None), (URLS[1], HEALTHY), (URLS[2], expired)])
    assert view.known and view.leader is None


def test_a_leader_whose_own_patroni_is_silent_is_not_the_leader() -> None:
    answers = [(URLS[0], None), (URLS[1], HEALTHY), (URLS[2], HEALTHY)]
    # Silent just now (one slow answer): still the leader.
    assert judge(answers, {"127.0.0.1:8000": 0.4}).leader is not None
    # Silent for longer than SILENT (hung, as HAProxy would mark it down).
    assert judge(answers, {"127.0.0.1:8000": SILENT + 0.1}).leader is None
    # Never heard at all.
    assert judge(answers).leader is None


def test_different_leaders_are_settled_by_the_newest_timeline() -> None:
    newer = cluster(
        member("pg0", "replica", "starting", timeline=1),
        member("pg1", "leader", "running", timeline=2),
        member("pg2", "replica", "streaming", timeline=2),
    )
    view = judge([(URLS[0], HEALTHY), (URLS[1], newer), (URLS[2], HEALTHY)])
    assert view.leader is not None and view.leader.name == "pg1"
    # The members as the view naming that leader lists them.
    old = view.member("127.0.0.1", 5430, "pg0")
    assert old is not None and not old.readable(2)
    tie = cluster(member("pg1", "leader", "running", timeline=1))
    assert judge([(URLS[0], HEALTHY), (URLS[1], tie)]).leader is None


@pytest.mark.parametrize(
    ("state", "timeline", "tags", "readable"),
    [
        ("streaming", 2, {}, True),
        ("running", 2, {}, True),  # replaying from the archive
        ("starting", 2, {}, False),  # restarted, not yet rejoined
        ("streaming", 1, {}, False),  # an older timeline: diverged
        ("stopped", 2, {}, False),
        ("streaming", 2, {"noloadbalance": True}, False),
    ],
)
def test_which_members_may_serve_reads(
    state: str, timeline: int, tags: dict[str, Any], readable: bool
) -> None:
    view = judge(
        [
            (
                URLS[1],
                cluster(
                    member("pg1", "leader", "running", timeline=2),
                    member("pg2", "replica", state, timeline=timeline, **tags),
                ),
            )
        ]
    )
    found = view.member("127.0.0.1", 5432, "pg2")
    assert found is not None and found.readable(2) is readable


def test_members_are_matched_by_address_then_by_name() -> None:
    view = judge([(URLS[0], HEALTHY)])
    by_address = view.member("127.0.0.1", 5432, "whatever")
    assert by_address is not None and by_address.name == "pg2"
    by_name = view.member("db.example", 5432, "pg1")
    assert by_name is not None and by_name.name == "pg1"
    assert view.member("db.example", 5432, "nope") is None


@pytest.mark.parametrize(
    "urls", [[], "http://h:8008", ["h:8008"], ["ftp://h:8008"], ["http://"]]
)
def test_rest_urls_are_checked(urls: Any) -> None:
    with pytest.raises(ConfigurationError, match="patroni"):
        check_rest_urls(urls)


def test_rest_urls_are_kept_without_a_trailing_slash() -> None:
    assert check_rest_urls(["http://h:8008/"]) == ["http://h:8008"]

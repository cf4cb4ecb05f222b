"""The Patroni suite (``make test-patroni``, its own CI step): every test
here is marked ``patroni``, which ``make test`` leaves out."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``patroni``."""
    for item in items:
        if "tests/patroni/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.patroni)

"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import ForgeServer


@pytest.fixture
def forge() -> Iterator[ForgeServer]:
    """Gitea's commit-status API, played by a stand-in that checks the documented request shapes."""
    server = ForgeServer("gitea")
    yield server
    server.close()

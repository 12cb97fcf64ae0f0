"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.e2e.served import SECRET, Served
from tests.engines import module_engine, own_engine, ssh_host  # noqa: F401 -- fixtures: engines of the tests' own
from tests.helpers import ConfigRepo
from tests.servers import ForgeServer

#: start a `deployer serve` on the test's repository: serve(poll=..., key=..., **environment)
Serve = Callable[..., Served]


@pytest.fixture
def forge() -> Iterator[ForgeServer]:
    """Gitea's commit-status API, played by a stand-in that checks the documented request shapes."""
    server = ForgeServer("gitea")
    yield server
    server.close()


@pytest.fixture
def serve(tmp_path: Path, repo: ConfigRepo, age_key: AgeKey, forge: ForgeServer, prefix: str) -> Iterator[Serve]:
    """Start `deployer serve` on this test's repository (poll interval and other settings as given), with
    statuses going to the forge stand-in; every service started is stopped, and its log holds no secret.

    It asks for `prefix` so that it is stopped before the prefix's containers are removed: a service still
    polling would otherwise deploy them again after the cleanup (a failed test left them running)."""
    started: list[Served] = []

    def start(*, poll: int = 0, key: AgeKey | None = age_key, **extra: str) -> Served:
        # a transient failure is retried after 2 s here, not the 10 s operators get: tests about the
        # backoff itself say DEPLOYER_RETRY_BACKOFF="10"
        extra = {"DEPLOYER_RETRY_BACKOFF": "2", **extra}
        extra = {"DEPLOYER_FORGE": "gitea", "DEPLOYER_FORGE_API_URL": forge.api_url, **extra}  # or another forge's
        env = tool_environ(tmp_path, key, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                           DEPLOYER_FORGE_TOKEN=forge.token, DEPLOYER_POLL_INTERVAL=str(poll), **extra)  # fmt: skip
        served = Served(env, log=tmp_path / f"serve-{len(started)}.log")
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
        assert SECRET not in served.log()

"""A `deployer serve` killed with SIGKILL after a deployment finished, while the forge was down: its
final statuses and its audit events were recorded with its end, so a restarted service sends them.
Real gunicorn, deploy worker, git, compose and engine; the forge is tests/servers.py's stand-in."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import Served, versions, wait_for
from tests.helpers import ConfigRepo
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def kill_hard(served: Served) -> None:
    """SIGKILL the gunicorn master, its web workers and its deploy worker: nothing runs a finally."""
    subprocess.run(["pkill", "-KILL", "-P", str(served.process.pid)], check=False)
    served.process.send_signal(signal.SIGKILL)
    served.process.wait(timeout=30)


def test_final_statuses_survive_a_kill_while_the_forge_is_down(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    name = f"{prefix}-app"
    head = versions(repo, name, value="1")
    forge.fail_next = 10**6  # every status answered 503: they wait in the outbox
    served = serve()
    deployment_id = served.push(head)
    assert served.finished(deployment_id)["state"] == "succeeded"
    assert forge.latest(head) == {}
    kill_hard(served)

    forge.fail_next = 0
    again = serve()
    wait_for(lambda: forge.latest(head) == {"deployer": "success", f"deployer/{name}": "success"}, timeout=60,
             what="the final statuses after the restart")  # fmt: skip
    events = [e["event"] for e in again.audit() if e["deployment_id"] == deployment_id]
    assert events.count("deployment.finished") == 1 and events[0] == "deployment.queued"
    assert forge.errors == []

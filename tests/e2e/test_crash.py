"""A `deployer serve` killed with SIGKILL after a deployment finished, while the forge was down: its
final statuses and its audit events were recorded with its end, so a restarted service sends them.
Real gunicorn, deploy worker, git, compose and engine; the forge is tests/servers.py's stand-in."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import SECRET, Served, http, versions, wait_for
from tests.helpers import ConfigRepo
from tests.loki import LokiServer
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


def test_every_event_reaches_loki_once_in_effect_across_an_outage_and_a_kill(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    """Loki down (503) when a deployment runs, the service SIGKILLed, restarted, Loki back: every event of
    both deployments is in Loki, none lost, resends kept once; no secret value in anything shipped."""
    loki = LokiServer(tenant="ops")
    try:
        name = f"{prefix}-app"
        first = versions(repo, name, value="1")
        loki.script = [503] * 4
        served = serve(DEPLOYER_LOKI_URL=loki.url, DEPLOYER_LOKI_TENANT="ops")
        one = served.push(first)
        assert served.finished(one)["state"] == "succeeded"
        ready = wait_for(lambda: (r := http("GET", f"{served.base}/readyz")[1])["warnings"] and r, timeout=30,
                         what="the outage in /readyz")  # fmt: skip
        assert "audit events not shipped to Loki: HTTP 503" in ready["warnings"][0]
        kill_hard(served)
        again = serve(DEPLOYER_LOKI_URL=loki.url, DEPLOYER_LOKI_TENANT="ops")
        second = versions(repo, name, value="2")
        two = again.push(second, before=first)
        assert again.finished(two)["state"] == "succeeded"
        recorded = again.audit()
        wait_for(lambda: len(loki.lines()) == len(again.audit()), timeout=60, what="every event in Loki")
        shipped = loki.lines()
        assert sorted(map(json.dumps, shipped)) == sorted(map(json.dumps, again.audit()))
        assert {e["deployment_id"] for e in shipped if e["event"] == "deployment.finished"} == {one, two}
        assert len(recorded) <= len(shipped) and loki.errors == []
        assert SECRET not in json.dumps(shipped)
    finally:
        loki.close()

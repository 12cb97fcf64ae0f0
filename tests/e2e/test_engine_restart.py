"""The Docker engine stopped mid-deploy and started again, through a real `deployer serve`.

The engine is a second real dockerd of the test's own (its own socket, data root and exec root), so
the test can stop it while `docker compose up` waits for health without touching the engine the rest
of the suite uses. The deployment in flight must end transient (not failed for good, not rolled back
to the old commit as if the new one were broken), and once the engine is back the new commit runs and
gets its final status: nothing stuck `running`.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import wait_for
from tests.engines import Engine
from tests.helpers import ConfigRepo, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def test_the_engine_stopped_during_the_health_wait_and_started_again_is_retried_not_rolled_back(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, own_engine: Engine
) -> None:
    name = f"{prefix}-app"
    repo.stack(name, {"main": service(environment={"VERSION": "1"})})
    old = repo.commit("v1")
    served = serve(poll=1, DOCKER_HOST=own_engine.host)
    assert served.finished(served.push(old))["state"] == "succeeded"

    repo.stack(name, {"main": service(environment={"VERSION": "2"}, healthy_after=6)},
               deployer={"wait_timeout": 60})  # fmt: skip
    new = repo.commit("v2: healthy after 6 s")
    first = served.push(new, before=old)
    wait_for(lambda: any(s["state"] == "running" for s in served.deployment(first)["stacks"]), timeout=60,
             what="up to be waiting for health")  # fmt: skip
    time.sleep(1.5)  # the new container exists and is starting
    own_engine.stop()
    interrupted = served.finished(first, timeout=120)
    time.sleep(2)  # the engine stays away for a while, as a restarting Docker does
    own_engine.start()

    assert interrupted["state"] == "failed", interrupted
    assert interrupted["transient"] is True, interrupted
    [stack] = interrupted["stacks"]
    assert stack["state"] == "failed", stack  # not rolled_back: the new commit was never shown broken
    assert not [e for e in served.audit() if e["event"] == "stack.rolled_back"]

    wait_for(lambda: served.deployed(name) == new, timeout=120, what="the retry once the engine is back")
    assert own_engine.env(name)["VERSION"] == "2"
    assert all(d["state"] in ("succeeded", "failed", "superseded") for d in served.deployments())
    wait_for(
        lambda: forge.latest(new).get("deployer") == "success",
        timeout=30,
        what=f"the final status: {[(p.context, p.state, p.description) for p in forge.posted if p.sha == new]}",
    )
    assert forge.latest(new).get(f"deployer/{name}") == "success"

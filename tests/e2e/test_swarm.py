"""Swarm stacks (`x-deployer.engine: swarm`) through a real `deployer serve`, on a real one-node swarm.

The swarm is a second dockerd of the test's own (tests/engines.py) made a manager with `docker swarm
init`; the suite's engine is never put in swarm mode. Each test deploys with `docker stack deploy`,
then reads the result from that engine itself: services, their specs' environment, their update state.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.e2e.conftest import Serve
from tests.e2e.served import wait_for
from tests.engines import Engine
from tests.helpers import TEST_IMAGE, ConfigRepo
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def swarm_service(*, value: str, healthy: bool = True, failure_action: str = "rollback") -> dict[str, Any]:
    """A one-replica busybox service whose healthcheck passes (or never does), updated start-first."""
    check = {"test": ["CMD", "true" if healthy else "false"], "interval": "1s", "timeout": "1s", "retries": 2}
    update = {"order": "start-first", "monitor": "3s", "failure_action": failure_action}
    return {
        "image": TEST_IMAGE,
        "command": ["sh", "-c", "while :; do sleep 3600; done"],
        "environment": {"VALUE": value, "TOKEN": "${TOKEN}"},
        "init": True,
        "stop_grace_period": "1s",
        "healthcheck": check,
        "deploy": {"replicas": 1, "update_config": update},
    }


def validate(env: dict[str, str], repo: ConfigRepo) -> subprocess.CompletedProcess[str]:
    argv = ["deployer", "validate", "--allow-placeholders", "--repo", str(repo.path)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=120)


@pytest.fixture
def swarm(module_engine: Engine) -> Engine:
    """The module's engine, a one-node swarm manager from its first use on."""
    if module_engine.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() != "active":
        module_engine.swarm_init()
    return module_engine


def write(repo: ConfigRepo, name: str, **service: Any) -> None:
    repo.stack(name, {"app": swarm_service(**service)}, deployer={"engine": "swarm", "wait_timeout": 60,
                                                                  "secrets": [f"secrets/{name}.env"]})  # fmt: skip


def test_a_swarm_stack_deploys_with_its_secrets_and_converges(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, swarm: Engine
) -> None:
    name = f"{prefix}-sw"
    repo.secret(f"secrets/{name}.env", {"TOKEN": "swarm-token-value-1"})
    write(repo, name, value="1")
    first = repo.commit("a swarm stack")
    served = serve(DOCKER_HOST=swarm.host)

    done = served.finished(served.push(first))
    assert done["state"] == "succeeded", done
    [service] = swarm.services(name).values()
    assert service["env"] == {"VALUE": "1", "TOKEN": "swarm-token-value-1"}  # interpolated from the secret
    assert service["tasks"] == 1
    wait_for(lambda: forge.latest(first).get("deployer") == "success", timeout=30, what="the final status")
    assert forge.latest(first).get(f"deployer/{name}") == "success"

    write(repo, name, value="2")
    second = repo.commit("v2")
    assert served.finished(served.push(second, before=first))["state"] == "succeeded"
    assert [s["env"]["VALUE"] for s in swarm.services(name).values()] == ["2"]
    stacks = {s["name"]: s for s in served.get("/api/stacks")}
    assert stacks[name]["deployed_commit"] == second
    for text in (served.log(), json.dumps(served.audit()), (served.state / "state.db").read_bytes().decode("latin-1"),
                 json.dumps(served.deployments()), json.dumps([p.description for p in forge.posted])):  # fmt: skip
        assert "swarm-token-value-1" not in text  # in the service's spec, where interpolation puts it; nowhere else


@pytest.mark.parametrize("failure_action", ["rollback", "pause"])
def test_an_update_that_fails_its_healthcheck_is_rolled_back_by_swarm_and_reported_so(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, swarm: Engine, failure_action: str
) -> None:
    """With `failure_action: rollback` Swarm rolls back itself and the CLI exits 0; with `pause` (Swarm's
    default) the update stops half-way and the deployer runs `docker service rollback`. Both: rolled_back."""
    name = f"{prefix}-sw"
    repo.secret(f"secrets/{name}.env", {"TOKEN": "swarm-token-value-2"})
    write(repo, name, value="good", failure_action=failure_action)
    good = repo.commit("good")
    served = serve(DOCKER_HOST=swarm.host)
    assert served.finished(served.push(good))["state"] == "succeeded"

    write(repo, name, value="bad", healthy=False, failure_action=failure_action)
    bad = repo.commit("bad: never healthy")
    done = served.finished(served.push(bad, before=good), timeout=240)

    assert done["state"] == "failed", done
    [stack] = done["stacks"]
    assert stack["state"] == "rolled_back", stack
    assert "Swarm rolled back" in stack["error"], stack
    [service] = swarm.services(name).values()
    assert service["env"]["VALUE"] == "good"  # the previous spec runs again
    assert service["update"] == "rollback_completed"
    wait_for(lambda: forge.latest(bad).get("deployer") == "failure", timeout=30, what="the final status")
    said = [p.description for p in forge.posted if (p.sha, p.context) == (bad, f"deployer/{name}")]
    assert said[-1].startswith(f"rolled back to {good[:12]}"), said
    assert [e["stack"] for e in served.audit() if e["event"] == "stack.rolled_back"] == [name]
    assert served.deployed(name) == good


def test_a_swarm_stack_on_an_engine_that_is_not_a_swarm_manager_is_refused_before_anything_changes(
    serve: Serve, repo: ConfigRepo, prefix: str, own_engine: Engine, tmp_path: Path, age_key: AgeKey
) -> None:
    name = f"{prefix}-sw"
    repo.secret(f"secrets/{name}.env", {"TOKEN": "swarm-token-value-3"})
    write(repo, name, value="1")
    first = repo.commit("a swarm stack, no swarm")
    served = serve(DOCKER_HOST=own_engine.host)

    done = served.finished(served.push(first))
    assert done["state"] == "failed", done
    [stack] = done["stacks"]
    assert "not part of a swarm" in stack["error"] and "x-deployer.engine" in stack["error"], stack
    assert "swarm-token-value-3" not in str(done)
    assert own_engine.docker("service", "ls", check=False).returncode != 0  # still no swarm: nothing made

    checked = subprocess.run(["deployer", "validate", "--repo", str(repo.path)], capture_output=True, text=True,
                             check=False, env=tool_environ(tmp_path, age_key, DOCKER_HOST=own_engine.host))  # fmt: skip
    assert checked.returncode == 2, checked
    assert f"stacks/{name}/compose.yaml: x-deployer.engine: swarm" in checked.stderr


def test_validate_names_each_key_swarm_ignores_and_refuses_what_it_rejects(
    repo: ConfigRepo, prefix: str, swarm: Engine, tmp_path: Path, age_key: AgeKey
) -> None:
    name = f"{prefix}-sw"
    spec = swarm_service(value="1") | {"container_name": "fixed", "restart": "always", "build": ".",
                                       "depends_on": ["other"]}  # fmt: skip
    other = {"image": TEST_IMAGE, "command": ["sleep", "3600"]}
    repo.secret(f"secrets/{name}.env", {"TOKEN": "t"})
    repo.stack(name, {"app": spec, "other": other}, deployer={"engine": "swarm", "secrets": [f"secrets/{name}.env"]})
    env = tool_environ(tmp_path, age_key, DOCKER_HOST=swarm.host)
    checked = validate(env, repo)
    assert checked.returncode == 0, checked
    compose = f"stacks/{name}/compose.yaml"
    for key in ("build", "container_name", "restart", "depends_on"):
        assert f"deployer: warning: {compose}: services.app.{key}: ignored by docker stack deploy" in checked.stderr

    repo.stack(name, {"app": spec | {"mem_limit": "10m"}}, deployer={"engine": "swarm",
                                                                     "secrets": [f"secrets/{name}.env"]})  # fmt: skip
    refused = validate(env, repo)
    assert refused.returncode == 2, refused
    assert f"{compose}: services.app.mem_limit: refused by docker stack deploy: use deploy.resources" in refused.stderr


def test_a_removed_swarm_stack_is_brought_down_with_docker_stack_rm_under_prune(
    serve: Serve, repo: ConfigRepo, prefix: str, swarm: Engine
) -> None:
    name = f"{prefix}-sw"
    repo.secret(f"secrets/{name}.env", {"TOKEN": "swarm-token-value-4"})
    write(repo, name, value="1")
    first = repo.commit("a swarm stack")
    served = serve(DOCKER_HOST=swarm.host, DEPLOYER_PRUNE="true")
    assert served.finished(served.push(first))["state"] == "succeeded"
    assert swarm.services(name)

    repo.remove(f"stacks/{name}")
    gone = repo.commit("remove it")
    done = served.finished(served.push(gone, before=first))
    assert done["state"] == "succeeded", done
    assert [(s["name"], s["action"]) for s in done["stacks"]] == [(name, "remove")]
    assert swarm.services(name) == {}

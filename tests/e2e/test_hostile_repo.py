"""A hostile commit pushed to the deploying branch, through a real `deployer serve`: it fails at plan, its
commit status is `error` naming the file, and no stack changes. The catalog's refusals one by one, and the
memory of `deployer validate` / `plan` on each: tests/component/test_hostile_repo.py."""

from __future__ import annotations

import pytest

from tests.conftest import AgeKey
from tests.e2e.conftest import Serve
from tests.e2e.served import container_env, container_id, wait_for
from tests.helpers import ConfigRepo, laughs, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def test_a_yaml_bomb_and_a_symlink_to_the_age_key_fail_at_plan_and_change_no_stack(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, age_key: AgeKey
) -> None:
    name = f"{prefix}-app"
    repo.stack(name, {"main": service(environment={"VERSION": "1"})})
    good = repo.commit("v1")
    served = serve()
    assert served.finished(served.push(good))["state"] == "succeeded"
    running = container_id(name)

    repo.stack(name, {"main": service(environment={"VERSION": "2"})})  # would redeploy, were the commit sound
    repo.write(f"stacks/{prefix}-bomb/compose.yaml", laughs())
    (repo.path / f"stacks/{prefix}-key").mkdir()
    (repo.path / f"stacks/{prefix}-key/compose.yaml").symlink_to(age_key.path)
    evil = repo.commit("hostile")
    failed = served.finished(served.push(evil, before=good), timeout=60)

    assert (failed["state"], failed["error_reason"], failed["transient"]) == ("failed", "PlanInvalid", False), failed
    assert failed["error"].startswith(f"stacks/{prefix}-bomb/compose.yaml: cannot be read as YAML: expands to more "
                                      "than 100000 nodes once its aliases are resolved")  # fmt: skip
    assert failed["error"].endswith("(and 1 more)")
    assert failed["stacks"] == []
    assert (container_id(name), container_env(name)["VERSION"], served.deployed(name)) == (running, "1", good)
    wait_for(lambda: forge.latest(evil).get("deployer") == "error", timeout=30, what="the plan error's status")
    status = [p for p in forge.posted if p.sha == evil and p.context == "deployer"][-1]
    assert status.description.startswith(f"not deployed: stacks/{prefix}-bomb/compose.yaml: cannot be read as YAML")
    key = age_key.path.read_text().split("AGE-SECRET-KEY-")[1].strip()
    assert key not in served.log() + str(served.deployments()) + str(served.audit())

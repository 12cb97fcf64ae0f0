"""`deployer pause STACK` / `resume STACK` beside a running `deployer serve`: a paused stack is left alone by
pushes and polls (others deploy), says so in /api/stacks and the stacks page, and follows the branch again
once resumed; each is recorded with its actor."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.e2e.conftest import Serve
from tests.e2e.served import container_env, versions, wait_for
from tests.helpers import ConfigRepo

pytestmark = pytest.mark.usefixtures("engine")


def cli(tmp_path: Path, age_key: AgeKey, *args: str) -> subprocess.CompletedProcess[str]:
    env = tool_environ(tmp_path, age_key, USER="ops-person")
    return subprocess.run(["deployer", *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_a_paused_stack_is_left_alone_until_resumed(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path, age_key: AgeKey
) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    first = versions(repo, a, b, value="1")
    served = serve(poll=1)
    assert served.finished(served.push(first))["state"] == "succeeded"

    paused = cli(tmp_path, age_key, "pause", a, "--reason", "debugging by hand")
    assert paused.returncode == 0 and f"{a}: paused" in paused.stdout, paused
    assert cli(tmp_path, age_key, "pause", a).stdout.startswith(f"{a}: was paused already")
    stacks = {s["name"]: s for s in served.get("/api/stacks")}
    assert (stacks[a]["paused"], stacks[b]["paused"]) == (True, False)
    with urllib.request.urlopen(f"{served.base}/stacks", timeout=10) as answer:  # noqa: S310 -- loopback
        assert "paused by ops-person: debugging by hand" in answer.read().decode()

    second = versions(repo, a, b, value="2")
    done = served.finished(served.push(second, before=first))
    assert done["state"] == "succeeded", done
    assert [s["name"] for s in done["stacks"]] == [b]  # the paused stack is not even planned
    assert (container_env(a)["VERSION"], container_env(b)["VERSION"]) == ("1", "2")
    wait_for(lambda: served.get("/api/branch")["why"].startswith("converged"), timeout=30,
             what="the poll to count the paused stack converged (no redeploy loop)")  # fmt: skip
    assert served.deployments()[0]["id"] == done["id"]  # the poll queued nothing for the paused stack

    resumed = cli(tmp_path, age_key, "resume", a)
    assert resumed.returncode == 0 and f"{a}: resumed" in resumed.stdout, resumed
    wait_for(lambda: served.deployed(a) == second, timeout=60, what="the poll to deploy the resumed stack")
    assert container_env(a)["VERSION"] == "2"
    events = [(e["event"], e["stack"], e["actor"]) for e in served.audit() if e["event"].startswith("stack.")
              and e["event"] in ("stack.paused", "stack.resumed")]  # fmt: skip
    assert events == [("stack.paused", a, "ops-person"), ("stack.resumed", a, "ops-person")]
    assert [e["reason"] for e in served.audit() if e["event"] == "stack.paused"] == ["debugging by hand"]


def test_pausing_a_stack_that_was_never_deployed_is_bad_input(tmp_path: Path, age_key: AgeKey) -> None:
    result = cli(tmp_path, age_key, "pause", "nosuchstack")
    assert result.returncode == 2
    assert "no stack 'nosuchstack' has been deployed" in result.stderr

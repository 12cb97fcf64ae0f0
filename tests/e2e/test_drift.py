"""Drift beside a running `deployer serve` (DEPLOYER_DRIFT_INTERVAL=1), made for real with the docker CLI as an
operator would: a container stopped, one recreated by hand with another environment, one added to a project.
Seen in /api/stacks, the stacks page, /metrics and `deployer status`, recorded as `stack.drifted`; with
DEPLOYER_DRIFT=repair repaired by redeploying the stack's last good commit (trigger `drift`), at most
DEPLOYER_DRIFT_MAX_REPAIRS times an hour, and never for a paused stack."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AgeKey, tool_environ
from tests.e2e.conftest import Serve
from tests.e2e.served import Served, container_env, container_id, versions, wait_for
from tests.helpers import TEST_IMAGE, ConfigRepo, service

pytestmark = pytest.mark.usefixtures("engine")


def docker(*argv: str) -> str:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def cli(tmp_path: Path, age_key: AgeKey, *args: str) -> subprocess.CompletedProcess[str]:
    env = tool_environ(tmp_path, age_key, USER="ops-person")
    return subprocess.run(["deployer", *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def drift(served: Served) -> dict[str, list[dict[str, Any]]]:
    return {s["name"]: s["drift"] for s in served.get("/api/stacks")}


def kinds(served: Served, name: str) -> list[str]:
    return [f["kind"] for f in drift(served)[name]]


def drifted_events(served: Served, name: str) -> list[dict[str, Any]]:
    return [e for e in served.audit() if e["event"] == "stack.drifted" and e["stack"] == name]


def test_drift_made_by_hand_is_seen_everywhere_and_only_reported(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path, age_key: AgeKey
) -> None:
    stopped, recreated, intruded = f"{prefix}-stopped", f"{prefix}-recreated", f"{prefix}-intruded"
    first = versions(repo, stopped, recreated, intruded, value="1")
    served = serve(DEPLOYER_DRIFT_INTERVAL="1")  # DEPLOYER_DRIFT defaults to report
    assert served.finished(served.push(first))["state"] == "succeeded"
    wait_for(lambda: served.get("/api/stacks") and all(f == [] for f in drift(served).values()), timeout=30,
             what="a first drift check that finds nothing")  # fmt: skip

    docker("stop", "--time", "1", container_id(stopped))
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    (by_hand / "compose.yaml").write_text(yaml.safe_dump({"services": {"main": service(environment={"VERSION": "x"})}}))
    docker("compose", "--project-name", recreated, "--file", str(by_hand / "compose.yaml"), "up", "--detach", "--wait")
    docker("run", "--detach", "--name", f"{intruded}-intruder", "--label", f"com.docker.compose.project={intruded}",
           "--label", "com.docker.compose.service=intruder", TEST_IMAGE, "sleep", "600")  # fmt: skip

    wait_for(lambda: (kinds(served, stopped), kinds(served, recreated), kinds(served, intruded))
             == (["stopped"], ["config_changed"], ["extra"]), timeout=30, what="the drift to be seen")  # fmt: skip
    [finding] = drift(served)[intruded]
    assert finding["container"] == f"{intruded}-intruder" and finding["service"] == "intruder"

    with urllib.request.urlopen(f"{served.base}/stacks", timeout=10) as answer:  # noqa: S310 -- loopback
        page = answer.read().decode()
    assert 'data-kind="stopped"' in page and 'data-kind="config_changed"' in page and 'data-kind="extra"' in page
    with urllib.request.urlopen(f"{served.base}/metrics", timeout=10) as answer:  # noqa: S310 -- loopback
        metrics = answer.read().decode()
    assert f'deployer_stack_drift{{kind="stopped",stack="{stopped}"}} 1.0' in metrics
    assert f'deployer_stack_drift{{kind="extra",stack="{intruded}"}} 1.0' in metrics
    assert "deployer_drift_check_duration_seconds " in metrics and "deployer_drift_check_cpu_seconds " in metrics
    status = cli(tmp_path, age_key, "status")
    assert status.returncode == 0, status
    [row] = [line for line in status.stdout.splitlines() if line.startswith(recreated)]
    assert "config_changed: container" in row

    event = drifted_events(served, stopped)[0]
    assert (event["result"], event["repair"], event["commit"], event["trigger"]) == ("drifted", "report", first,
                                                                                     "drift")  # fmt: skip
    assert [f["kind"] for f in event["findings"]] == ["stopped"]
    assert [d["trigger"] for d in served.deployments()] == ["webhook"]  # reported, never repaired

    docker("start", container_id_all(stopped))
    wait_for(lambda: kinds(served, stopped) == [], timeout=30, what="the restarted stack to count as converged")
    assert [e["result"] for e in drifted_events(served, stopped)] == ["drifted", "converged"]
    told = drifted_events(served, intruded)  # (a check may have caught the intruder created, not yet started)
    time.sleep(2)
    assert drifted_events(served, intruded) == told  # the same drift, checked every second, told once
    assert [f["kind"] for f in told[-1]["findings"]] == ["extra"]


def container_id_all(project: str) -> str:
    """The id of the one container of compose project `project`, running or not."""
    return docker("ps", "--all", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.ID}}")


def test_drift_is_repaired_from_the_last_good_commit_with_a_flap_guard_and_paused_stacks_left_alone(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path, age_key: AgeKey
) -> None:
    repaired, paused, other = f"{prefix}-repaired", f"{prefix}-paused", f"{prefix}-other"
    first = versions(repo, repaired, paused, other, value="1")
    served = serve(DEPLOYER_DRIFT="repair", DEPLOYER_DRIFT_INTERVAL="1", DEPLOYER_DRIFT_MAX_REPAIRS="2")
    assert served.finished(served.push(first))["state"] == "succeeded"
    second = versions(repo, other, value="2")  # the head moves on; `repaired` stays at its last good commit
    assert served.finished(served.push(second, before=first))["state"] == "succeeded"
    assert cli(tmp_path, age_key, "pause", paused, "--reason", "stopped on purpose").returncode == 0
    docker("stop", "--time", "1", container_id(paused))

    for attempt in (1, 2):
        before = container_id(repaired)
        docker("rm", "--force", before)
        wait_for(lambda n=attempt: len(repairs(served)) == n, timeout=60, what=f"repair {attempt} to be queued")
        done = served.finished(repairs(served)[0]["id"])
        assert done["state"] == "succeeded", done
        assert (done["commit"], done["trigger"], [s["name"] for s in done["stacks"]]) == (first, "drift", [repaired])
        assert container_id(repaired) not in ("", before) and container_env(repaired)["VERSION"] == "1"
        wait_for(lambda: kinds(served, repaired) == [], timeout=30, what="the repaired stack to have no drift")
    stacks = {s["name"]: s for s in served.get("/api/stacks")}
    assert stacks[repaired]["held"] is None and stacks[repaired]["deployed_commit"] == first  # never held

    docker("rm", "--force", container_id(repaired))  # a third time within the hour: the flap guard
    wait_for(lambda: kinds(served, repaired) == ["missing"], timeout=30, what="the third drift to be seen")
    last = drifted_events(served, repaired)[-1]
    assert last["repair"] == "not repaired: 2 repairs in the last hour (DEPLOYER_DRIFT_MAX_REPAIRS=2)", last
    time.sleep(3)  # three more checks of the same drift: still no repair, and not told again
    assert len(repairs(served)) == 2 and container_id(repaired) == ""
    assert drifted_events(served, repaired)[-1] == last

    assert drift(served)[paused] == [] and container_id(paused) == ""  # stopped on purpose: not drift, not repaired
    assert not any(e["event"] == "stack.drifted" for e in served.audit() if e.get("stack") == paused)
    assert all(paused not in [s["name"] for s in d["stacks"]] for d in repairs(served))


def repairs(served: Served) -> list[dict[str, Any]]:
    return [d for d in served.deployments() if d["trigger"] == "drift"]

"""Stacks on another Docker host (`x-deployer.docker_host: ssh://...`) through a real `deployer serve`.

The other host is a second real dockerd of the test's own behind a real sshd on loopback, with keys
the test makes (tests/engines.py): the docker CLI, compose and the docker SDK reach it over ssh as they
would an operator's NAS. The suite's own engine stays the deployer's local one, so each test can tell
which engine a stack landed on.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import Served, http, wait_for
from tests.engines import Engine, SshHost, make_tls, tls_engine
from tests.helpers import TEST_IMAGE, ConfigRepo, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def local_projects(prefix: str) -> set[str]:
    return _projects(["docker"], prefix)


def remote_projects(host: SshHost, prefix: str) -> set[str]:
    return _projects(["docker", "--host", host.engine.host], prefix)


def _projects(docker: list[str], prefix: str) -> set[str]:
    argv = [*docker, "ps", "--filter", "label=com.docker.compose.project", "--format",
            '{{.Label "com.docker.compose.project"}}']  # fmt: skip
    found = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return {p for p in found if p.startswith(prefix)}


def serve_with(serve: Serve, host: SshHost, **extra: str) -> Served:
    return serve(PATH=host.path, DEPLOYER_HOST_CHECK_INTERVAL="1", **extra)


def remote_env(host: SshHost, project: str) -> dict[str, str]:
    return _env(host.engine, project)


def test_a_stack_with_an_ssh_docker_host_runs_there_and_the_others_here(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, ssh_host: SshHost, tmp_path: Path
) -> None:
    local, remote = f"{prefix}-here", f"{prefix}-nas"
    data = tmp_path / "nas-data" / "app"
    repo.secret(f"secrets/{remote}.env", {"NAS_TOKEN": "nas-token-value-1"})
    repo.stack(local, {"main": service(environment={"V": "1"})})
    network = f"{prefix}-nas-net"
    repo.stack(remote, {"main": service(environment={"V": "1", "TOKEN": "${NAS_TOKEN}"}, networks=[network])},
               deployer={"docker_host": ssh_host.url, "secrets": [f"secrets/{remote}.env"], "networks": [network],
                         "directories": [{"path": str(data), "owner": "1234:2345", "mode": "0750"}]},
               networks={network: {"external": True}})  # fmt: skip
    first = repo.commit("one stack here, one on the nas")
    served = serve_with(serve, ssh_host)
    since = time.time()

    done = served.finished(served.push(first), timeout=180)
    assert done["state"] == "succeeded", done
    assert local_projects(prefix) == {local}
    assert remote_projects(ssh_host, prefix) == {remote}
    assert remote_env(ssh_host, remote)["TOKEN"] == "nas-token-value-1"
    for text in (served.log(), json.dumps(served.audit()), (served.state / "state.db").read_bytes().decode("latin-1")):
        assert "nas-token-value-1" not in text
    assert ssh_host.engine.docker("network", "inspect", network, check=False).returncode == 0  # made there
    assert subprocess.run(["docker", "network", "inspect", network], capture_output=True, check=False).returncode != 0
    # the directory was made by the other engine (a container of the stack's image there), owner and mode set
    assert (data.stat().st_uid, data.stat().st_gid, data.stat().st_mode & 0o777) == (1234, 2345, 0o750)
    events = ["events", "--since", str(int(since)), "--until", str(int(time.time()) + 1), "--filter",
              "event=destroy", "--format", "{{json .Actor.Attributes}}"]  # fmt: skip
    helpers = ssh_host.engine.docker(*events).stdout.splitlines()  # the --rm container that set owner and mode
    assert [json.loads(line)["image"] for line in helpers] == [TEST_IMAGE], helpers

    stacks = {s["name"]: s for s in served.get("/api/stacks")}
    assert (stacks[remote]["engine"], stacks[remote]["docker_host"]) == ("compose", ssh_host.url)
    assert (stacks[local]["docker_host"], stacks[local]["host"]) == (None, None)
    wait_for(lambda: (h := {s["name"]: s for s in served.get("/api/stacks")}[remote]["host"]) and h["ok"],
             timeout=30, what="the host check")  # fmt: skip
    with urllib.request.urlopen(f"{served.base}/metrics", timeout=10) as answer:  # noqa: S310 -- loopback
        metrics = answer.read().decode()
    assert f'deployer_engine_up{{host="{ssh_host.url}"}} 1.0' in metrics, metrics
    with urllib.request.urlopen(f"{served.base}/stacks", timeout=10) as answer:  # noqa: S310 -- loopback
        page = answer.read().decode()
    rows = {name: page.split(f'<tr data-stack="{name}">', 1)[1].split("</tr>", 1)[0] for name in (local, remote)}
    assert ssh_host.url in rows[remote] and ssh_host.url not in rows[local], rows  # "Runs on"
    assert "this host's engine" in rows[local], rows
    wait_for(lambda: forge.latest(first).get("deployer") == "success", timeout=30, what="the final status")


def test_a_host_that_goes_away_mid_deployment_fails_its_own_stack_only_and_is_retried_once_back(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, ssh_host: SshHost
) -> None:
    local, remote = f"{prefix}-here", f"{prefix}-nas"
    repo.stack(local, {"main": service(environment={"V": "1"})})
    repo.stack(remote, {"main": service(environment={"V": "1"})}, deployer={"docker_host": ssh_host.url})
    first = repo.commit("v1")
    served = serve_with(serve, ssh_host)
    assert served.finished(served.push(first), timeout=180)["state"] == "succeeded"

    repo.stack(local, {"main": service(environment={"V": "2"})})
    repo.stack(remote, {"main": service(environment={"V": "2"}, healthy_after=8)},
               deployer={"docker_host": ssh_host.url, "wait_timeout": 60})  # fmt: skip
    second = repo.commit("v2: the nas stack takes 8 s to be healthy")
    pushed = served.push(second, before=first)
    wait_for(lambda: any(s["name"] == remote and s["state"] == "running" for s in served.deployment(pushed)["stacks"]),
             timeout=60, what="the nas stack to be coming up")  # fmt: skip
    time.sleep(2)
    ssh_host.stop()  # the host goes away: sshd and every session through it
    done = served.finished(pushed, timeout=180)

    assert done["state"] == "failed" and done["transient"] is True, done
    by_name = {s["name"]: s for s in done["stacks"]}
    assert by_name[local]["state"] == "succeeded", by_name
    assert by_name[remote]["state"] == "failed", by_name  # not rolled back: the host, not the commit, failed
    wait_for(lambda: any(w.startswith(f"engine {ssh_host.url} not reachable") for w in _readyz(served)["warnings"]),
             timeout=30, what="readyz to name the host")  # fmt: skip
    assert _readyz(served)["status"] == "ready"  # the deployer's own engine answers: other stacks still deploy

    ssh_host.start()
    wait_for(lambda: served.deployed(remote) == second, timeout=180, what="the retry once the host is back")
    assert remote_env(ssh_host, remote)["V"] == "2"
    wait_for(lambda: forge.latest(second).get("deployer") == "success", timeout=60, what="the final status")


def test_a_refused_ssh_key_names_the_host_and_changes_nothing_elsewhere(
    serve: Serve, repo: ConfigRepo, prefix: str, ssh_host: SshHost
) -> None:
    local, remote = f"{prefix}-here", f"{prefix}-nas"
    repo.secret(f"secrets/{remote}.env", {"NAS_TOKEN": "nas-token-value-2"})
    repo.stack(local, {"main": service(environment={"V": "1"})})
    repo.stack(remote, {"main": service(environment={"TOKEN": "${NAS_TOKEN}"})},
               deployer={"docker_host": ssh_host.url, "secrets": [f"secrets/{remote}.env"]})  # fmt: skip
    first = repo.commit("v1")
    ssh_host.authorize(key="")  # the host no longer accepts the deployer's key
    served = serve_with(serve, ssh_host)

    done = served.finished(served.push(first), timeout=180)
    by_name = {s["name"]: s for s in done["stacks"]}
    assert by_name[local]["state"] == "succeeded", by_name
    assert by_name[remote]["state"] == "failed", by_name
    error = by_name[remote]["error"]
    assert ssh_host.url in error and "Permission denied" in error, error
    assert "nas-token-value-2" not in json.dumps(done) + served.log()
    assert remote_projects(ssh_host, prefix) == set()


def test_a_stack_moved_to_another_host_is_brought_down_where_it_ran_under_prune(
    serve: Serve, repo: ConfigRepo, prefix: str, ssh_host: SshHost
) -> None:
    name = f"{prefix}-moving"
    repo.stack(name, {"main": service(environment={"V": "1"})})
    first = repo.commit("here")
    served = serve_with(serve, ssh_host, DEPLOYER_PRUNE="true")
    assert served.finished(served.push(first), timeout=180)["state"] == "succeeded"
    assert local_projects(prefix) == {name}

    repo.stack(name, {"main": service(environment={"V": "1"})}, deployer={"docker_host": ssh_host.url})
    moved = repo.commit("to the nas")
    done = served.finished(served.push(moved, before=first), timeout=180)
    assert done["state"] == "succeeded", done
    assert remote_projects(ssh_host, prefix) == {name}
    assert local_projects(prefix) == set()  # never left running on both
    assert {s["name"]: s["docker_host"] for s in served.get("/api/stacks")} == {name: ssh_host.url}


def _readyz(served: Served) -> dict[str, Any]:
    found: dict[str, Any] = http("GET", f"{served.base}/readyz")[1]
    return found


def test_an_unknown_docker_context_is_bad_input_refused_before_anything_changes(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    local, remote = f"{prefix}-here", f"{prefix}-ctx"
    repo.stack(local, {"main": service(environment={"V": "1"})})
    repo.stack(remote, deployer={"docker_host": "no-such-context"})
    first = repo.commit("a stack on a context nobody made")
    served = serve(DOCKER_CONFIG=str(tmp_path / "docker-config"))  # an empty docker config: no contexts

    done = served.finished(served.push(first), timeout=120)
    assert done["state"] == "failed" and done["transient"] is False, done
    by_name = {s["name"]: s for s in done["stacks"]}
    assert (by_name[local]["state"], by_name[remote]["state"]) == ("skipped", "failed"), by_name
    error = by_name[remote]["error"]
    assert f"stacks/{remote}/compose.yaml: x-deployer.docker_host: no Docker context named 'no-such-context'" in error
    assert local_projects(prefix) == set()  # bad input: nothing deployed anywhere


def test_a_stack_on_a_docker_context_runs_on_the_engine_the_context_names(
    serve: Serve, repo: ConfigRepo, prefix: str, module_engine: Engine, tmp_path: Path
) -> None:
    """A context as `docker context create` makes it, in the deployer's DOCKER_CONFIG (how per-host TLS is given)."""
    config = tmp_path / "docker-config"
    argv = ["docker", "context", "create", f"{prefix}-nas", "--docker", f"host={module_engine.host}"]
    env = {**os.environ, "DOCKER_CONFIG": str(config)}
    made = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    assert made.returncode == 0, made.stderr
    name = f"{prefix}-ctx"
    repo.stack(name, {"main": service(environment={"V": "1"})}, deployer={"docker_host": f"{prefix}-nas"})
    first = repo.commit("a stack on a context")
    served = serve(DOCKER_CONFIG=str(config))

    done = served.finished(served.push(first), timeout=120)
    assert done["state"] == "succeeded", done
    assert _projects(["docker", "--host", module_engine.host], prefix) == {name}
    assert local_projects(prefix) == set()
    assert {s["name"]: s["docker_host"] for s in served.get("/api/stacks")} == {name: f"{prefix}-nas"}


def test_a_stack_on_a_tcp_engine_with_tls_runs_there_and_a_wrong_certificate_is_named(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    """tcp:// with TLS and client certificates (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), a real dockerd: the
    stack lands on it; with another CA's certificates the same stack fails naming the host."""
    with tls_engine(tmp_path / "tls") as (engine, url, certs):
        name, local = f"{prefix}-tls", f"{prefix}-here"
        repo.stack(name, {"main": service(environment={"V": "1"})}, deployer={"docker_host": url})
        repo.stack(local, {"main": service(environment={"V": "1"})})  # the TLS settings are not the local socket's
        first = repo.commit("a stack on a TLS engine, one here")
        served = serve(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(certs))
        done = served.finished(served.push(first), timeout=120)
        assert done["state"] == "succeeded", json.dumps(done)
        assert _projects(["docker", "--host", engine.host], prefix) == {name}
        assert local_projects(prefix) == {local}
        served.stop()

        _, strangers = make_tls(tmp_path / "other-ca")
        repo.stack(name, {"main": service(environment={"V": "2"})}, deployer={"docker_host": url})
        second = repo.commit("v2, pushed to a deployer holding another CA's certificates")
        wrong = serve(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(strangers))
        failed = wrong.finished(wrong.push(second, before=first), timeout=120)
        [stack] = failed["stacks"]  # only the TLS stack changed
        assert stack["state"] == "failed" and url in stack["error"], stack
        assert _env(engine, name)["V"] == "1"  # unchanged


def _env(engine: Engine, project: str) -> dict[str, str]:
    ids = engine.docker("ps", "--filter", f"label=com.docker.compose.project={project}", "-q").stdout.split()
    [inspected] = json.loads(engine.docker("inspect", *ids).stdout)
    return dict(e.split("=", 1) for e in inspected["Config"]["Env"])

"""The host policy through a real `deployer serve` and `deployer validate`: a pushed compose file that
mounts the Docker socket or a host path outside the allowed roots, or shares a host namespace, is refused
before anything starts, with the stack, service and key named (a secret in a path redacted), and every
other stack is left as it was; an operator allows exactly what a stack needs, for that stack only.
Real git, sops, age, compose and engine; the forge is tests/servers.py's stand-in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.e2e.conftest import Serve
from tests.e2e.served import wait_for
from tests.helpers import ConfigRepo, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")

HIDDEN = "/srv/policy-secret-path-8c1e"


def containers(project: str) -> list[str]:
    argv = ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.ID}}"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def hostile(repo: ConfigRepo, name: str, *, path: str = "${HOST_PATH}", **extra: object) -> None:
    """A stack that mounts the Docker socket and a host path (by default one its secrets hold), shares the
    host's process namespace and adds a capability (`privileged` itself cannot run in this sandbox)."""
    repo.secret("secrets/evil.env", {"HOST_PATH": HIDDEN})
    volumes = ["/var/run/docker.sock:/var/run/docker.sock", f"{path}:/hidden", "./conf:/conf:ro"]
    repo.stack(
        name,
        {"main": service(volumes=volumes, pid="host", cap_add=["NET_ADMIN"], **extra)},
        deployer={"secrets": ["secrets/evil.env"]},
    )


def test_a_push_that_takes_the_host_is_refused_before_anything_starts_and_says_why(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    web, evil = f"{prefix}-web", f"{prefix}-evil"
    repo.stack(web, {"main": service(environment={"VERSION": "1"})})
    first = repo.commit("web")
    served = serve()
    assert served.finished(served.push(first))["state"] == "succeeded"
    [web_container] = containers(web)

    repo.stack(web, {"main": service(environment={"VERSION": "2"})})
    hostile(repo, evil, env_file=["/etc/hostname"])  # a host file read into the container's environment
    bad = repo.commit("take the host")
    done = served.finished(served.push(bad, before=first))
    assert done["state"] == "failed"
    stacks = {s["name"]: s for s in done["stacks"]}
    error = stacks[evil]["error"]
    assert stacks[evil]["state"] == "failed"
    assert f"stacks/{evil}/compose.yaml: refused by the host policy: service main: volumes: uses host path " in error
    assert "/var/run/docker.sock" in error and "the Docker socket: root on the host" in error
    assert (
        "service main: pid: host shares the host's namespace, which only stacks in DEPLOYER_ALLOW_PRIVILEGED" in error
    )
    assert "service main: cap_add adds capabilities (NET_ADMIN)" in error
    assert "service main: env_file: uses host path /etc/hostname" in error
    assert HIDDEN not in error and "***" in error  # the path came from a secret
    assert "/conf" not in error  # inside its own folder: allowed
    assert stacks[web]["state"] == "skipped"  # bad input stops the deployment: nothing is half-applied
    assert containers(evil) == []
    assert containers(web) == [web_container]  # left as it was, not recreated
    final = wait_for(lambda: forge.latest(bad).get("deployer") not in (None, "pending") and forge.latest(bad),
                     what="the final status")  # fmt: skip
    assert final["deployer"] in ("failure", "error")
    assert all(HIDDEN not in p.description for p in forge.posted)
    assert HIDDEN not in served.log()
    assert HIDDEN not in str(served.audit())


def test_the_operator_allows_exactly_what_one_stack_needs(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey,
                                                          prefix: str) -> None:  # fmt: skip
    evil, other = f"{prefix}-evil", f"{prefix}-other"
    hostile(repo, evil, path=HIDDEN)  # validate has no key: the secret's value is a placeholder there
    repo.stack(other, {"main": service(volumes=["/var/run/docker.sock:/var/run/docker.sock"])})
    repo.commit("two stacks")
    allowed = f"/mnt/data,{evil}:/var/run/docker.sock,{evil}:{HIDDEN}"
    env = tool_environ(tmp_path, age_key, DEPLOYER_ALLOWED_BIND_ROOTS=allowed, DEPLOYER_ALLOW_PRIVILEGED=evil)
    result = subprocess.run(["deployer", "validate", "--repo", repo.url], capture_output=True, text=True, env=env,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 2
    # the other stack may not have what was allowed to one stack: exactly one line, naming it
    assert result.stderr.splitlines() == [
        f"deployer: error: stacks/{other}/compose.yaml: refused by the host policy: service main: volumes: uses host "
        f"path /var/run/docker.sock (which is /run/docker.sock) (the Docker socket: root on the host), outside the "
        f"stack's folder and DEPLOYER_ALLOWED_BIND_ROOTS (/mnt/data)"
    ] or result.stderr.splitlines() == [
        f"deployer: error: stacks/{other}/compose.yaml: refused by the host policy: service main: volumes: uses host "
        f"path /var/run/docker.sock (the Docker socket: root on the host), outside the stack's folder and "
        f"DEPLOYER_ALLOWED_BIND_ROOTS (/mnt/data)"
    ]  # /var/run is a link to /run on most hosts, not on all
    repo.stack(other, {"main": service()})
    repo.commit("other needs no socket")
    deployed = subprocess.run(["deployer", "deploy", "--repo", repo.url], capture_output=True, text=True, env=env,
                              timeout=300, check=False)  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert len(containers(evil)) == 1

"""The Docker engine stopped mid-deploy and started again, through a real `deployer serve`.

The engine is a second real dockerd of the test's own (its own socket, data root and exec root), so
the test can stop it while `docker compose up` waits for health without touching the engine the rest
of the suite uses. The deployment in flight must end transient (not failed for good, not rolled back
to the old commit as if the new one were broken), and once the engine is back the new commit runs and
gets its final status: nothing stuck `running`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import wait_for
from tests.helpers import TEST_IMAGE, ConfigRepo, require_tool, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


class Engine:
    """A dockerd of the test's own; start() and stop() it as an operator restarting Docker would.

    It runs in a network namespace of its own (nsenter: `ip netns exec` would remount /sys and hide the
    cgroups dockerd needs): a second dockerd in the host's namespace takes the host's
    networking with it (restarted, it deleted the real engine's docker0; its networks took subnets the
    real engine's use, and their bridges outlived it). Its containers need no network beyond their own.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dte", dir="/tmp"))  # unix socket paths are short
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.netns = self.root.name
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", require_tool("dockerd"), "--host", self.host,
                "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid")]  # fmt: skip
        log = (self.root / "dockerd.log").open("ab")
        self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, timeout=60, what="the test's dockerd to answer")

    def answers(self) -> bool:
        return self.docker("version", check=False).returncode == 0

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(timeout=60)
        self._process = None

    def docker(self, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "--host", self.host, *args], capture_output=True, text=stdin is None,
                              input=stdin, check=check, timeout=120)  # fmt: skip

    def env(self, project: str) -> dict[str, str]:
        ids = self.docker("ps", "--filter", f"label=com.docker.compose.project={project}", "-q").stdout.split()
        assert len(ids) == 1, ids
        lines = self.docker("inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", ids[0]).stdout
        return dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)


@pytest.fixture
def own_engine() -> Iterator[Engine]:
    links_before = set(Path("/sys/class/net").iterdir())
    engine = Engine()
    engine.start()
    image = subprocess.run(["docker", "save", TEST_IMAGE], capture_output=True, check=True).stdout
    subprocess.run(["docker", "--host", engine.host, "load", "--quiet"], input=image, capture_output=True, check=True)
    try:
        yield engine
    finally:
        if engine.answers():
            ids = engine.docker("ps", "-aq").stdout.split()
            if ids:
                engine.docker("rm", "--force", *ids, check=False)
        engine.stop()
        subprocess.run(["umount", "--recursive", "--lazy", str(engine.root / "data")], capture_output=True,
                       check=False)  # fmt: skip
        shutil.rmtree(engine.root, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", engine.netns], capture_output=True, check=False)
        links_after = set(Path("/sys/class/net").iterdir())
        assert links_before <= links_after, f"host network links deleted: {sorted(links_before - links_after)}"
        strays = {link.name for link in links_after - links_before if link.name.startswith("br-")} - _host_bridges()
        assert not strays, f"bridges left in the host's namespace: {sorted(strays)}"


def _host_bridges() -> set[str]:
    """The bridges of the real engine's networks (other tests may make some meanwhile): `br-<id[:12]>`."""
    ids = subprocess.run(["docker", "network", "ls", "--quiet", "--no-trunc"], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return {f"br-{network_id[:12]}" for network_id in ids}


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

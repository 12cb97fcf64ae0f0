"""The service as an operator runs it: `deployer serve` (real gunicorn and deploy worker processes),
a signed webhook over HTTP, a real Docker engine, and a forge status API stand-in (tests/servers.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.deliveries import push_payload, sign
from tests.helpers import ConfigRepo, service
from tests.servers import ForgeServer

SECRET = "e2e-hook-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)  # noqa: S310 -- loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 -- loopback http only
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_for(check, *, timeout: float = 120.0, what: str = "condition") -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def forge() -> Iterator[ForgeServer]:
    server = ForgeServer("gitea")
    yield server
    server.close()


@pytest.fixture
def served(tmp_path: Path, repo: ConfigRepo, age_key: AgeKey, forge: ForgeServer) -> Iterator[str]:
    port = free_port()
    env = tool_environ(
        tmp_path, age_key, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET, DEPLOYER_FORGE="gitea",
        DEPLOYER_FORGE_API_URL=forge.api_url, DEPLOYER_FORGE_TOKEN=forge.token, DEPLOYER_POLL_INTERVAL="0",
        DEPLOYER_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(["deployer", "serve", "--bind", f"127.0.0.1:{port}"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _alive(base), timeout=30, what="the service to listen")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _alive(base: str) -> bool:
    try:
        return http("GET", f"{base}/healthz")[0] == 200
    except OSError:
        return False


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


def _finished(base: str, deployment_id: str) -> dict[str, Any] | None:
    status, deployment = http("GET", f"{base}/api/deployments/{deployment_id}")
    assert status == 200
    return deployment if deployment["state"] in ("succeeded", "failed", "superseded") else None


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

"""A real `deployer serve` for end-to-end tests: started as an operator starts it, asked over HTTP.

The forge is tests/servers.py's ForgeServer (real forges cannot run here); gunicorn, the deploy
worker, git, sops, age and the Docker engine are real.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.deliveries import push_payload, sign
from tests.helpers import ROOT, TEST_IMAGE, ConfigRepo, audit_trail, require_tool, service

SECRET = "e2e-hook-secret"
FINISHED = ("succeeded", "failed", "superseded")


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


def wait_for(check: Callable[[], Any], *, timeout: float = 120.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def alive(base: str) -> bool:
    try:
        return http("GET", f"{base}/healthz")[0] == 200
    except (OSError, ValueError):  # not listening yet; a proxy's own "404 page not found" before its route loads
        return False


class Served:
    """One running `deployer serve` process and the vocabulary to drive it."""

    def __init__(self, env: dict[str, str], *, log: Path, forge: str = "gitea") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.forge = forge
        self.state = Path(env["DEPLOYER_STATE_DIR"])
        self.log_path = log
        self._log = log.open("w")
        env = {**env, "DEPLOYER_PUBLIC_URL": self.base}
        self.process = subprocess.Popen(["deployer", "serve", "--bind", f"127.0.0.1:{self.port}"], env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(lambda: alive(self.base), timeout=30, what="the service to listen")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()

    def get(self, path: str) -> Any:
        status, answer = http("GET", f"{self.base}{path}")
        assert status == 200, (path, status, answer)
        return answer

    def push(self, after: str, *, before: str = "1" * 40, branch: str = "main") -> str:
        """Deliver a signed push; return the queued deployment's id."""
        delivery = sign(self.forge, push_payload(self.forge, after=after, before=before, branch=branch), SECRET)
        status, answer = http("POST", f"{self.base}/webhook", body=delivery.body, headers=delivery.headers)
        assert status == 202, answer
        return str(answer["deployment_id"])

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/api/deployments/{deployment_id}")
        return found

    def finished(self, deployment_id: str, *, timeout: float = 120) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (d := self.deployment(deployment_id))["state"] in FINISHED and d,
            timeout=timeout, what=f"deployment {deployment_id} to finish",
        )  # fmt: skip
        return found

    def deployments(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get("/api/deployments?limit=100")
        return found

    def deployed(self, stack: str) -> str | None:
        """The commit /api/stacks says `stack` runs."""
        for record in self.get("/api/stacks"):
            if record["name"] == stack:
                return record["deployed_commit"]  # type: ignore[no-any-return]
        return None

    def audit(self) -> list[dict[str, Any]]:
        return audit_trail(self.state)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()


def container_env(project: str) -> dict[str, str]:
    """The environment of the one running container of compose project `project`."""
    argv = ["docker", "ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.ID}}"]
    ids = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == 1, f"{project}: expected one container, found {ids}"
    inspect = subprocess.run(["docker", "inspect", "--format", "{{json .Config.Env}}", ids[0]], capture_output=True,
                             text=True, check=True)  # fmt: skip
    return dict(item.split("=", 1) for item in json.loads(inspect.stdout))


def container_id(project: str) -> str:
    """The id of the running container of compose project `project` ('' when none)."""
    argv = ["docker", "ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.ID}}"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def versions(repo: ConfigRepo, *names: str, value: str) -> str:
    """Commit every named stack with VERSION=value; return the commit."""
    for name in names:
        repo.stack(name, {"main": service(environment={"VERSION": value})})
    return repo.commit(f"v{value}")


class Traefik:
    """The real traefik binary on loopback with the shipped middlewares and the deployer's routes
    (stacks/traefik/dynamic/), forward-auth sent to `outpost_url` and the deployer's service to `deployer_url`.

    The entry point is `websecure` in plain HTTP, with the shipped default `secure-headers@file`.
    """

    def __init__(self, tmp_path: Path, *, outpost_url: str, deployer_url: str, domain: str) -> None:
        shipped = ROOT / "stacks/traefik/dynamic"
        dynamic = tmp_path / "dynamic"
        dynamic.mkdir()
        for name, old, new in (("middlewares.yml", "http://authentik-server:9000", outpost_url),
                               ("deployer.yml", "http://host.docker.internal:8000", deployer_url)):  # fmt: skip
            text = (shipped / name).read_text()
            assert old in text, f"{name} no longer names {old}"
            (dynamic / name).write_text(text.replace(old, new))
        port = free_port()
        static = {"entryPoints": {"websecure": {"address": f"127.0.0.1:{port}",
                                                "http": {"middlewares": ["secure-headers@file"]}}},
                  "providers": {"file": {"directory": str(dynamic)}}, "log": {"level": "INFO"}}  # fmt: skip
        (tmp_path / "traefik.yml").write_text(yaml.safe_dump(static))
        self._log = (tmp_path / "traefik.log").open("wb")
        self.process = subprocess.Popen([require_tool("traefik"), f"--configFile={tmp_path / 'traefik.yml'}"],
                                        stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                        env={"HOME": str(tmp_path), "DOMAIN": domain})  # fmt: skip
        self.base = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        self._log.close()


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 for a stand-in's handler class."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


#: a service that compose cannot start: its image is not on the engine and may not be pulled
BROKEN = {"image": TEST_IMAGE.replace(":1", "-missing:0"), "pull_policy": "never"}

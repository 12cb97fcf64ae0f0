"""The deployer's own route (stacks/traefik/dynamic/deployer.yml) through a real Traefik to a real `deployer serve`.

Authentik's outpost cannot run here: a stand-in on loopback answers Traefik's forward-auth requests
with 401 (nobody is logged in) and counts them, which is all these routes need of it. The systemd
unit in deploy/ is checked by the real systemd-analyze.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.deliveries import push_payload, sign
from tests.e2e.served import SECRET, LoopbackServer, Served, Traefik, http, wait_for
from tests.helpers import ROOT, ConfigRepo, require_tool
from tests.servers import ForgeServer

DOMAIN = "example.test"


class Outpost(LoopbackServer):
    """Authentik's embedded outpost as forward-auth sees it when nobody is logged in: 401, and a count."""

    def __init__(self) -> None:
        calls: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # Traefik asks with GET whatever the client's method was
                calls.append(self.headers.get("X-Forwarded-Uri", ""))
                body = b"login required"
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.calls = calls
        super().__init__(Handler)


@pytest.fixture
def edge(tmp_path: Path, repo: ConfigRepo, age_key: AgeKey, forge: ForgeServer) -> Iterator[tuple[str, Outpost]]:
    """Traefik on loopback with the shipped middlewares and deployer routes, in front of `deployer serve`."""
    repo.write("README.md", "no stacks yet\n")
    repo.commit("empty")
    env = tool_environ(tmp_path, age_key, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                       DEPLOYER_POLL_INTERVAL="0")  # fmt: skip
    served = Served(env, log=tmp_path / "serve.log")
    outpost = Outpost()
    traefik = Traefik(tmp_path, outpost_url=outpost.url, deployer_url=served.base, domain=DOMAIN)
    try:
        wait_for(lambda: _routed(traefik.base), timeout=30, what="traefik to load the deployer's routes")
        yield traefik.base, outpost
    finally:
        traefik.stop()
        outpost.close()
        served.stop()


def _routed(base: str) -> bool:
    request = urllib.request.Request(f"{base}/", headers={"Host": f"deployer.{DOMAIN}"})  # noqa: S310 -- loopback
    try:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 -- loopback http only
    except urllib.error.HTTPError as error:
        return error.code == 401  # the outpost's answer: the route is loaded (before it, Traefik's 404)
    except OSError:  # not listening yet
        return False
    return False


def test_the_webhook_route_skips_authentik_strips_identity_and_reaches_the_deployer(
    edge: tuple[str, Outpost], repo: ConfigRepo
) -> None:
    base, outpost = edge
    delivery = sign("gitea", push_payload("gitea", after=repo.head()), SECRET)
    spoofed = {**delivery.headers, "Host": f"deployer.{DOMAIN}", "X-authentik-username": "akadmin",
               "X-authentik-groups": "admins"}  # fmt: skip
    before = len(outpost.calls)
    status, answer = http("POST", f"{base}/webhook", body=delivery.body, headers=spoofed)
    assert status == 202, answer
    assert len(outpost.calls) == before  # the forge is never sent to a login page


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/deployments"), ("GET", "/webhook"), ("GET", "/readyz"),
                                              ("POST", "/api/deployments")])  # fmt: skip
def test_everything_else_goes_through_authentik(edge: tuple[str, Outpost], method: str, path: str) -> None:
    base, outpost = edge
    before = len(outpost.calls)
    request = urllib.request.Request(f"{base}{path}", data=b"{}" if method == "POST" else None,  # noqa: S310 -- loopback
                                     headers={"Host": f"deployer.{DOMAIN}"}, method=method)  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 -- loopback http only
    assert refused.value.code == 401 and refused.value.read() == b"login required"
    assert outpost.calls[before:] == [path]
    assert refused.value.headers.get("X-Content-Type-Options") == "nosniff"  # the entry point's secure-headers


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = (ROOT / "deploy/deployer.service").read_text()
    assert "ExecStart=/opt/deployer/.venv/bin/deployer serve" in unit
    executable = shutil.which("deployer")
    assert executable is not None
    (tmp_path / "deployer.service").write_text(unit.replace("/opt/deployer/.venv/bin/deployer", executable))
    result = subprocess.run([analyze, "verify", str(tmp_path / "deployer.service")], capture_output=True, text=True,
                            check=False)  # fmt: skip
    problems = [line for line in result.stderr.splitlines() if "deployer.service" in line]
    assert result.returncode == 0 and not problems, result.stderr

"""The pages on a real `deployer serve`, seen by Debian's headless chromium on a phone-sized window.

Chromium cannot add headers from its command line, so `HeaderProxy` (a ThreadingHTTPServer on
127.0.0.1) stands in for Traefik's forward auth: it passes each request on to the service with the
X-authentik-* headers of one identity, as Traefik does once Authentik has answered. The service
trusts 127.0.0.1 (DEPLOYER_TRUSTED_PROXIES), checks no token (no JWKS), and knows a viewers and a
deployers group. Form posts go through the same proxy with urllib. Real gunicorn, deploy worker,
git, sops, age and Docker engine; no forge.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgeKey, tool_environ
from tests.e2e.served import BROKEN, FINISHED, SECRET, Served, wait_for
from tests.helpers import ConfigRepo, require_tool, service

pytestmark = pytest.mark.usefixtures("engine")

VIEWER = {"X-authentik-username": "vera", "X-authentik-groups": "viewers"}
DEPLOYER = {"X-authentik-username": "dora", "X-authentik-groups": "staff|deployers"}
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"})


class HeaderProxy:
    """A stand-in for Traefik + Authentik forward auth: adds one identity's X-authentik-* headers."""

    def __init__(self, upstream: Served, identity: dict[str, str]) -> None:
        target, added = upstream.port, identity

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP and not k.lower().startswith("x-authentik-")}  # fmt: skip
                connection = http.client.HTTPConnection("127.0.0.1", target, timeout=30)
                connection.request(self.command, self.path, body=body, headers={**headers, **added})
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = do_HEAD = forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def request(url: str, *, form: dict[str, Any] | None = None) -> tuple[int, dict[str, str], str]:
    """GET (or POST `form`, urlencoded) without following redirects: status, headers, body."""
    assert url.startswith("http://127.0.0.1:")
    data = urllib.parse.urlencode(form, doseq=True).encode() if form is not None else None
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=30) as answer:  # noqa: S310 -- loopback
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def browse(proxy: HeaderProxy, path: str, shot: Path) -> str:
    """The DOM chromium builds for `path` on a 412 px wide window, with a screenshot saved at `shot`."""
    chromium = require_tool("chromium")
    argv = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={shot.parent / 'profile'}",
            "--window-size=412,900", f"--screenshot={shot}", "--dump-dom", f"{proxy.base}{path}"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert shot.stat().st_size > 1000, done.stderr[-2000:]
    return done.stdout


class Site:
    """The served deployer, its two proxies, and the API asked as the deployer (127.0.0.1 is trusted)."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.viewer = HeaderProxy(served, VIEWER)
        self.deployer = HeaderProxy(served, DEPLOYER)

    def api(self, path: str) -> Any:
        status, _, body = request(f"{self.deployer.base}{path}")
        assert status == 200, (path, status, body)
        return json.loads(body)

    def finished(self, deployment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (d := self.api(f"/api/deployments/{deployment_id}"))["state"] in FINISHED and d,
            timeout=120, what=f"deployment {deployment_id}",
        )  # fmt: skip
        return found

    def close(self) -> None:
        self.viewer.close()
        self.deployer.close()
        self.served.stop()


@pytest.fixture
def site(tmp_path: Path, repo: ConfigRepo, age_key: AgeKey, prefix: str) -> Iterator[Site]:
    require_tool("chromium")
    repo.stack(f"{prefix}-db")
    repo.stack(f"{prefix}-web", {"main": service()}, deployer={"depends_on": [f"{prefix}-db"]})
    repo.commit("db and web")
    env = tool_environ(tmp_path, age_key, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                       DEPLOYER_POLL_INTERVAL="0", DEPLOYER_TRUSTED_PROXIES="127.0.0.1/32",
                       DEPLOYER_DEPLOY_GROUPS="deployers", DEPLOYER_VIEW_GROUPS="viewers")  # fmt: skip
    running = Site(Served(env, log=tmp_path / "serve.log"))
    try:
        yield running
    finally:
        running.close()


def test_history_deployment_and_stacks_pages_show_what_ran_and_what_failed(
    site: Site, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    db, web, bad = f"{prefix}-db", f"{prefix}-web", f"{prefix}-bad"
    first = repo.head()
    good = site.finished(site.served.push(first))
    assert good["state"] == "succeeded"
    repo.stack(bad, {"main": BROKEN})
    failed = site.finished(site.served.push(repo.commit("a broken stack"), before=first))
    assert failed["state"] == "failed"

    dom = browse(site.viewer, "/", tmp_path / "history.png")
    assert dom.index(f'data-id="{failed["id"]}"') < dom.index(f'data-id="{good["id"]}"')  # newest first
    assert f'data-id="{good["id"]}" data-state="succeeded"' in dom
    assert f'data-id="{failed["id"]}" data-state="failed"' in dom
    assert f'class="stack s-failed" data-stack="{bad}" data-state="failed"' in dom
    assert 'name="viewport"' in dom and "vera" in dom
    filtered = browse(site.viewer, "/?result=failed", tmp_path / "filtered.png")
    assert failed["id"] in filtered and good["id"] not in filtered

    page = browse(site.viewer, f"/deployments/{failed['id']}", tmp_path / "deployment.png")
    step = page[page.index(f'data-stack="{bad}" data-state="failed"') :]
    assert re.search(r'<pre class="output">[^<]*\S', step), "the failed stack's compose output is shown"
    assert 'data-field="trigger">webhook<' in page and 'id="timeline"' in page
    assert 'http-equiv="refresh"' not in page  # finished: it no longer reloads itself

    stacks = browse(site.viewer, "/stacks", tmp_path / "stacks.png")
    assert '<svg id="graph"' in stacks
    assert f'class="edge" data-from="{db}" data-to="{web}"' in stacks
    assert 'id="redeploy-form"' not in stacks and ">Redeploy<" not in stacks  # a viewer gets no form


def test_the_form_is_for_deployers_checks_csrf_and_deploys_exactly_the_chosen_stack(
    site: Site, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    db, web = f"{prefix}-db", f"{prefix}-web"
    assert site.finished(site.served.push(repo.head()))["state"] == "succeeded"
    stacks = browse(site.deployer, "/stacks", tmp_path / "stacks-deployer.png")
    assert 'id="redeploy-form"' in stacks and f'name="stacks" value="{db}"' in stacks
    token = re.search(r'name="csrf" value="([^"]+)"', stacks)
    assert token, "the form carries a CSRF token"
    count = len(site.api("/api/deployments?limit=100"))

    form = {"stacks": [web], "ref": "main", "reason": "from the form", "force": "on"}
    forged = f"{int(time.time())}.{'0' * 64}"
    expired = f"{int(time.time()) - 7200}.{token.group(1).split('.')[1]}"
    for sent, status in ((form, 400), ({**form, "csrf": forged}, 403), ({**form, "csrf": expired}, 403)):
        code, headers, body = request(f"{site.deployer.base}/deployments", form=sent)
        assert code == status and headers["Content-Type"].startswith("text/html") and "csrf" in body, (code, body)
    code, _, body = request(f"{site.viewer.base}/deployments", form={**form, "csrf": token.group(1)})
    assert code == 403 and "<h1>403" in body  # a viewer may not post at all
    assert len(site.api("/api/deployments?limit=100")) == count  # nothing queued
    refused = [e for e in site.served.audit() if e["event"] == "request.refused" and e["path"] == "/deployments"]
    assert [e["actor"] for e in refused] == ["dora", "dora", "dora", "vera"]

    code, headers, _ = request(f"{site.deployer.base}/deployments", form={**form, "csrf": token.group(1)})
    assert code == 303, code
    deployment_id = headers["Location"].rsplit("/", 1)[1]
    assert headers["Location"].endswith(f"/deployments/{deployment_id}")
    done = site.finished(deployment_id)
    assert (done["state"], done["trigger"], done["actor"], done["reason"]) == ("succeeded", "manual", "dora",
                                                                               "from the form")  # fmt: skip
    assert [s["name"] for s in done["stacks"]] == [web]
    page = browse(site.deployer, f"/deployments/{deployment_id}", tmp_path / "manual.png")
    assert f'data-stack="{web}" data-state="succeeded"' in page and 'data-field="actor">dora<' in page

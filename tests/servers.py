"""A stand-in for a forge's commit-status API, for tests: the real forges cannot run here.

It checks every request against the documented shape (method, path, auth header, JSON body,
allowed states, 140-character descriptions; ../shared/reference/protocols.md section 2) and records
what it was sent. A request of the wrong shape is answered 422 and kept in `errors`, so a test that
asserts `errors == []` fails on it. GitLab's state machine is modelled: posting a state a status
already has, or cannot move to, is a 400 "Cannot transition status", as GitLab does.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATES = {
    "github": {"pending", "success", "failure", "error"},
    "gitea": {"pending", "success", "failure", "error"},
    "forgejo": {"pending", "success", "failure", "error"},
    "gitlab": {"pending", "running", "success", "failed", "canceled"},
}
PATHS = {
    "github": re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/statuses/(?P<sha>[0-9a-f]{40})$"),
    "gitea": re.compile(r"^/api/v1/repos/(?P<repo>[^/]+/[^/]+)/statuses/(?P<sha>[0-9a-f]{40})$"),
    "forgejo": re.compile(r"^/api/v1/repos/(?P<repo>[^/]+/[^/]+)/statuses/(?P<sha>[0-9a-f]{40})$"),
    "gitlab": re.compile(r"^/api/v4/projects/(?P<repo>[^/]+)/statuses/(?P<sha>[0-9a-f]{40})$"),
}
#: GitLab's commit status transitions (Ci::HasStatus): from -> states it may move to
GITLAB_MOVES = {
    None: {"pending", "running", "success", "failed", "canceled"},
    "pending": {"running", "success", "failed", "canceled"},
    "running": {"success", "failed", "canceled"},
    "success": {"pending", "running", "failed", "canceled"},
    "failed": {"pending", "running", "success", "canceled"},
    "canceled": {"pending", "running", "success", "failed"},
}


@dataclass
class Posted:
    repo: str
    sha: str
    context: str
    state: str
    description: str
    target_url: str | None


@dataclass
class ForgeServer:
    """A threaded HTTP server on 127.0.0.1 playing one forge's status API."""

    forge: str
    token: str = "forge-token"
    fail_next: int = 0  # answer this many requests with 503 before working again
    posted: list[Posted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def api_url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        base = f"http://{host}:{port}"
        return {"github": base, "gitlab": f"{base}/api/v4"}.get(self.forge, f"{base}/api/v1")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def latest(self, sha: str) -> dict[str, str]:
        """The last state posted for each context of a commit."""
        with self._lock:
            return {p.context: p.state for p in self.posted if p.sha == sha}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                status, answer = server._answer(self.path, dict(self.headers.items()), self.rfile.read(length))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503, {"message": "unavailable"}
            problem = self._check(path, headers, raw)
            if problem:
                self.errors.append(problem)
                return 422, {"message": problem}
            match = PATHS[self.forge].match(path)
            assert match is not None
            body = json.loads(raw)
            context = body.get("name") if self.forge == "gitlab" else body.get("context")
            post = Posted(urllib.parse.unquote(match["repo"]), match["sha"], context, body["state"],
                          body.get("description", ""), body.get("target_url"))  # fmt: skip
            if self.forge == "gitlab":
                same = [p.state for p in self.posted if (p.sha, p.context) == (post.sha, context)]
                current = same[-1] if same else None
                if post.state not in GITLAB_MOVES[current]:
                    return 400, {"message": f"Cannot transition status via :{post.state} from :{current}"}
            self.posted.append(post)
            return 201, {"id": len(self.posted), "state": post.state}

    def _check(self, path: str, headers: dict[str, str], raw: bytes) -> str | None:
        lower = {k.lower(): v for k, v in headers.items()}
        if not PATHS[self.forge].match(path):
            return f"unexpected path {path}"
        auth = {
            "github": ("authorization", f"Bearer {self.token}"),
            "gitea": ("authorization", f"token {self.token}"),
            "forgejo": ("authorization", f"token {self.token}"),
            "gitlab": ("private-token", self.token),
        }[self.forge]
        if lower.get(auth[0]) != auth[1]:
            return f"missing or wrong {auth[0]} header"
        if self.forge == "github" and lower.get("x-github-api-version") != "2022-11-28":
            return "missing X-GitHub-Api-Version"
        if not lower.get("content-type", "").startswith("application/json"):
            return "body is not JSON"
        try:
            body = json.loads(raw)
        except ValueError:
            return "body is not JSON"
        context_key = "name" if self.forge == "gitlab" else "context"
        if body.get("state") not in STATES[self.forge]:
            return f"state {body.get('state')!r} is not one of {sorted(STATES[self.forge])}"
        if not isinstance(body.get(context_key), str) or not body[context_key].startswith("deployer"):
            return f"{context_key} missing or not deployer's"
        description = body.get("description", "")
        if len(description) > 140 or "\n" in description:
            return f"description is not one line of at most 140 characters: {description!r}"
        return None

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
class Comment:
    id: int
    number: int
    author: str
    body: str
    edits: int = 0


#: the comment API of each forge (protocols.md 9.2): list and create on the pull request, edit by id
COMMENT_PATHS = {
    "github": (
        re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/issues/(?P<number>\d+)/comments$"),
        re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/issues/comments/(?P<id>\d+)$"),
        "PATCH",
    ),
    "gitea": (
        re.compile(r"^/api/v1/repos/(?P<repo>[^/]+/[^/]+)/issues/(?P<number>\d+)/comments$"),
        re.compile(r"^/api/v1/repos/(?P<repo>[^/]+/[^/]+)/issues/comments/(?P<id>\d+)$"),
        "PATCH",
    ),
    "gitlab": (
        re.compile(r"^/api/v4/projects/(?P<repo>[^/]+)/merge_requests/(?P<number>\d+)/notes$"),
        re.compile(r"^/api/v4/projects/(?P<repo>[^/]+)/merge_requests/(?P<number>\d+)/notes/(?P<id>\d+)$"),
        "PUT",
    ),
}
COMMENT_PATHS["forgejo"] = COMMENT_PATHS["gitea"]


@dataclass
class ForgeServer:
    """A threaded HTTP server on 127.0.0.1 playing one forge's status API."""

    forge: str
    token: str = "forge-token"
    fail_next: int = 0  # answer this many requests with 503 before working again
    posted: list[Posted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    login: str = "deployer-bot"
    last_id: int = 0
    comments: dict[int, Comment] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    user_status: int = 200  # what GET /user answers (GitHub App installation tokens get 403)
    garble_next: int = 0  # answer this many comment API requests 200 with an HTML page, as a broken proxy would,
    garble_skip: int = 0  # after letting this many through

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
            def do_GET(self) -> None:
                self._any("GET")

            def do_PATCH(self) -> None:
                self._any("PATCH")

            def do_PUT(self) -> None:
                self._any("PUT")

            def do_POST(self) -> None:
                self._any("POST")

            def _any(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                path = urllib.parse.urlsplit(self.path).path
                extra: dict[str, str] = {}
                if method == "POST" and PATHS[server.forge].match(path):
                    status, answer = server._answer(self.path, dict(self.headers.items()), raw)
                else:
                    status, answer, extra = server._comment_api(method, self.path, dict(self.headers.items()), raw)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(answer, bytes) else "application/json")
                for name, value in extra.items():
                    self.send_header(name, value)
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

    def _new_id(self) -> int:
        """Ids are never reused, as on a forge (a deleted comment's id stays gone)."""
        self.last_id += 1
        return self.last_id

    def comments_on(self, number: int) -> list[Comment]:
        with self._lock:
            return [c for c in self.comments.values() if c.number == number]

    def add_comment(self, number: int, body: str, author: str) -> Comment:
        with self._lock:
            comment = Comment(self._new_id(), number, author, body)
            self.comments[comment.id] = comment
            return comment

    def _shown(self, comment: Comment) -> dict[str, Any]:
        if self.forge == "gitlab":
            return {"id": comment.id, "body": comment.body, "author": {"username": comment.author}, "system": False}
        return {"id": comment.id, "body": comment.body, "user": {"login": comment.author}}

    def _comment_api(
        self, method: str, url: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """The forge's comment API, its request shapes checked: GET /user, list, create, edit."""
        split = urllib.parse.urlsplit(url)
        path, query = split.path, urllib.parse.parse_qs(split.query)
        with self._lock:
            self.requests += 1
            self.calls.append((method, path))
            misbehaved = self._misbehave(method, path, raw)
            if misbehaved:
                return misbehaved
            problem = self._auth(headers)
            if problem:
                self.errors.append(problem)
                return 401, {"message": problem}, {}
            prefix = {"github": "", "gitlab": "/api/v4"}.get(self.forge, "/api/v1")
            if method == "GET" and path == f"{prefix}/user":
                if self.user_status != 200:
                    return self.user_status, {"message": "Resource not accessible by integration"}, {}
                return 200, {"id": 1, ("username" if self.forge == "gitlab" else "login"): self.login}, {}
            on_pull, by_id, edit_method = COMMENT_PATHS[self.forge]
            pulled, edited = on_pull.match(path), by_id.match(path)
            if method == "GET" and pulled:
                return self._list(path, query, int(pulled["number"]))
            if method in ("POST", edit_method) and (pulled or edited):
                return self._write(method, path, raw, None if pulled is None else int(pulled["number"]), edited)
            self.errors.append(f"unexpected {method} {path}")
            return 404, {"message": "Not Found"}, {}

    def _misbehave(self, method: str, path: str, raw: bytes) -> tuple[int, Any, dict[str, str]] | None:
        """A 503 while `fail_next`; a proxy's HTML page while `garble_next` (after `garble_skip`)."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {"message": "unavailable"}, {}
        if self.garble_next > 0 and self.garble_skip > 0:
            self.garble_skip -= 1
        elif self.garble_next > 0:
            self.garble_next -= 1
            pulled = COMMENT_PATHS[self.forge][0].match(path)
            if method == "POST" and pulled:  # the proxy passed the create on and mangled only the answer
                comment = Comment(self._new_id(), int(pulled["number"]), self.login, json.loads(raw)["body"])
                self.comments[comment.id] = comment
            return 200, b"<html><body>Welcome to nginx!</body></html>", {}
        return None

    def _list(self, path: str, query: dict[str, list[str]], number: int) -> tuple[int, Any, dict[str, str]]:
        """Paged as each forge pages: GitHub (30) and GitLab (20) per_page <= 100 with a Link header to the
        next page; Gitea/Forgejo unpaged."""
        found = [self._shown(c) for c in self.comments.values() if c.number == number]
        if self.forge in ("gitea", "forgejo"):
            if "page" in query or "limit" in query:
                self.errors.append(f"GET {path}: Gitea's comment list takes no page or limit")
            return 200, found, {}
        per_page = min(int((query.get("per_page") or ["30" if self.forge == "github" else "20"])[0]), 100)
        page = int((query.get("page") or ["1"])[0])
        extra = {}
        if page * per_page < len(found):
            following = urllib.parse.urlencode({**{k: v[0] for k, v in query.items()}, "page": page + 1})
            host, port = self._server.server_address[:2]
            extra["Link"] = f'<http://{host}:{port}{path}?{following}>; rel="next"'
        return 200, found[(page - 1) * per_page : page * per_page], extra

    def _write(
        self, method: str, path: str, raw: bytes, number: int | None, edited: re.Match[str] | None
    ) -> tuple[int, Any, dict[str, str]]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            self.errors.append(f"{method} {path}: body is not JSON with a string body")
            return 422, {"message": "body"}, {}
        if method == "POST" and number is not None:
            comment = Comment(self._new_id(), number, self.login, body["body"])
            self.comments[comment.id] = comment
            return 201, self._shown(comment), {}
        known = self.comments.get(int(edited["id"])) if edited else None
        if known is None:
            return 404, {"message": "Not Found"}, {}
        if known.author != self.login:
            return 403, {"message": "not yours"}, {}
        known.body, known.edits = body["body"], known.edits + 1
        return 200, self._shown(known), {}

    def _auth(self, headers: dict[str, str]) -> str | None:
        lower = {k.lower(): v for k, v in headers.items()}
        name, value = {
            "github": ("authorization", f"Bearer {self.token}"),
            "gitlab": ("private-token", self.token),
        }.get(self.forge, ("authorization", f"token {self.token}"))
        return None if lower.get(name) == value else f"missing or wrong {name} header"

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

"""A stand-in for a notification service, for tests: what Apprise's `json://host:port/path` URL posts to
(../shared/reference/protocols.md section 12; apprise/plugins/custom_json.py).

It checks each request against that plugin's shape (a POST to the URL's path, JSON, `version` "1.0",
string `title` and `message`, an `attachments` list, a `type` Apprise knows) and records the posts that
fit. A request of another shape is answered 422 and kept in `errors`, so a test that asserts
`errors == []` fails on it. `script` holds status codes to answer before working again (Apprise
counts any 2xx as sent).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TYPES = {"info", "success", "warning", "failure"}
FIELDS = {"version", "title", "message", "attachments", "type"}


class NotifyServer:
    """A threaded HTTP server on 127.0.0.1 playing a JSON webhook that notifications go to."""

    def __init__(self, *, path: str = "/notify") -> None:
        self.path = path
        #: the JSON bodies taken (answered 200), in order
        self.posts: list[dict[str, Any]] = []
        self.errors: list[str] = []
        #: status codes to answer (and not keep the post) before working again
        self.script: list[int] = []
        self.requests = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # a short poll interval: close() waits for it, once per test
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        """The Apprise URL that posts here."""
        return f"json://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def titles(self) -> list[str]:
        with self._lock:
            return [post["title"] for post in self.posts]

    def _check(self, path: str, headers: Any, raw: bytes) -> str | None:
        if path != self.path:
            return f"post to {path}"
        if headers.get("Content-Type", "").split(";")[0] != "application/json":
            return f"content type {headers.get('Content-Type')!r}"
        try:
            body = json.loads(raw)
        except ValueError:
            return "body is not JSON"
        if not isinstance(body, dict) or set(body) != FIELDS:
            return f"fields {sorted(body) if isinstance(body, dict) else body!r}, expected {sorted(FIELDS)}"
        if body["version"] != "1.0" or body["type"] not in TYPES or body["attachments"] != []:
            return f"version, type or attachments: {body['version']!r} {body['type']!r} {body['attachments']!r}"
        if not (isinstance(body["title"], str) and isinstance(body["message"], str)):
            return "title and message must be strings"
        return None

    def _answer(self, path: str, headers: Any, raw: bytes) -> int:
        with self._lock:
            self.requests += 1
            if self.script:
                return self.script.pop(0)
            problem = self._check(path, headers, raw)
            if problem:
                self.errors.append(problem)
                return 422
            self.posts.append(json.loads(raw))
            return 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = stand_in._answer(self.path, self.headers, raw)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

"""A stand-in for Loki's push API (Loki cannot run here), checking the request shape that
../shared/reference/protocols.md section 4 documents: `POST /loki/api/v1/push`, JSON with
`streams[].stream` labels (valid names, few of them) and `values` of [nanosecond timestamp as a
string, line]. It keeps entries as Loki does, deduplicating an identical (stream, timestamp, line),
and can be told to answer the next requests with 503, 429 or 400 (with a message), or to stall.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class LokiServer:
    def __init__(self, *, tenant: str | None = None, token: str | None = None) -> None:
        self.tenant, self.token = tenant, token
        #: (labels, ts, line) -> how many times it was pushed
        self.received: dict[tuple[str, str, str], int] = {}
        self.errors: list[str] = []
        #: answers to give before working again: status codes, "stall" (hold the request 15 s, then 503) or
        #: "take-and-stall" (keep the entries, then hold the answer `stall_seconds`: a kill point between
        #: Loki having a batch and the deployer knowing it)
        self.script: list[int | str] = []
        self.stall_seconds = 30.0
        #: what a wrong URL, tenant or token was answered (404, 401), in order
        self.refused: list[str] = []
        #: requests held after their entries were kept ("take-and-stall")
        self.stalled = 0
        self.requests = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def lines(self) -> list[dict[str, Any]]:
        """Every distinct entry Loki would hold, oldest first, as the parsed line."""
        with self._lock:
            keys = sorted(self.received, key=lambda k: int(k[1]))
        return [json.loads(line) for _, _, line in keys]

    def duplicates(self) -> int:
        """Entries pushed more than once (Loki keeps one of each)."""
        with self._lock:
            return sum(n - 1 for n in self.received.values())

    def _refusal(self, path: str, headers: Any) -> tuple[int, str] | None:
        """What Loki (or the proxy in front of it) answers a wrong URL, tenant or token: 404 or 401."""
        if path != "/loki/api/v1/push":
            return 404, "404 page not found"
        if self.tenant is not None and headers.get("X-Scope-OrgID") != self.tenant:
            return 401, "no org id" if headers.get("X-Scope-OrgID") is None else "unknown tenant"
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, "unauthorized"
        return None

    def _check(self, path: str, headers: Any, raw: bytes) -> str | None:
        if headers.get("Content-Type", "").split(";")[0] != "application/json":
            return f"content type {headers.get('Content-Type')!r}"
        try:
            body = json.loads(raw)
        except ValueError:
            return "body is not JSON"
        streams = body.get("streams") if isinstance(body, dict) else None
        if not isinstance(streams, list) or not streams:
            return "no streams"
        for stream in streams:
            labels = stream.get("stream")
            if not isinstance(labels, dict) or not labels or len(labels) > 3:
                return f"labels {labels!r}: 1 to 3 wanted (service_name and at most two more)"
            if labels.get("service_name") != "deployer" or not all(map(LABEL_NAME.match, labels)):
                return f"labels {labels!r}"
            for value in stream.get("values", []):
                if not (isinstance(value, list) and len(value) in (2, 3) and isinstance(value[0], str)
                        and value[0].isdigit() and isinstance(value[1], str)):  # fmt: skip
                    return f"value {value!r}: [ns timestamp as a string, line]"
                json.loads(value[1])  # the deployer's lines are JSON
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        loki = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with loki._lock:
                    loki.requests += 1
                    scripted = loki.script.pop(0) if loki.script else None
                if scripted == "stall":
                    time.sleep(15)
                    scripted = 503
                take_and_stall = scripted == "take-and-stall"
                if take_and_stall:
                    scripted = None
                refusal = loki._refusal(self.path, self.headers)
                if refusal is not None:
                    loki.refused.append(refusal[1])
                    self._answer(*refusal)
                    return
                problem = loki._check(self.path, self.headers, raw)
                if problem:
                    loki.errors.append(problem)
                    self._answer(400, problem)
                    return
                if isinstance(scripted, int):
                    self._answer(scripted, "entry too far behind" if scripted == 400 else "try later")
                    return
                body = json.loads(raw)
                with loki._lock:
                    for stream in body["streams"]:
                        labels = json.dumps(stream["stream"], sort_keys=True)
                        for value in stream["values"]:
                            key = (labels, value[0], value[1])
                            loki.received[key] = loki.received.get(key, 0) + 1
                if take_and_stall:
                    loki.stalled += 1
                    time.sleep(loki.stall_seconds)
                self._answer(204, "")

            def _answer(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

"""EngineApi: the engine's API through the docker SDK, its version negotiation and its errors.

The real engine is tried in tests/component/test_deploy.py and the e2e tests (images, ping). Here:
an engine that is not there (a missing socket, a refused port: real sockets), and an engine newer
than the tests know, which this machine's Docker 20.10 cannot be: a small loopback HTTP server
answering `/version` and `/_ping` the way the Engine API documents them stands in for it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from deployer.apply.engine import TESTED_API_VERSION, EngineApi, _service_images


def test_a_missing_socket_is_named_with_the_reason(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/docker.sock"
    assert EngineApi({"DOCKER_HOST": host}).ping() == f"{host}: No such file or directory"
    assert EngineApi({"DOCKER_HOST": host}).images("web") == {}


def test_a_refused_port_is_named_with_the_reason() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert EngineApi({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}).ping() == f"tcp://127.0.0.1:{port}: Connection refused"


class _Engine(BaseHTTPRequestHandler):
    api_version = "1.99"
    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        if self.path.endswith("/version"):
            body = json.dumps({"ApiVersion": self.api_version, "MinAPIVersion": "1.24", "Version": "99.0.0"}).encode()
            kind = "application/json"
        elif self.path.endswith("/_ping"):
            body, kind = b"OK", "text/plain"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _engine(api_version: str, port: int = 0) -> Iterator[tuple[int, list[str]]]:
    paths: list[str] = []
    handler = type("Engine", (_Engine,), {"api_version": api_version, "paths": paths})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()


def test_a_newer_engine_is_spoken_to_at_the_tested_version_not_its_own() -> None:
    with _engine("1.99") as (port, paths):
        assert EngineApi({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}).ping() is None
    assert paths[0] == "/version"  # unversioned: what the engine speaks
    assert paths[-1] == f"/v{TESTED_API_VERSION}/_ping"


def test_an_older_engine_is_spoken_to_at_its_own_version() -> None:
    with _engine("1.41") as (port, paths):
        assert EngineApi({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}).ping() is None
    assert paths[-1] == "/v1.41/_ping"


def test_an_engine_that_comes_back_answers_again() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = EngineApi({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"})
    assert api.ping() == f"tcp://127.0.0.1:{port}: Connection refused"
    with _engine("1.41", port):
        assert api.ping() is None
    assert api.ping() is not None  # gone again: said, not cached


def test_service_images_come_from_the_compose_labels_of_each_container() -> None:
    found = [
        {"Labels": {"com.docker.compose.service": "web"}, "ImageID": "sha256:aa"},
        {"Labels": {"com.docker.compose.service": "db"}, "ImageID": "sha256:bb"},
        {"Labels": {}, "ImageID": "sha256:cc"},  # not a compose service
        {"Labels": None, "ImageID": "sha256:dd"},
        {"Labels": {"com.docker.compose.service": "job"}},  # no image id
    ]
    assert _service_images(found) == {"web": "sha256:aa", "db": "sha256:bb"}


def test_tls_settings_are_for_tcp_engines_only(tmp_path: Path) -> None:
    """DOCKER_TLS_VERIFY / DOCKER_CERT_PATH set for a tcp:// host must not break the local socket (the SDK
    refuses TLS without a host; the docker CLI ignores TLS for unix sockets)."""
    host = f"unix://{tmp_path}/docker.sock"
    tls = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    assert EngineApi({"DOCKER_HOST": host, **tls}).ping() == f"{host}: No such file or directory"

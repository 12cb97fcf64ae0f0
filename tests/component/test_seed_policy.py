"""Exposure and privilege policy of the shipped stacks, asserted on their RESOLVED compose configs.

Each stack is resolved by the real `docker compose config --format json` (no engine needed, nothing is
pulled) with the environment the deployer gives it: stacks/shared.env, overridden by the stack's own
.env, overridden by every key of its SOPS files (the keys are in clear; each gets the value "1", as
`deployer validate` does). The tables below are the policy: what Traefik routes, which routers are
public and why, who may talk to the Docker engine, and the few host mounts that are allowed.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from deployer.interpolation import read_dotenv
from tests.helpers import ROOT, require_tool

STACKS_DIR = ROOT / "stacks"
STACKS = sorted(path.parent.name for path in STACKS_DIR.glob("*/compose.yaml"))
SHARED_ENV = STACKS_DIR / "shared.env"

#: Infrastructure-wide values: defined once, in stacks/shared.env (or by their compose default), never
#: in a stack's own .env.
SHARED_ONLY = ("DOMAIN", "ACME_EMAIL", "INFRA_DATA_ROOT", "TZ")
#: Required everywhere they are used: `${NAME:?set NAME in stacks/shared.env}`, never a default.
REQUIRED = ("DOMAIN", "ACME_EMAIL")

#: The services Traefik routes (label traefik.enable=true), per stack. Exactly these join traefik_public.
ROUTED: dict[str, set[str]] = {
    "auth": {"authentik-server"},
    "mediaserver": {"plex", "radarr", "sonarr", "bazarr", "prowlarr", "qbittorrent", "seerr"},
    "minio": {"minio"},  # the console only; there is no S3 router
    "monitoring": {"grafana"},
    "traefik": {"traefik"},
    "zot": {"zot"},
}
#: Every HTTP router the labels define, per stack: a new one (say, a public S3 router) must be added here.
ROUTERS: dict[str, set[str]] = {
    "auth": {"authentik", "authentik-outpost"},
    "mediaserver": {"plex", "radarr", "sonarr", "bazarr", "prowlarr", "qbittorrent", "seerr"},
    "minio": {"minio-console"},
    "monitoring": {"grafana"},
    "traefik": {"traefik-dashboard"},
    "zot": {"zot"},
}
#: The forward-auth middleware every router carries unless it is public on purpose (below).
AUTH_MIDDLEWARE = "authentik-secure@file"
#: Routers without Authentik forward auth, and why.
PUBLIC_ROUTERS: dict[tuple[str, str], str] = {
    ("auth", "authentik"): "the Authentik UI and flows: it is the login itself",
    ("auth", "authentik-outpost"): "the outpost's login start, callback and sign-out paths on every host",
    ("mediaserver", "plex"): "Plex apps sign in with Plex accounts and cannot follow a browser login",
    ("monitoring", "grafana"): "Grafana's own login is Authentik (OIDC); a second login in front adds nothing",
    ("zot", "zot"): "registry API: docker/containerd/podman cannot follow a browser login; zot-allowlist + zot's auth",
}
#: Routers of the file provider (stacks/traefik/dynamic/*.yml) without forward auth, and why.
PUBLIC_FILE_ROUTERS: dict[str, str] = {
    "deployer-webhook": "the forge's webhook deliveries: a forge cannot log in, each delivery is signed",
}
#: Middlewares some routers must carry besides (or instead of) forward auth.
REQUIRED_MIDDLEWARES: dict[tuple[str, str], set[str]] = {("zot", "zot"): {"zot-allowlist"}}
#: The entry point every router must use, and the middleware its default list must start with.
ENTRY_POINT = "websecure"
SECURITY_HEADERS = "secure-headers@file"

#: The only services that mount the Docker socket, and the API sections each may open (value "1").
#: Everything else must be "0" or unset, and POST must be "0" (GET/HEAD only).
SOCKET_PROXIES: dict[tuple[str, str], set[str]] = {
    # Traefik's docker provider: /_ping, /version, /containers/json, /containers/{id}/json, /events.
    ("traefik", "socket-proxy"): {"CONTAINERS", "EVENTS", "PING", "VERSION"},
    # Alloy: discovery.docker lists containers AND networks; loki.source.docker follows logs.
    ("monitoring", "socket-proxy"): {"CONTAINERS", "NETWORKS", "ALLOW_LOGS", "EVENTS", "PING", "VERSION"},
}
#: Services allowed privileged mode, host namespaces, added capabilities or devices: none needs any.
PRIVILEGES: dict[tuple[str, str], dict[str, Any]] = {}
#: Host paths outside the data roots that a service may bind-mount, read-only, and why.
HOST_MOUNTS: dict[tuple[str, str], dict[str, str]] = {
    ("monitoring", "alloy"): {
        "/proc": "host metrics (prometheus.exporter.unix reads /host/proc)",
        "/sys": "host metrics (prometheus.exporter.unix reads /host/sys)",
    },
    ("traefik", "socket-proxy"): {"/var/run/docker.sock": "the socket proxy itself"},
    ("monitoring", "socket-proxy"): {"/var/run/docker.sock": "the socket proxy itself"},
}
#: Backends: every network they join is internal, except where NON_INTERNAL says why.
BACKENDS: set[tuple[str, str]] = {
    ("auth", "postgresql"),
    ("minio", "minio"),
    ("minio", "minio-init"),
    ("minio", "buckets"),
    ("monitoring", "mimir-1"),
    ("monitoring", "mimir-2"),
    ("monitoring", "mimir-3"),
    ("monitoring", "loki"),
    ("monitoring", "tempo"),
    ("traefik", "socket-proxy"),
    ("monitoring", "socket-proxy"),
}
NON_INTERNAL: dict[tuple[str, str, str], str] = {
    ("minio", "minio", "traefik_public"): "its console is routed (behind Authentik); Traefik reaches it there",
    ("monitoring", "loki", "monitoring_default"): "its 127.0.0.1:3100 port for the deployer's audit events: "
    "Docker publishes no port of a container that is only on internal networks",
}
#: The monitoring backends the media stack must never share a network with.
MONITORING_BACKENDS = {("monitoring", name) for name in ("mimir-1", "mimir-2", "mimir-3", "loki", "tempo")}
#: Networks the deployer creates (x-deployer.networks): not internal, shared by routed services only.
DEPLOYER_NETWORKS = {"traefik_public"}


def secret_keys(path: Path) -> list[str]:
    """The keys of a SOPS dotenv file: readable in clear, on the lines before the sops_ metadata."""
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("=", 1)[0].strip()
        if "=" in line and name and not name.startswith(("#", "sops_")):
            keys.append(name)
    return keys


def raw_compose(stack: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((STACKS_DIR / stack / "compose.yaml").read_text(encoding="utf-8"))
    return document


def stack_env(stack: str) -> dict[str, str]:
    """What the deployer hands compose: shared.env < the stack's .env < every secret key (as "1")."""
    env = read_dotenv(SHARED_ENV.read_text(encoding="utf-8")) if SHARED_ENV.is_file() else {}
    own = STACKS_DIR / stack / ".env"
    if own.is_file():
        env.update(read_dotenv(own.read_text(encoding="utf-8")))
    for secret in raw_compose(stack).get("x-deployer", {}).get("secrets", []):
        env.update(dict.fromkeys(secret_keys(ROOT / secret), "1"))
    return env


def compose_config(stack: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose config` of one stack, with exactly `env` (nothing from this process's environment)."""
    require_tool("docker")
    folder = STACKS_DIR / stack
    argv = ["docker", "compose", "--project-name", stack, "--project-directory", str(folder)]
    argv += ["--file", str(folder / "compose.yaml"), "config", "--format", "json"]
    base = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    return subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False)


@functools.cache
def resolved(stack: str) -> dict[str, Any]:
    result = compose_config(stack, stack_env(stack))
    assert result.returncode == 0, f"{stack}: docker compose config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def services(stack: str) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = resolved(stack)["services"]
    return result


def all_services() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for stack in STACKS:
        for name, service in services(stack).items():
            yield stack, name, service


def network_names(stack: str, service: dict[str, Any]) -> set[str]:
    """The engine-level names of the networks a service joins (`name` of each resolved network)."""
    declared = resolved(stack).get("networks", {})
    return {declared[key]["name"] for key in service.get("networks") or {}}


def labels(service: dict[str, Any]) -> dict[str, str]:
    return dict(service.get("labels") or {})


def routers(service: dict[str, Any]) -> dict[str, dict[str, str]]:
    """router name -> {option: value} of the traefik.http.routers.* labels."""
    found: dict[str, dict[str, str]] = {}
    for key, value in labels(service).items():
        match = re.fullmatch(r"traefik\.http\.routers\.([^.]+)\.(.+)", key)
        if match:
            found.setdefault(match.group(1), {})[match.group(2)] = value
    return found


def split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def defined_networks() -> dict[str, dict[str, Any]]:
    """Every network some stack creates (not external), by engine-level name."""
    result: dict[str, dict[str, Any]] = {}
    for stack in STACKS:
        for network in resolved(stack).get("networks", {}).values():
            if not network.get("external"):
                assert network["name"] not in result, f"network {network['name']} is created by two stacks"
                result[network["name"]] = network
    return result


def is_internal(name: str) -> bool:
    network = defined_networks().get(name)
    return bool(network and network.get("internal"))


def bind_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [volume for volume in service.get("volumes") or [] if volume.get("type") == "bind"]


def data_roots(stack: str) -> tuple[str, ...]:
    """The host data roots a stack's bind mounts may live under (its variables, else compose's defaults)."""
    env = stack_env(stack)
    if stack == "mediaserver":
        return env.get("DATA_ROOT", "/mnt/filestore/data"), env.get("CONFIG_ROOT", "/mnt/filestore/config")
    return (env.get("INFRA_DATA_ROOT", "/mnt/data"),)


def static_config() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((STACKS_DIR / "traefik" / "traefik.yml").read_text(encoding="utf-8"))
    return document


# --------------------------------------------------------------------------------------- variables


@pytest.mark.parametrize("stack", STACKS)
def test_stack_resolves_with_the_deployers_environment(stack: str) -> None:
    assert services(stack), f"{stack}: no services"
    assert set(ROUTED) == set(STACKS) == set(ROUTERS), "every stack needs its line in ROUTED and ROUTERS"


def test_shared_env_defines_the_infrastructure_values_and_no_stack_env_repeats_them() -> None:
    shared = read_dotenv(SHARED_ENV.read_text(encoding="utf-8"))
    assert {"DOMAIN", "ACME_EMAIL"} <= set(shared), "stacks/shared.env must define DOMAIN and ACME_EMAIL"
    for stack in STACKS:
        own = STACKS_DIR / stack / ".env"
        if own.is_file():
            repeated = set(read_dotenv(own.read_text(encoding="utf-8"))) & set(SHARED_ONLY)
            assert not repeated, f"stacks/{stack}/.env repeats infrastructure-wide {sorted(repeated)}"


@pytest.mark.parametrize("stack", STACKS)
def test_required_variables_have_no_default_and_fail_when_unset(stack: str) -> None:
    text = (STACKS_DIR / stack / "compose.yaml").read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for name in REQUIRED:
        # `$${NAME}` is compose's escape for a literal `${NAME}` (the traefik entrypoint script's own).
        uses = re.findall(r"(?<!\$)\$\{" + name + r"(?![A-Za-z0-9_])([^}]*)\}", code)
        assert all(use == f":?set {name} in stacks/shared.env" for use in uses), f"{stack}: ${{{name}...}}: {uses}"
        if not uses:
            continue
        env = {key: value for key, value in stack_env(stack).items() if key != name}
        result = compose_config(stack, env)
        assert result.returncode != 0, f"{stack}: resolves without {name}"
        assert f"set {name} in stacks/shared.env" in result.stderr, result.stderr


def test_the_media_roots_and_the_infrastructure_root_are_apart() -> None:
    """Infrastructure stacks mount only under INFRA_DATA_ROOT, the media stack only under its own roots."""
    roots = {"INFRA_DATA_ROOT": "/probe/infra", "DATA_ROOT": "/probe/media-data", "CONFIG_ROOT": "/probe/media-config"}
    for stack in STACKS:
        result = compose_config(stack, {**stack_env(stack), **roots})
        assert result.returncode == 0, result.stderr
        config = json.loads(result.stdout)
        allowed = ("/probe/media-data", "/probe/media-config") if stack == "mediaserver" else ("/probe/infra",)
        for name, service in config["services"].items():
            for mount in bind_mounts(service):
                source = PurePosixPath(mount["source"])
                if source.is_relative_to(STACKS_DIR / stack) or str(source) in HOST_MOUNTS.get((stack, name), {}):
                    continue
                assert any(source.is_relative_to(root) for root in allowed), f"{stack}/{name}: mounts {source}"
        for directory in config.get("x-deployer", {}).get("directories", []):
            path = PurePosixPath(directory["path"])
            assert any(path.is_relative_to(root) for root in allowed), f"{stack}: x-deployer directory {path}"


@pytest.mark.parametrize("stack", STACKS)
def test_every_host_directory_a_service_mounts_is_created_with_an_owner(stack: str) -> None:
    """Docker would create a missing bind source as root:root 0755; the deployer creates them instead."""
    directories = {d["path"]: d for d in resolved(stack).get("x-deployer", {}).get("directories", [])}
    for name, service in services(stack).items():
        for mount in bind_mounts(service):
            source = mount["source"]
            if PurePosixPath(source).is_relative_to(STACKS_DIR / stack) or source in HOST_MOUNTS.get((stack, name), {}):
                continue
            assert source in directories, f"{stack}/{name}: {source} is not in x-deployer.directories"
            assert directories[source].get("owner"), f"{stack}: {source} has no owner"
            assert re.fullmatch(r"0?[0-7]{3,4}", str(directories[source].get("mode"))), f"{stack}: {source} mode"


def test_media_layout_is_the_seeds() -> None:
    env = stack_env("mediaserver")
    data, config = env["DATA_ROOT"], env["CONFIG_ROOT"]
    assert (data, config) == ("/mnt/filestore/data", "/mnt/filestore/config")
    owner = f"{env.get('PUID', '1000')}:{env.get('PGID', '1000')}"
    directories = {d["path"]: d for d in resolved("mediaserver")["x-deployer"]["directories"]}
    expected = (
        {data, config}
        | {f"{data}/{sub}" for sub in ("media", "media/movies", "media/tv", "torrents")}
        | {f"{data}/torrents/{sub}" for sub in ("movies", "tv", "incomplete")}
    )
    apps = set(services("mediaserver"))
    expected |= {f"{config}/{app}" for app in apps}
    assert set(directories) == expected
    assert {d["owner"] for d in directories.values()} == {owner}, "owners must match PUID:PGID"
    mounts = {name: {m["target"]: m["source"] for m in bind_mounts(s)} for name, s in services("mediaserver").items()}
    for app in ("radarr", "sonarr"):
        assert mounts[app]["/data"] == data, f"{app} needs the whole data tree (hardlinks)"
    assert mounts["qbittorrent"]["/data/torrents"] == f"{data}/torrents"
    assert mounts["plex"]["/data/media"] == f"{data}/media"
    assert mounts["bazarr"]["/data/media"] == f"{data}/media"
    for app, targets in mounts.items():
        config_target = "/app/config" if app == "seerr" else "/config"
        assert targets[config_target] == f"{config}/{app}", app


# ---------------------------------------------------------------------------------------- exposure


@pytest.mark.parametrize("stack", STACKS)
def test_only_routed_services_join_traefik_public(stack: str) -> None:
    routed = {name for name, service in services(stack).items() if labels(service).get("traefik.enable") == "true"}
    on_public = {name for name, service in services(stack).items() if "traefik_public" in network_names(stack, service)}
    assert routed == ROUTED[stack], f"{stack}: routed services {sorted(routed)}"
    assert on_public == ROUTED[stack], f"{stack}: on traefik_public {sorted(on_public)}"
    for name in routed:
        assert labels(services(stack)[name]).get("traefik.docker.network") == "traefik_public", name


@pytest.mark.parametrize("stack", STACKS)
def test_every_router_uses_websecure_and_carries_forward_auth_unless_public_on_purpose(stack: str) -> None:
    found: dict[str, dict[str, str]] = {}
    for name, service in services(stack).items():
        keys = labels(service)
        assert not [key for key in keys if key.startswith(("traefik.tcp.", "traefik.udp."))], f"{stack}/{name}"
        for router, options in routers(service).items():
            assert router not in found, f"{stack}: router {router} defined twice"
            found[router] = options
    assert set(found) == ROUTERS[stack], f"{stack}: routers {sorted(found)}"
    for router, options in found.items():
        where = f"{stack}: router {router}"
        # Without `entrypoints`, Traefik attaches a router to EVERY entry point, the internal one included.
        assert split(options.get("entrypoints", "")) == [ENTRY_POINT], f"{where}: entrypoints {options}"
        middlewares = split(options.get("middlewares", ""))
        assert SECURITY_HEADERS not in middlewares, f"{where}: {SECURITY_HEADERS} comes from the entry point"
        assert REQUIRED_MIDDLEWARES.get((stack, router), set()) <= set(middlewares), f"{where}: {middlewares}"
        if (stack, router) in PUBLIC_ROUTERS:
            assert AUTH_MIDDLEWARE not in middlewares, f"{where}: listed as public but has forward auth"
        else:
            assert AUTH_MIDDLEWARE in middlewares, f"{where}: no {AUTH_MIDDLEWARE} and not listed as public"
            assert "authentik@file" not in middlewares, f"{where}: use {AUTH_MIDDLEWARE} (strips spoofed headers)"


def test_file_provider_routers_follow_the_same_rules() -> None:
    """Routers in stacks/traefik/dynamic: websecure only, forward auth unless listed in PUBLIC_FILE_ROUTERS."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((STACKS_DIR / "traefik" / "dynamic").glob("*.y*ml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        assert not (document.get("tcp") or {}).get("routers"), f"{path.name}: TCP routers"
        for name, router in ((document.get("http") or {}).get("routers") or {}).items():
            assert name not in found, f"router {name} defined twice in dynamic/"
            found[name] = router
    assert set(PUBLIC_FILE_ROUTERS) <= set(found), "PUBLIC_FILE_ROUTERS names routers that do not exist"
    for name, router in found.items():
        assert router.get("entryPoints") == [ENTRY_POINT], f"dynamic router {name}: entryPoints {router}"
        middlewares = [m if "@" in m else f"{m}@file" for m in router.get("middlewares") or []]
        if name in PUBLIC_FILE_ROUTERS:
            assert AUTH_MIDDLEWARE not in middlewares, f"dynamic router {name}: listed as public but has forward auth"
        else:
            assert AUTH_MIDDLEWARE in middlewares, f"dynamic router {name}: no {AUTH_MIDDLEWARE}, not listed as public"


def test_the_websecure_entry_point_puts_the_security_headers_on_every_router() -> None:
    entry_points = static_config()["entryPoints"]
    assert entry_points[ENTRY_POINT]["http"]["middlewares"][0] == SECURITY_HEADERS
    redirect = entry_points["web"]["http"]["redirections"]["entryPoint"]
    assert (redirect["to"], redirect["scheme"]) == (ENTRY_POINT, "https"), "web only redirects"
    dynamic = yaml.safe_load((STACKS_DIR / "traefik" / "dynamic" / "middlewares.yml").read_text(encoding="utf-8"))
    headers = dynamic["http"]["middlewares"][SECURITY_HEADERS.removesuffix("@file")]["headers"]
    assert headers["stsSeconds"] >= 15552000 and headers["contentTypeNosniff"] is True
    assert headers.get("frameDeny") or headers.get("customFrameOptionsValue") in ("DENY", "SAMEORIGIN")
    assert headers["referrerPolicy"]


def test_zot_is_reachable_only_from_the_allowed_networks_and_syncs_only_docker_hub() -> None:
    service = services("zot")["zot"]
    ranges = split(labels(service)["traefik.http.middlewares.zot-allowlist.ipallowlist.sourcerange"])
    for cidr in ranges:
        network = ipaddress.ip_network(cidr)
        assert network.is_private, f"default ZOT_ALLOWED_SOURCES includes a public range: {cidr}"
        assert not network.overlaps(ipaddress.ip_network("172.16.0.0/12")), f"{cidr}: Docker's bridges live there"
    assert [port["host_ip"] for port in service.get("ports", [])] == ["127.0.0.1"], "loopback only"
    for name in ("config.json", "config-htpasswd.json"):
        config = json.loads((STACKS_DIR / "zot" / "config" / name).read_text(encoding="utf-8"))
        upstreams = {url for registry in config["extensions"]["sync"]["registries"] for url in registry["urls"]}
        assert upstreams == {"https://index.docker.io"}, f"{name}: syncs from {sorted(upstreams)}"
    authenticated = json.loads((STACKS_DIR / "zot" / "config" / "config-htpasswd.json").read_text(encoding="utf-8"))
    assert "anonymousPolicy" not in json.dumps(authenticated["http"]["accessControl"]), (
        "htpasswd mode: nothing anonymous"
    )


def test_minio_has_no_s3_router_and_the_fixed_release() -> None:
    service = services("minio")["minio"]
    ports = {value for key, value in labels(service).items() if key.endswith(".loadbalancer.server.port")}
    assert ports == {"9001"}, f"MinIO routes ports {ports}: the S3 API (9000) must not be routed"
    assert not service.get("ports"), "MinIO publishes no host port"
    assert service["image"].endswith(":RELEASE.2025-10-15T17-29-55Z"), "the release with the CVE-2025-62506 fix"
    assert service["build"]["args"]["MINIO_RELEASE"] == "RELEASE.2025-10-15T17-29-55Z"


# ------------------------------------------------------------------------------------------ networks


def test_backend_networks_are_internal() -> None:
    for stack, name, service in all_services():
        for network in network_names(stack, service):
            declared = defined_networks().get(network)
            assert declared is not None or network in DEPLOYER_NETWORKS, f"{stack}/{name}: nobody creates {network}"
            if (stack, name) in BACKENDS and (stack, name, network) not in NON_INTERNAL:
                assert is_internal(network), f"{stack}/{name}: backend on non-internal network {network}"
        if (stack, name) in BACKENDS:
            published = [port for port in service.get("ports") or [] if port.get("host_ip") != "127.0.0.1"]
            assert not published, f"{stack}/{name}: backend publishes {published}"


def test_the_media_stack_shares_no_network_with_the_monitoring_backends() -> None:
    backend_networks = {
        network
        for stack, name, service in all_services()
        if (stack, name) in MONITORING_BACKENDS
        for network in network_names(stack, service)
    }
    assert "minio_s3" in backend_networks
    for name, service in services("mediaserver").items():
        shared = network_names("mediaserver", service) & backend_networks
        assert not shared, f"mediaserver/{name} shares {sorted(shared)} with Mimir, Loki or Tempo"


# -------------------------------------------------------------------------------------- privileges


def test_only_the_socket_proxies_mount_the_docker_socket() -> None:
    for stack, name, service in all_services():
        sockets = [
            m for m in bind_mounts(service) if m["source"].endswith("docker.sock") or "docker.sock" in m["target"]
        ]
        sockets += [m for m in bind_mounts(service) if m["source"] in ("/var/run", "/run", "/var/lib/docker", "/")]
        if (stack, name) in SOCKET_PROXIES:
            assert [m["source"] for m in sockets] == ["/var/run/docker.sock"], f"{stack}/{name}: {sockets}"
            assert all(m.get("read_only") for m in sockets), f"{stack}/{name}: socket not read-only"
        else:
            assert not sockets, f"{stack}/{name} mounts {[m['source'] for m in sockets]}"
        docker_host = (service.get("environment") or {}).get("DOCKER_HOST") or ""
        assert not docker_host.startswith("unix://"), f"{stack}/{name}: DOCKER_HOST={docker_host}"


@pytest.mark.parametrize(("stack", "name"), sorted(SOCKET_PROXIES))
def test_socket_proxy_opens_only_what_its_client_uses(stack: str, name: str) -> None:
    service = services(stack)[name]
    environment = {key: str(value) for key, value in (service.get("environment") or {}).items()}
    assert environment.get("POST") == "0", f"{stack}/{name}: POST must be 0 (GET and HEAD only)"
    opened = {key for key, value in environment.items() if value == "1" and key not in ("DISABLE_IPV6",)}
    assert opened == SOCKET_PROXIES[(stack, name)], f"{stack}/{name} opens {sorted(opened)}"
    assert "/docker-socket-proxy:" in service["image"], service["image"]
    for network in network_names(stack, service):
        assert is_internal(network), f"{stack}/{name}: on non-internal network {network}"
    assert not service.get("ports"), f"{stack}/{name} must not publish its port"


def test_nothing_is_privileged_or_shares_host_namespaces_beyond_the_policy() -> None:
    for stack, name, service in all_services():
        where, allowed = f"{stack}/{name}", PRIVILEGES.get((stack, name), {})
        assert bool(service.get("privileged")) == bool(allowed.get("privileged")), f"{where}: privileged"
        for key in ("network_mode", "pid", "ipc", "userns_mode", "uts", "cgroup"):
            assert service.get(key) != "host" or allowed.get(key) == "host", f"{where}: {key}: host"
        assert set(service.get("cap_add") or []) <= set(allowed.get("cap_add", [])), f"{where}: cap_add"
        assert not service.get("devices") or allowed.get("devices"), f"{where}: devices {service.get('devices')}"
        unconfined = [opt for opt in service.get("security_opt") or [] if "unconfined" in opt]
        assert not unconfined, f"{where}: security_opt {unconfined}"


def test_host_mounts_outside_the_data_roots_are_listed_and_read_only() -> None:
    for stack, name, service in all_services():
        allowed = HOST_MOUNTS.get((stack, name), {})
        for mount in bind_mounts(service):
            source = PurePosixPath(mount["source"])
            if source.is_relative_to(STACKS_DIR / stack) or any(source.is_relative_to(r) for r in data_roots(stack)):
                continue
            assert str(source) in allowed, f"{stack}/{name}: host mount {source} is not in HOST_MOUNTS"
            assert mount.get("read_only"), f"{stack}/{name}: {source} must be read-only"
    assert all(reason for paths in HOST_MOUNTS.values() for reason in paths.values())
    assert all(entry.get("reason") for entry in PRIVILEGES.values())

"""What a stack may take from the host: bind mounts, privileges and host namespaces.

The deployer holds the Docker socket, so whoever can push to the branch could otherwise take the host
with one compose file (`volumes: ["/:/host"]`, `privileged: true`). The check runs on the config
`docker compose config --format json` resolved, i.e. what compose will run after interpolation,
`include` and `extends`, before anything is started. It is pure: the filesystem is asked only through
the `resolve` function it is given (symlinks).

A bind source is allowed when it lies inside the stack's own folder (symlinks resolved, so a committed
symlink cannot point out of it), or under one of DEPLOYER_ALLOWED_BIND_ROOTS: `/path` for every stack,
`stack:/path` for that stack only (`traefik:/var/run/docker.sock`). `privileged`, host namespaces
(`network_mode`, `pid`, `ipc`, `uts`, `userns_mode`, `cgroup` set to `host`), `cap_add`, `devices`,
device cgroup rules and unconfined security options are allowed only to the stacks in
DEPLOYER_ALLOW_PRIVILEGED.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from deployer.errors import ConfigError

__all__ = ["DEFAULT_BIND_ROOTS", "HostPolicy", "env_files", "violations"]

#: bind roots every stack may use when DEPLOYER_ALLOWED_BIND_ROOTS is not set: the seed's data root
DEFAULT_BIND_ROOTS = "/mnt/data"
_NAMESPACES = ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup")
_UNCONFINED = ("unconfined", "label=disable", "label:disable")
_LISTS = {"cap_add": "adds capabilities", "devices": "maps host devices", "device_cgroup_rules": "opens device rules"}


@dataclass(frozen=True)
class HostPolicy:
    """DEPLOYER_ALLOWED_BIND_ROOTS and DEPLOYER_ALLOW_PRIVILEGED, parsed."""

    bind_roots: tuple[PurePosixPath, ...] = (PurePosixPath(DEFAULT_BIND_ROOTS),)
    #: roots one stack only may bind (`stack:/path`)
    stack_bind_roots: Mapping[str, tuple[PurePosixPath, ...]] = field(default_factory=dict)
    privileged: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, bind_roots: str | None, privileged: str | None) -> HostPolicy:
        """Raises ConfigError naming the variable and the entry that is not an absolute path."""
        everyone: list[PurePosixPath] = []
        per_stack: dict[str, list[PurePosixPath]] = {}
        entries = (DEFAULT_BIND_ROOTS if bind_roots is None else bind_roots).split(",")
        for entry in filter(None, map(str.strip, entries)):
            stack, _, path = entry.rpartition(":") if not entry.startswith("/") else ("", "", entry)
            if not path.startswith("/") or (not entry.startswith("/") and not stack):
                raise ConfigError(
                    f"DEPLOYER_ALLOWED_BIND_ROOTS: {entry!r} is not an absolute path or STACK:/absolute/path"
                )
            root = PurePosixPath(posixpath.normpath(path))
            (per_stack.setdefault(stack, []) if stack else everyone).append(root)
        names = frozenset(name.strip() for name in (privileged or "").split(",") if name.strip())
        return cls(tuple(everyone), {s: tuple(r) for s, r in per_stack.items()}, names)

    def roots_for(self, stack: str) -> tuple[PurePosixPath, ...]:
        return (*self.bind_roots, *self.stack_bind_roots.get(stack, ()))

    def describe(self, stack: str) -> str:
        roots = self.roots_for(stack)
        return ", ".join(map(str, roots)) if roots else "none"


def violations(
    stack: str,
    config: Mapping[str, Any],
    *,
    folder: PurePosixPath,
    policy: HostPolicy,
    resolve: Callable[[str], str] = posixpath.normpath,
    reads: Iterable[tuple[str, str]] = (),
) -> list[str]:
    """Every way the resolved compose `config` of `stack` (files under `folder`) breaks `policy`.

    `reads` are more (where, absolute path) pairs compose reads from the host that its resolved config
    no longer shows (`env_file`). Each finding names the service (or top-level key) and the key at
    fault; empty when it complies.
    """
    found: list[str] = []
    home = PurePosixPath(resolve(str(folder)))
    roots = [PurePosixPath(resolve(str(root))) for root in policy.roots_for(stack)]  # /var/run is /run
    for where, source in (*_host_paths(config), *reads):
        if not source.startswith("/"):
            continue  # a named volume, a URL build context
        real = PurePosixPath(resolve(posixpath.normpath(source)))
        if real.is_relative_to(home) or any(real.is_relative_to(root) for root in roots):
            continue
        shown = source if str(real) == posixpath.normpath(source) else f"{source} (which is {real})"
        socket = " (the Docker socket: root on the host)" if real.name.startswith("docker.sock") else ""
        found.append(f"{where}: uses host path {shown}{socket}, outside the stack's folder and "
                     f"DEPLOYER_ALLOWED_BIND_ROOTS ({policy.describe(stack)})")  # fmt: skip
    if stack not in policy.privileged:
        found.extend(f"{where}, which only stacks in DEPLOYER_ALLOW_PRIVILEGED may do" for where in _privileges(config))
    return found


def env_files(document: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, path as written) for every `env_file` of a compose file as written: compose reads them
    while it resolves the file, and its resolved config shows only the variables they set."""
    for name, service in _services(document):
        given = service.get("env_file")
        for entry in [given] if isinstance(given, str) else given if isinstance(given, list) else ():
            path = entry.get("path") if isinstance(entry, Mapping) else entry
            if isinstance(path, str):
                yield f"service {name}: env_file", path


def _services(config: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    services = config.get("services")
    if isinstance(services, Mapping):
        for name, service in services.items():
            if isinstance(service, Mapping):
                yield str(name), service


def _host_paths(config: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, host path) for everything compose would read from or mount of the host."""
    for name, service in _services(config):
        for volume in service.get("volumes") or ():
            if isinstance(volume, Mapping) and volume.get("type") == "bind":
                yield f"service {name}: volumes", str(volume.get("source", ""))
        build = service.get("build")
        if isinstance(build, Mapping):
            yield f"service {name}: build.context", str(build.get("context", ""))
            for extra, path in (build.get("additional_contexts") or {}).items():
                yield f"service {name}: build.additional_contexts.{extra}", str(path)
    for key in ("secrets", "configs"):
        for name, entry in (config.get(key) or {}).items():
            if isinstance(entry, Mapping) and entry.get("file"):
                yield f"{key}.{name}: file", str(entry["file"])
    for name, volume in (config.get("volumes") or {}).items():
        options = volume.get("driver_opts") if isinstance(volume, Mapping) else None
        if isinstance(options, Mapping) and "bind" in str(options.get("o", "")).split(","):
            yield f"volumes.{name}: driver_opts.device", str(options.get("device", ""))


def _privileges(config: Mapping[str, Any]) -> Iterator[str]:
    for name, service in _services(config):
        where = f"service {name}"
        if service.get("privileged"):
            yield f"{where}: privileged: true"
        for key in _NAMESPACES:
            if str(service.get(key, "")).lower() == "host":
                yield f"{where}: {key}: host shares the host's namespace"
        for key, what in _LISTS.items():
            if service.get(key):
                yield f"{where}: {key} {what} ({', '.join(map(_short, service[key]))})"
        for option in service.get("security_opt") or ():
            if any(word in str(option) for word in _UNCONFINED):
                yield f"{where}: security_opt {option} lifts a confinement"


def _short(value: object) -> str:
    if isinstance(value, Mapping):  # a device in long form
        return str(value.get("source", value))
    return str(value)

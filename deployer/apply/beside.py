"""When the deployer itself runs in a container: can the engine see what the deployer sees?

`docker compose` sends the engine host paths. A stack's relative bind mount (`./data:/data`) resolves
against the stack's folder inside DEPLOYER_STATE_DIR as the deployer sees it, and the engine then
mounts that path *of the Docker host*. So the state dir must be mounted into the deployer's container
from the same path on the host, or every stack gets empty folders the engine creates on its own disk.

`check_beside_engine` finds the deployer's own container (from /proc/self/mountinfo, where the engine
bind-mounts the container's hostname, hosts and resolv.conf from its folder named by the container's
id), asks the engine for its mounts and refuses to start when the state dir does not come from the
same host path. When it cannot tell (not in a container, or the engine is another machine's and does
not know the container), it says so in the log and lets the deployer start.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from deployer.errors import ConfigError
from deployer.runner import CommandRunner

__all__ = ["check_beside_engine", "own_container_id", "socket_problem", "state_dir_problem"]

log = logging.getLogger("deployer.beside")

_CONTAINER_FILE = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\s")


def own_container_id(mountinfo: str) -> str | None:
    """The id of the Docker container this process runs in, from the text of /proc/self/mountinfo."""
    match = _CONTAINER_FILE.search(mountinfo)
    return match.group(1) if match else None


def state_dir_problem(mounts: Sequence[Mapping[str, object]], state_dir: PurePosixPath) -> str | None:
    """Why the engine would not see `state_dir` at the same path, given the container's mounts as
    `docker inspect` lists them (Type, Source, Destination), or None when it would."""
    best: tuple[PurePosixPath, Mapping[str, object]] | None = None
    for mount in mounts:
        destination = PurePosixPath(str(mount.get("Destination", "")))
        if (state_dir == destination or destination in state_dir.parents) and (
            best is None or len(destination.parts) > len(best[0].parts)
        ):
            best = destination, mount
    if best is None:
        return (
            f"DEPLOYER_STATE_DIR {state_dir} is not mounted from the Docker host: it lives in this container's"
            f" own filesystem, where the engine cannot see the stacks' files. Bind-mount a host folder at the"
            f" same path (volumes: - {state_dir}:{state_dir})"
        )
    destination, mount = best
    kind = str(mount.get("Type", "bind"))
    source = PurePosixPath(str(mount.get("Source", ""))) / state_dir.relative_to(destination)
    if kind != "bind" or source != state_dir:
        origin = f"the volume {mount.get('Name')}" if kind == "volume" else str(source)
        example = source if kind == "bind" else PurePosixPath("/srv/deployer")
        return (
            f"DEPLOYER_STATE_DIR {state_dir} is mounted from {origin} on the Docker host, not from {state_dir}:"
            f" a stack's relative bind mounts (./data) would resolve to {state_dir}/... on the host, outside"
            f" the deployer's files. Mount a host folder at its own path and point DEPLOYER_STATE_DIR at it"
            f" (volumes: - {example}:{example}, DEPLOYER_STATE_DIR={example}; deploy/compose.yaml does this)"
        )
    return None


def socket_problem(docker_env: Mapping[str, str], *, uid: int, groups: Sequence[int]) -> str | None:
    """Why this process cannot use the local Docker socket, or None (also when DOCKER_HOST is not one)."""
    host = docker_env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return None
    path = Path(host.removeprefix("unix://"))
    try:
        status = path.stat()
    except FileNotFoundError:
        return f"{path}: no Docker socket there (mount it: volumes: - {path}:{path}, or set DOCKER_HOST)"
    except OSError as error:
        return f"{path}: cannot look at the Docker socket: {error.strerror}"
    if os.access(path, os.R_OK | os.W_OK):
        return None
    return (
        f"{path}: uid {uid} (groups {', '.join(map(str, groups)) or 'none'}) may not use the Docker socket,"
        f" which belongs to uid {status.st_uid}, gid {status.st_gid}, mode {status.st_mode & 0o777:o}: add the"
        f" socket's group to the container (group_add: ['{status.st_gid}'], DOCKER_GID={status.st_gid} with"
        f" deploy/compose.yaml) or run it as root"
    )


def check_beside_engine(
    runner: CommandRunner,
    docker_env: Mapping[str, str],
    state_dir: Path,
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> None:
    """Refuse to start (ConfigError) when this process runs in a container whose engine would not see
    DEPLOYER_STATE_DIR at the same path, or cannot use the Docker socket it was given."""
    try:
        container = own_container_id(mountinfo.read_text(errors="replace"))
    except OSError:
        container = None
    if container is None:
        return  # not in a Docker container: the state dir is the host's own
    problem = socket_problem(docker_env, uid=os.getuid(), groups=os.getgroups())
    if problem:
        raise ConfigError(problem)
    inspected = runner.run(
        ["docker", "container", "inspect", "--format", "{{json .Mounts}}", container], env=docker_env, timeout=30
    )
    if not inspected.ok:
        log.warning(
            "running in container %s, which the engine at %s does not know (%s): cannot tell whether it sees"
            " DEPLOYER_STATE_DIR %s at the same path",
            container[:12], docker_env.get("DOCKER_HOST", "the local socket"),
            inspected.stderr.strip() or f"exit {inspected.returncode}", state_dir,
        )  # fmt: skip
        return
    try:
        mounts = json.loads(inspected.stdout) or []
    except json.JSONDecodeError as error:
        raise ConfigError(f"docker container inspect {container[:12]}: unreadable mounts: {error}") from error
    problem = state_dir_problem(mounts, PurePosixPath(state_dir.resolve()))
    if problem:
        raise ConfigError(problem)
    log.info(
        "running in container %s; the engine sees DEPLOYER_STATE_DIR %s at the same path", container[:12], state_dir
    )

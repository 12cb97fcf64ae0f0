"""How one stack is brought up on a Docker engine with `docker compose`.

`StackBackend` is the small interface the executor drives; `ComposeBackend` is its only
implementation so far. A Swarm backend (`docker stack deploy`) or a remote engine fits behind it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import yaml

from deployer.apply.engine import EngineApi, engine_name
from deployer.apply.secrets import redact
from deployer.errors import ComposeError, ComposeInvalidError, HealthCheckError, PolicyError
from deployer.host_policy import HostPolicy, env_files, violations
from deployer.interpolation import interpolate, stack_env_file
from deployer.model import Directory, Stack, StackName
from deployer.runner import CommandRunner, Completed
from deployer.yamlio import YAMLError, safe_load

__all__ = [
    "ComposeBackend", "StackBackend", "compose_base_argv", "compose_up_argv", "compose_variables", "engine_ping_cli",
    "last_line", "pin_images", "prepare_directories", "refuse_host_access", "tail",
]  # fmt: skip

#: how much of a failing command's output is kept for the operator
OUTPUT_TAIL = 4000
#: markers of `up --wait` failing on health rather than on creating things
_HEALTH_MARKERS = ("is unhealthy", "not healthy after", "exited (", "has exited")
#: extra seconds we give `up` beyond its own --wait-timeout before we kill it
_UP_GRACE = 120


class StackBackend(Protocol):
    def check(self, stack: Stack, *, workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
        """The stack's config as the engine's tooling resolves it (interpolated, includes merged).

        Raises ComposeInvalidError unless the tooling accepts the stack. The config holds the secrets'
        values: use it and drop it.
        """
        ...

    def up(
        self, stack: Stack, *, workdir: Path, env: Mapping[str, str], force: bool = False,
        images: Mapping[str, str] | None = None,
    ) -> str:  # fmt: skip
        """Bring the stack to its declared state and wait for health; return the output.

        `force` recreates its containers even when nothing about them changed; `images` (service: image
        id) runs those services on exactly those images whatever their tags say now (a rollback).

        Raises ComposeError (or HealthCheckError) with the output tail attached.
        """
        ...

    def images(self, name: StackName) -> dict[str, str]:
        """The image id each service of the running stack `name` runs on."""
        ...

    def down(self, name: StackName) -> str:
        """Remove a stack by name (its files may be gone); return the output."""
        ...

    def ping(self) -> str | None:
        """None when the engine answers, else why not (for readiness)."""
        ...


def compose_base_argv(stack: Stack, workdir: Path) -> list[str]:
    """The part of every compose command that names the project and its file."""
    return [
        "docker", "compose", "--ansi", "never", "--progress", "plain",
        "--project-name", stack.name,
        "--project-directory", str(workdir / stack.folder),
        "--file", str(workdir / stack.compose_file),
    ]  # fmt: skip


def compose_up_argv(stack: Stack, workdir: Path, *, force: bool = False, override: Path | None = None) -> list[str]:
    wait = ["--wait", "--wait-timeout", str(stack.wait_timeout)] if stack.wait_timeout else []
    recreate = ["--force-recreate"] if force else []
    pinned = ["--file", str(override)] if override is not None else []
    return [*compose_base_argv(stack, workdir), *pinned, "up", "--detach", "--remove-orphans", *recreate, *wait]


class ComposeBackend:
    """Brings stacks up with the `docker compose` v2 CLI on the engine `docker_env` points at."""

    def __init__(self, *, runner: CommandRunner, docker_env: Mapping[str, str], remote: bool = False) -> None:
        self.runner = runner
        self.docker_env = dict(docker_env)
        #: the engine is another host's: directories are made there, through it, not on this filesystem
        self.remote = remote
        self.engine = EngineApi(self.docker_env)  # questions for the engine: one API request, not a process

    def check(self, stack: Stack, *, workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
        argv = [*compose_base_argv(stack, workdir), "config", "--format", "json"]
        result = self._run(argv, env, stack=stack, timeout=60)
        if not result.ok:
            raise ComposeInvalidError(
                f"{stack.compose_file}: docker compose config rejected it: {last_line(result, env)}"
            )
        try:
            config = json.loads(result.stdout)
        except ValueError as error:
            raise ComposeInvalidError(f"{stack.compose_file}: docker compose config printed no JSON: {error}") from None
        if not isinstance(config, dict):
            raise ComposeInvalidError(f"{stack.compose_file}: docker compose config printed no mapping")
        return config

    def up(
        self, stack: Stack, *, workdir: Path, env: Mapping[str, str], force: bool = False,
        images: Mapping[str, str] | None = None,
    ) -> str:  # fmt: skip
        for network in stack.networks:
            self._ensure_network(stack, network)
        prepare_directories(stack, workdir, env, runner=self.runner, docker_env=self.docker_env, remote=self.remote)
        timeout = stack.wait_timeout + _UP_GRACE if stack.wait_timeout else 30 * 60
        override = pin_images(workdir / stack.folder, images) if images else None
        try:
            argv = compose_up_argv(stack, workdir, force=force, override=override)
            result = self._run(argv, env, stack=stack, timeout=timeout)
        finally:
            if override is not None:
                override.unlink(missing_ok=True)
        output = tail(result, env)
        if result.ok:
            return output
        error = HealthCheckError if any(m in output for m in _HEALTH_MARKERS) else ComposeError
        what = "did not become healthy" if error is HealthCheckError else "compose up failed"
        raise error(f"{stack.compose_file}: {what}: {last_line(result, env)}", output=output)

    def images(self, name: StackName) -> dict[str, str]:
        return self.engine.images(name)

    def down(self, name: StackName) -> str:
        argv = ["docker", "compose", "--ansi", "never", "--project-name", name, "down", "--remove-orphans"]
        result = self._run(argv, {}, timeout=600)
        if not result.ok:
            raise ComposeError(f"stack {name}: compose down failed: {last_line(result, {})}", output=tail(result, {}))
        return tail(result, {})

    def ping(self) -> str | None:
        if self.docker_env.get("DOCKER_HOST", "").startswith("ssh://") or "DOCKER_CONTEXT" in self.docker_env:
            return engine_ping_cli(self.runner, self.docker_env)  # the CLI says what ssh said (refused key, host)
        return self.engine.ping()

    def _run(
        self, argv: list[str], secrets: Mapping[str, str], *, timeout: float, stack: Stack | None = None
    ) -> Completed:
        """Run a docker command with the stack's variables (shared.env, its .env) and secrets in its environment.

        Only `secrets` are redacted from what is kept of the output; the variables are not secret.
        """
        variables = stack.variables if stack is not None else {}
        return self.runner.run(argv, env={**self.docker_env, **variables, **secrets}, timeout=timeout)

    def _ensure_network(self, stack: Stack, name: str) -> None:
        if self.runner.run(["docker", "network", "inspect", name], env=self.docker_env, timeout=30).ok:
            return
        created = self.runner.run(
            ["docker", "network", "create", "--label", f"io.deployer.created-by={stack.name}", name],
            env=self.docker_env,
            timeout=60,
        )
        if not created.ok and "already exists" not in created.stderr:
            raise ComposeError(f"{stack.compose_file}: cannot create network {name}: {last_line(created, {})}")


def engine_ping_cli(runner: CommandRunner, docker_env: Mapping[str, str]) -> str | None:
    """`docker version` against the engine: for engines behind ssh or a context, whose errors the CLI names."""
    result = runner.run(["docker", "version", "--format", "{{.Server.Version}}"], env=docker_env, timeout=30)
    if result.ok:
        return None
    return f"{engine_name(docker_env)}: {last_line(result, {})}"


def refuse_host_access(
    stack: Stack, config: Mapping[str, Any], *, workdir: Path, policy: HostPolicy, secrets: Mapping[str, str]
) -> None:
    """Raise PolicyError listing what the resolved `config` takes from the host beyond `policy`.

    Symlinks are resolved on this filesystem: the worktree is the deployer's own, and a host path
    outside it resolves the same way when the deployer runs on the host (in a container, only as far as
    its mounts show the host).
    """
    folder = workdir / stack.folder
    findings = violations(stack.name, config, folder=PurePosixPath(folder), policy=policy, resolve=os.path.realpath,
                          reads=_env_files(stack, workdir, secrets))  # fmt: skip
    if findings:
        lines = tuple(redact(f"{stack.compose_file}: refused by the host policy: {f}", secrets.values())
                      for f in findings)  # fmt: skip
        raise PolicyError(lines[0], details=lines[1:])


def _env_files(stack: Stack, workdir: Path, secrets: Mapping[str, str]) -> list[tuple[str, str]]:
    """The stack's `env_file` paths, interpolated as compose would and made absolute from its folder."""
    try:
        document = safe_load((workdir / stack.compose_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeError, YAMLError):
        return []  # compose config accepted it: the catalog read it under its limits already
    if not isinstance(document, dict):
        return []
    folder = workdir / stack.folder
    variables = compose_variables(stack, workdir, secrets)
    found = []
    for where, path in env_files(document):
        try:
            found.append((where, os.path.join(folder, interpolate(path, variables))))
        except KeyError:
            continue  # a required variable unset: compose config refused it already
    return found


def pin_images(folder: Path, images: Mapping[str, str]) -> Path:
    """A compose override beside the stack's file naming each service's image id (no secret in it)."""
    path = folder / ".deployer-images.yaml"
    path.write_text(yaml.safe_dump({"services": {service: {"image": image} for service, image in images.items()}}))
    return path


def compose_variables(stack: Stack, workdir: Path, secrets: Mapping[str, str]) -> dict[str, str]:
    """What compose interpolates a stack's file with: shared.env, the stack's own .env over it, its secrets last."""
    return {**stack.variables, **stack_env_file(workdir / stack.folder), **secrets}


def prepare_directories(stack: Stack, workdir: Path, secrets: Mapping[str, str], *, runner: CommandRunner,
                        docker_env: Mapping[str, str], remote: bool) -> None:  # fmt: skip
    """Create the stack's x-deployer directories where its containers will see them: on this filesystem for
    the deployer's own engine, on the other host (through its engine) for a stack with a docker_host. Their
    paths are interpolated as compose would (compose_variables)."""
    if not stack.directories:
        return
    variables = compose_variables(stack, workdir, secrets)
    if not remote:
        for directory in stack.directories:
            ensure_directory(stack, directory, variables)
        return
    image = _first_image(stack, workdir, variables)
    for directory in stack.directories:
        ensure_directory_on_engine(stack, directory, variables, image=image, runner=runner, docker_env=docker_env)


def ensure_directory_on_engine(stack: Stack, directory: Directory, variables: Mapping[str, str], *, image: str,
                               runner: CommandRunner, docker_env: Mapping[str, str]) -> None:  # fmt: skip
    """Create a directory on the host of the engine `docker_env` names: the engine creates a missing bind
    source itself; a short-lived container of the stack's own image (as root, no network) sets owner and mode.
    An owner must be numeric there: names would resolve in the image, not on that host."""
    where = engine_name(docker_env)
    try:
        path = os.path.normpath(interpolate(directory.path, variables))
    except KeyError as error:
        raise ComposeError(f"{stack.compose_file}: directory {directory.path}: {error.args[0]}") from None
    if directory.owner is not None and not all(part.isdigit() for part in directory.owner.split(":")):
        raise ComposeError(f"{stack.compose_file}: directory {path}: owner {directory.owner!r} must be uid[:gid] for a "
                           f"stack on another engine ({where}): names resolve on that host, not here")  # fmt: skip
    script = ["true"]
    if directory.owner is not None:
        script.append(f"chown {directory.owner} /deployer-dir")
    if directory.mode is not None:
        script.append(f"chmod {directory.mode:o} /deployer-dir")
    argv = ["docker", "run", "--rm", "--user", "0:0", "--network", "none", "--entrypoint", "sh",
            "--volume", f"{path}:/deployer-dir", image, "-c", " && ".join(script)]  # fmt: skip
    result = runner.run(argv, env=docker_env, timeout=300)
    if not result.ok:
        raise ComposeError(f"{stack.compose_file}: cannot prepare directory {path} on {where} (with {image}): "
                           f"{last_line(result, {})}")  # fmt: skip


def _first_image(stack: Stack, workdir: Path, variables: Mapping[str, str]) -> str:
    """The image of the stack's first service that names one (interpolated as compose would)."""
    try:
        document = safe_load((workdir / stack.compose_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeError, YAMLError) as error:
        raise ComposeError(f"{stack.compose_file}: cannot read it: {error}") from None
    services = document.get("services") if isinstance(document, dict) else None
    for service in (services or {}).values():
        if isinstance(service, dict) and isinstance(service.get("image"), str):
            try:
                return interpolate(service["image"], variables)
            except KeyError:
                continue
    raise ComposeError(f"{stack.compose_file}: x-deployer.directories on another engine need a service with an "
                       "image (its container makes them there)")  # fmt: skip


def ensure_directory(stack: Stack, directory: Directory, variables: Mapping[str, str]) -> None:
    """Create a host directory and give it the declared owner and mode (also when it exists).

    The path may use variables (`${DATA_ROOT:-/mnt/data}/db`), resolved as compose would: from the
    stack's secrets and its .env, else the default.
    """
    try:
        path = Path(os.path.normpath(interpolate(directory.path, variables)))
    except KeyError as error:
        raise ComposeError(f"{stack.compose_file}: directory {directory.path}: {error.args[0]}") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if directory.owner is not None:
            uid, gid = _owner_ids(directory.owner)
            os.chown(path, uid, gid)
        if directory.mode is not None:
            path.chmod(directory.mode)
    except (OSError, KeyError) as error:
        raise ComposeError(f"{stack.compose_file}: cannot prepare directory {path}: {error}") from error


def _owner_ids(owner: str) -> tuple[int, int]:
    user, _, group = owner.partition(":")
    uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    if not group:
        return uid, -1
    gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def tail(result: Completed, secrets: Mapping[str, str]) -> str:
    """The end of a command's output, redacted whole before it is cut (a cut must not split a secret)."""
    return redact(result.stdout + result.stderr, secrets.values()).strip()[-OUTPUT_TAIL:]


def last_line(result: Completed, secrets: Mapping[str, str]) -> str:
    text = redact(result.stderr or result.stdout, secrets.values())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {result.returncode}"

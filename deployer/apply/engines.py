"""Which backend brings each stack up: compose or swarm, on the deployer's engine or another one.

`Engines` is the StackBackend the pipeline holds. It sends each stack to the backend of its placement
(x-deployer `engine` and `docker_host`); a removal goes where the stack was last deployed, as the state
store recorded it, since its compose file is gone. (How many run at once on one host is the executor's.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deployer.apply.compose import ComposeBackend, StackBackend, last_line
from deployer.apply.swarm import SwarmBackend
from deployer.errors import ComposeInvalidError
from deployer.model import Placement, Stack, StackName
from deployer.runner import CommandRunner

__all__ = ["Engines", "docker_env_for"]


def docker_env_for(docker_env: Mapping[str, str], docker_host: str | None) -> dict[str, str]:
    """The docker CLI's environment for an engine: an address becomes DOCKER_HOST, a name DOCKER_CONTEXT.

    DOCKER_TLS_VERIFY and DOCKER_CERT_PATH are kept for a tcp:// engine only: the docker CLI reads their
    certificate files whatever the engine (and fails without them), and a context carries its own TLS.
    """
    env = dict(docker_env)
    if docker_host is not None:
        env = {k: v for k, v in env.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
        env["DOCKER_HOST" if "://" in docker_host else "DOCKER_CONTEXT"] = docker_host
    if not env.get("DOCKER_HOST", "").startswith("tcp://"):
        env = {k: v for k, v in env.items() if k not in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
    return env


class Engines:
    """A StackBackend per placement, made on first use and kept (each holds its engine connection)."""

    def __init__(self, *, runner: CommandRunner, docker_env: Mapping[str, str],
                 placed: Callable[[StackName], Placement | None], rollback: bool = True) -> None:  # fmt: skip
        self.runner = runner
        self.docker_env = dict(docker_env)
        self._placed = placed
        self._backends: dict[Placement, StackBackend] = {}
        self._last_up: dict[StackName, Placement] = {}
        self._rollback = rollback
        self._lock = threading.Lock()

    def backend(self, placement: Placement) -> StackBackend:
        with self._lock:
            if placement not in self._backends:
                env = docker_env_for(self.docker_env, placement.docker_host)
                remote = placement.docker_host is not None
                if placement.engine == "swarm":
                    self._backends[placement] = SwarmBackend(runner=self.runner, docker_env=env, remote=remote,
                                                             rollback=self._rollback)  # fmt: skip
                else:
                    self._backends[placement] = ComposeBackend(runner=self.runner, docker_env=env, remote=remote)
            return self._backends[placement]

    def check(self, stack: Stack, *, workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
        """The backend's check, after proving a Docker context the stack names exists (a typo is bad input,
        refused before anything changes; an engine that does not answer is a fault, retried)."""
        host = stack.docker_host
        if host is not None and "://" not in host:
            found = self.runner.run(["docker", "context", "inspect", host], env=self.docker_env, timeout=30)
            if not found.ok:
                raise ComposeInvalidError(f"{stack.compose_file}: x-deployer.docker_host: no Docker context named "
                                          f"{host!r} here (docker context ls): {last_line(found, {})}")  # fmt: skip
        return self.backend(stack.placement).check(stack, workdir=workdir, env=env)

    def up(
        self, stack: Stack, *, workdir: Path, env: Mapping[str, str], force: bool = False,
        images: Mapping[str, str] | None = None,
    ) -> str:  # fmt: skip
        with self._lock:
            self._last_up[stack.name] = stack.placement
        return self.backend(stack.placement).up(stack, workdir=workdir, env=env, force=force, images=images)

    def placement(self, name: StackName) -> Placement:
        """Where `name` runs: where this process last brought it up, else where the state store says."""
        with self._lock:
            last = self._last_up.get(name)
        return last or self._placed(name) or Placement()

    def images(self, name: StackName) -> dict[str, str]:
        return self.backend(self.placement(name)).images(name)

    def containers(self, name: StackName) -> list[dict[str, Any]] | None:
        """The container summaries (`GET /containers/json?all=1`) of compose stack `name` where it runs; None for
        a swarm stack (the swarm reconciles its services itself). Raises DockerException or RequestException."""
        backend = self.backend(self.placement(name))
        return backend.engine.project_containers(name) if isinstance(backend, ComposeBackend) else None

    def project_containers(self, docker_host: str | None) -> list[dict[str, Any]]:
        """Every compose project's containers on one engine (the deployer's own for None), in one request.
        Raises DockerException or RequestException."""
        backend = self.backend(Placement(docker_host=docker_host))
        assert isinstance(backend, ComposeBackend)
        return backend.engine.project_containers()

    def down(self, name: StackName, placement: Placement | None = None) -> str:
        """Bring `name` down where it runs (or on `placement`: the engine a moved stack left)."""
        return self.backend(placement or self.placement(name)).down(name)

    def ping(self, placement: Placement | None = None) -> str | None:
        """Whether an engine answers: the deployer's own, or the one `placement` names."""
        return self.backend(Placement(docker_host=placement.docker_host) if placement else Placement()).ping()

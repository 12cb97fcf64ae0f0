"""Which backend brings each stack up: compose or swarm, on the deployer's engine or another one.

`Engines` is the StackBackend the pipeline holds. It sends each stack to the backend of its placement
(x-deployer `engine` and `docker_host`); a removal goes where the stack was last deployed, as the state
store recorded it, since its compose file is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deployer.apply.compose import ComposeBackend, StackBackend
from deployer.apply.swarm import SwarmBackend
from deployer.model import Placement, Stack, StackName
from deployer.runner import CommandRunner

__all__ = ["Engines", "docker_env_for"]


def docker_env_for(docker_env: Mapping[str, str], docker_host: str | None) -> dict[str, str]:
    """The docker CLI's environment for an engine: an address becomes DOCKER_HOST, a name DOCKER_CONTEXT."""
    if docker_host is None:
        return dict(docker_env)
    env = {k: v for k, v in docker_env.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env["DOCKER_HOST" if "://" in docker_host else "DOCKER_CONTEXT"] = docker_host
    return env


class Engines:
    """A StackBackend per placement, made on first use and kept (each holds its engine connection)."""

    def __init__(self, *, runner: CommandRunner, docker_env: Mapping[str, str],
                 placed: Callable[[StackName], Placement | None]) -> None:  # fmt: skip
        self.runner = runner
        self.docker_env = dict(docker_env)
        self._placed = placed
        self._backends: dict[Placement, StackBackend] = {}
        self._last_up: dict[StackName, Placement] = {}
        self._lock = threading.Lock()

    def backend(self, placement: Placement) -> StackBackend:
        with self._lock:
            if placement not in self._backends:
                env = docker_env_for(self.docker_env, placement.docker_host)
                kind = SwarmBackend if placement.engine == "swarm" else ComposeBackend
                self._backends[placement] = kind(runner=self.runner, docker_env=env)
            return self._backends[placement]

    def check(self, stack: Stack, *, workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
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

    def down(self, name: StackName) -> str:
        return self.backend(self.placement(name)).down(name)

    def ping(self) -> str | None:
        """Whether the deployer's own engine answers (each stack's engine is asked when it deploys)."""
        return self.backend(Placement()).ping()

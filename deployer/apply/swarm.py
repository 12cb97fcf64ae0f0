"""Bring a stack up on Docker Swarm: `docker stack deploy`, then the engine's own word on convergence.

`docker stack deploy --detach=false` waits for its services, but exits 0 when Swarm rolled an update
back ("rollback completed"), and never reads `.env`. So: the interpolation variables (shared.env, the
stack's .env, its secrets) go into the CLI's environment as compose would read them; after the CLI
returns, every service of the stack is read from the engine (docker SDK): an update Swarm rolled back
is SwarmRolledBackError, never success; one still updating or paused after the wait is rolled back
with `docker service rollback`; a service short of its replicas is a failure. A stack is healthy when
every service runs its desired replicas (tasks with a healthcheck are `running` only once healthy) and
no update is in progress.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from docker.errors import DockerException
from requests.exceptions import RequestException

from deployer.apply.compose import ComposeBackend, compose_variables, last_line, pin_images, prepare_directories, tail
from deployer.apply.engine import EngineApi
from deployer.errors import ComposeError, ComposeInvalidError, HealthCheckError, SwarmRolledBackError
from deployer.model import Stack, StackName
from deployer.runner import CommandRunner, Completed

__all__ = ["SwarmBackend"]

#: seconds beyond the stack's wait_timeout the CLI gets before it is stopped and the engine asked
_GRACE = 60
_IN_PROGRESS = ("updating", "rollback_started")
_PAUSED = ("paused", "rollback_paused")
_NAMESPACE = "com.docker.stack.namespace"


class SwarmBackend:
    """Swarm stacks on the engine `docker_env` points at, which must be a swarm manager."""

    def __init__(self, *, runner: CommandRunner, docker_env: Mapping[str, str], remote: bool = False,
                 rollback: bool = True, poll: float = 0.5) -> None:  # fmt: skip
        self.runner = runner
        self.docker_env = dict(docker_env)
        self.remote = remote
        #: DEPLOYER_ROLLBACK: run `docker service rollback` on an update left paused or unconverged
        self.rollback = rollback
        self.engine = EngineApi(self.docker_env)
        self._compose = ComposeBackend(runner=runner, docker_env=docker_env, remote=remote)
        self._poll = poll

    def check(self, stack: Stack, *, workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
        """Compose's resolved config (for the host policy), once `docker stack config` accepts the file too."""
        problem = self.engine.swarm_problem()
        if problem is not None:
            raise ComposeInvalidError(f"{stack.compose_file}: x-deployer.engine: swarm: {problem}")
        config = self._compose.check(stack, workdir=workdir, env=env)
        argv = ["docker", "stack", "config", "--compose-file", str(workdir / stack.compose_file)]
        result = self._run(argv, stack, workdir, env, timeout=60)
        if not result.ok:
            raise ComposeInvalidError(
                f"{stack.compose_file}: docker stack config rejected it: {last_line(result, env)}"
            )
        return config

    def up(
        self, stack: Stack, *, workdir: Path, env: Mapping[str, str], force: bool = False,
        images: Mapping[str, str] | None = None,
    ) -> str:  # fmt: skip
        for network in stack.networks:
            self._ensure_network(stack, network)
        prepare_directories(stack, workdir, env, runner=self.runner, docker_env=self.docker_env, remote=self.remote)
        before = self._updates(stack.name) if stack.wait_timeout > 0 else {}
        override = pin_images(workdir / stack.folder, images) if images else None
        wait = stack.wait_timeout > 0  # 0: do not wait, as for compose (nothing is judged then)
        argv = ["docker", "stack", "deploy", "--prune", "--with-registry-auth", f"--detach={str(not wait).lower()}",
                "--resolve-image", "changed", "--compose-file", str(workdir / stack.compose_file)]  # fmt: skip
        if override is not None:
            argv += ["--compose-file", str(override)]
        timeout = (stack.wait_timeout or 30 * 60) + _GRACE
        try:
            result = self._run([*argv, stack.name], stack, workdir, env, timeout=timeout)
        finally:
            if override is not None:
                override.unlink(missing_ok=True)
        output = tail(result, env)
        if not result.ok and (not wait or not self._services(stack.name)):
            raise ComposeError(f"{stack.compose_file}: docker stack deploy failed: {last_line(result, env)}",
                               output=output)  # fmt: skip
        if force:
            self._force_update(stack, env)
        return self._verdict(stack, before, output=output, result=result, env=env) if wait else output

    def images(self, name: StackName) -> dict[str, str]:
        """The image each service's spec names (Swarm pins the digest it resolved), by service name."""
        try:
            services = self._services(name)
        except ComposeError:
            return {}
        prefix = f"{name}_"
        return {
            s["Spec"]["Name"].removeprefix(prefix): str(s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])
            for s in services
        }

    def down(self, name: StackName) -> str:
        result = self.runner.run(["docker", "stack", "rm", name], env=self.docker_env, timeout=600)
        if not result.ok:
            raise ComposeError(f"stack {name}: docker stack rm failed: {last_line(result, {})}",
                               output=tail(result, {}))  # fmt: skip
        deadline = time.monotonic() + 120
        while self._services(name) and time.monotonic() < deadline:
            time.sleep(self._poll)
        return tail(result, {})

    def ping(self) -> str | None:
        return self._compose.ping()

    def _verdict(self, stack: Stack, before: Mapping[str, str | None], *, output: str, result: Completed,
                 env: Mapping[str, str]) -> str:  # fmt: skip
        """The stack's state as the engine tells it, after the CLI's own wait: raise unless converged."""
        deadline = time.monotonic() + _GRACE
        while True:
            services = self._services(stack.name)
            ours = {s["Spec"]["Name"]: s for s in services}
            rolled = [n for n, s in ours.items() if _update(s) == "rollback_completed" and _started(s) != before.get(n)]
            if rolled:
                raise SwarmRolledBackError(f"{stack.compose_file}: Swarm rolled back {', '.join(sorted(rolled))}: "
                                           f"{_messages(ours, rolled)}", output=output)  # fmt: skip
            stuck = [n for n, s in ours.items() if _update(s) in _PAUSED]
            moving = [n for n, s in ours.items() if _update(s) in _IN_PROGRESS]
            short = {n: r for n, s in ours.items() if (r := self._short(s))}
            if stuck or ((moving or short) and time.monotonic() > deadline):
                return self._roll_back(stack, ours, [*stuck, *moving, *short], output=output, why=short)
            if not (moving or short):
                if not result.ok:  # converged, yet the CLI said no: say what it said
                    raise ComposeError(f"{stack.compose_file}: docker stack deploy: {last_line(result, env)}",
                                       output=output)  # fmt: skip
                return output
            time.sleep(self._poll)

    def _roll_back(self, stack: Stack, services: Mapping[str, dict[str, Any]], failing: list[str], *, output: str,
                   why: Mapping[str, str]) -> str:  # fmt: skip
        """`docker service rollback` each failing service that has a previous spec; raise what happened."""
        said = "; ".join(f"{n}: {r}" for n, r in sorted(why.items())) or _messages(services, failing)
        previous = sorted(n for n in set(failing) if services[n].get("PreviousSpec"))
        if not previous:  # a first deploy: nothing to go back to (left as Swarm left it)
            raise HealthCheckError(f"{stack.compose_file}: not converged: {said}", output=output)
        if not self.rollback:
            raise HealthCheckError(f"{stack.compose_file}: not converged: {said} (left as Swarm left it: "
                                   "DEPLOYER_ROLLBACK=false)", output=output)  # fmt: skip
        for name in previous:
            result = self.runner.run(["docker", "service", "rollback", "--detach=false", name], env=self.docker_env,
                                     timeout=(stack.wait_timeout or 300) + _GRACE)  # fmt: skip
            if not result.ok:
                raise ComposeError(f"{stack.compose_file}: not converged ({said}); docker service rollback {name} "
                                   f"failed too: {last_line(result, {})}", output=output)  # fmt: skip
        ended = self._rollbacks_ended(stack, previous)
        unfinished = {n: state for n, state in ended.items() if state != "rollback_completed"}
        if unfinished:
            shown = ", ".join(f"{n} {state or 'unknown'}" for n, state in sorted(unfinished.items()))
            raise ComposeError(f"{stack.compose_file}: not converged ({said}); Swarm's rollback did not complete: "
                               f"{shown}", output=output)  # fmt: skip
        raise SwarmRolledBackError(f"{stack.compose_file}: not converged ({said}); Swarm rolled back "
                                   f"{', '.join(previous)}", output=output)  # fmt: skip

    def _rollbacks_ended(self, stack: Stack, names: list[str]) -> dict[str, str | None]:
        """Each named service's update state once its rollback is no longer in progress (or the time is up)."""
        deadline = time.monotonic() + (stack.wait_timeout or 300) + _GRACE
        while True:
            states = {s["Spec"]["Name"]: _update(s) for s in self._services(stack.name) if s["Spec"]["Name"] in names}
            if all(state not in _IN_PROGRESS for state in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(self._poll)

    def _short(self, service: Mapping[str, Any]) -> str | None:
        """Why `service` is not at its desired state (tasks missing or not yet running), or None."""
        mode = service["Spec"].get("Mode", {})
        try:
            tasks = self.engine.tasks(service["ID"])
        except (DockerException, RequestException) as error:
            raise ComposeError(f"cannot read the tasks of {service['Spec']['Name']}: {error}") from error
        wanted = [t for t in tasks if t.get("DesiredState") == "running"]
        running = [t for t in wanted if t.get("Status", {}).get("State") == "running"]
        replicas = mode.get("Replicated", {}).get("Replicas") if "Replicated" in mode else len(wanted) or None
        if replicas is not None and len(running) >= replicas:
            return None
        errors = sorted({t["Status"]["Err"] for t in tasks if t.get("Status", {}).get("Err")})
        shown = f"{len(running)}/{replicas if replicas is not None else '?'} tasks running"
        return f"{shown} ({errors[-1]})" if errors else shown

    def _updates(self, name: StackName) -> dict[str, str | None]:
        """When each existing service's last update started: a later rollback is this deployment's."""
        return {s["Spec"]["Name"]: _started(s) for s in self._services(name)}

    def _services(self, name: StackName) -> list[dict[str, Any]]:
        try:
            return self.engine.services(f"{_NAMESPACE}={name}")
        except (DockerException, RequestException) as error:
            raise ComposeError(f"stack {name}: cannot read its services from the engine: {error}") from error

    def _force_update(self, stack: Stack, env: Mapping[str, str]) -> None:
        for service in sorted(s["Spec"]["Name"] for s in self._services(stack.name)):
            argv = ["docker", "service", "update", "--force", "--detach=false", service]
            result = self.runner.run(argv, env=self.docker_env, timeout=(stack.wait_timeout or 300) + _GRACE)
            if not result.ok:
                raise ComposeError(f"{stack.compose_file}: docker service update --force {service} failed: "
                                   f"{last_line(result, env)}", output=tail(result, env))  # fmt: skip

    def _ensure_network(self, stack: Stack, name: str) -> None:
        """An external network a swarm stack joins: overlay and attachable, so compose stacks can join it too."""
        if self.runner.run(["docker", "network", "inspect", name], env=self.docker_env, timeout=30).ok:
            return
        created = self.runner.run(["docker", "network", "create", "--driver", "overlay", "--attachable", "--label",
                                   f"io.deployer.created-by={stack.name}", name], env=self.docker_env,
                                  timeout=30)  # fmt: skip
        if not created.ok and not self.runner.run(["docker", "network", "inspect", name], env=self.docker_env,
                                                  timeout=30).ok:  # fmt: skip
            raise ComposeError(f"{stack.compose_file}: cannot create network {name}: {last_line(created, {})}")

    def _run(self, argv: list[str], stack: Stack, workdir: Path, env: Mapping[str, str], *,
             timeout: float) -> Completed:  # fmt: skip
        """A docker command with the variables compose would read (Swarm reads no .env itself) and the secrets."""
        return self.runner.run(argv, env={**self.docker_env, **compose_variables(stack, workdir, env)}, timeout=timeout)


def _update(service: Mapping[str, Any]) -> str | None:
    return (service.get("UpdateStatus") or {}).get("State")


def _started(service: Mapping[str, Any]) -> str | None:
    return (service.get("UpdateStatus") or {}).get("StartedAt")


def _messages(services: Mapping[str, Mapping[str, Any]], names: list[str]) -> str:
    said = [f"{n}: {m}" for n in sorted(set(names)) if (m := (services[n].get("UpdateStatus") or {}).get("Message"))]
    return "; ".join(said) or "no message from Swarm"

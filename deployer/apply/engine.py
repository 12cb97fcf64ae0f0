"""The Docker engine's own API, through the docker SDK: what the compose CLI cannot say cheaply.

Compose brings stacks up (a subprocess, behind the runner seam); questions for the engine (is it there,
what does a project run) are one HTTP request each here instead of one or two `docker` processes (~20 ms
each). The API version is negotiated with the engine and capped at the newest one the tests have run
against, never pinned low (Engine 29.0-29.2 refuses clients older than 1.44).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import docker
from docker.context import ContextAPI
from docker.errors import DockerException
from docker.utils import kwargs_from_env
from requests.exceptions import RequestException

__all__ = ["TESTED_API_VERSION", "EngineApi", "engine_name"]

#: the newest Engine API version this code is tested against; a newer engine is spoken to at this version
TESTED_API_VERSION = "1.45"
_TIMEOUT = 10
_PROJECT = "com.docker.compose.project"


class EngineApi:
    """The engine `docker_env` points at (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), connected lazily.

    A connection that fails is made again on the next call: an engine that was down answers once it is back.
    """

    def __init__(self, docker_env: Mapping[str, str]) -> None:
        self._env = dict(docker_env)
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def ping(self) -> str | None:
        """None when the engine answers a new connection, else why not.

        Never over a pooled connection: an engine shutting down still answers on the connections it
        has, while compose (and everyone else) can no longer connect.
        """
        try:
            client = _connect(self._env)
        except (DockerException, RequestException) as error:
            return _why(error, self._env)
        try:
            client.ping()
        except (DockerException, RequestException) as error:
            return _why(error, self._env)
        finally:
            client.close()
        return None

    def images(self, project: str) -> dict[str, str]:
        """The image id each service of compose project `project` runs, from its running containers ({} if none)."""
        try:
            found = self._connected().api.containers(filters={"label": f"com.docker.compose.project={project}"})
        except (DockerException, RequestException):
            self._forget()
            return {}
        return _service_images(found)

    def project_containers(self, project: str | None = None) -> list[dict[str, Any]]:
        """`GET /containers/json?all=1` of every compose project at once: the containers (stopped ones too) that
        carry a `com.docker.compose.project` label, in one request however many stacks there are; or only
        those of `project`.

        Raises DockerException or RequestException, after forgetting the pooled connection (the next call
        connects anew, so an engine that restarted answers again).
        """
        try:
            label = _PROJECT if project is None else f"{_PROJECT}={project}"
            found: list[dict[str, Any]] = self._connected().api.containers(all=True, filters={"label": label})
        except (DockerException, RequestException):
            self._forget()
            raise
        return found

    def swarm_problem(self) -> str | None:
        """None when the engine is a swarm manager (it can deploy stacks), else why it cannot."""
        try:
            swarm = self._connected().info().get("Swarm") or {}
        except (DockerException, RequestException) as error:
            self._forget()
            return _why(error, self._env)
        where = engine_name(self._env)
        if swarm.get("LocalNodeState") != "active":
            return f"the engine at {where} is not part of a swarm (docker swarm init, or join one)"
        if not swarm.get("ControlAvailable"):
            return f"the engine at {where} is a swarm worker, not a manager: stacks deploy through a manager"
        return None

    def services(self, label: str) -> list[dict[str, Any]]:
        """`GET /services` filtered by `label` (key=value). Raises DockerException or RequestException."""
        found: list[dict[str, Any]] = self._connected().api.services(filters={"label": label})
        return found

    def tasks(self, service_id: str) -> list[dict[str, Any]]:
        """`GET /tasks` of one service. Raises DockerException or RequestException."""
        found: list[dict[str, Any]] = self._connected().api.tasks(filters={"service": service_id})
        return found

    def _connected(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = _connect(self._env)
            return self._client

    def _forget(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _connect(env: Mapping[str, str]) -> docker.DockerClient:
    """A client at the engine's API version, or TESTED_API_VERSION if the engine's is newer."""
    kwargs = _client_kwargs(env)
    client = docker.DockerClient(**kwargs, version="auto", timeout=_TIMEOUT)
    if _newer(client.api.api_version, TESTED_API_VERSION):
        client.close()
        client = docker.DockerClient(**kwargs, version=TESTED_API_VERSION, timeout=_TIMEOUT)
    return client


def _client_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    """How to reach the engine `env` names: DOCKER_HOST (with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH), or a
    Docker context (DOCKER_CONTEXT) as the docker CLI stores it. An ssh:// engine is reached through the
    `ssh` binary, as the docker CLI does (same ~/.ssh/config, keys and known hosts)."""
    context = env.get("DOCKER_CONTEXT")
    if context and "DOCKER_HOST" not in env:
        found = ContextAPI.get_context(context)
        if found is None:
            raise DockerException(f"no Docker context named {context!r} (docker context ls)")
        kwargs: dict[str, Any] = {"base_url": found.Host, "tls": found.TLSConfig or False}
    else:  # TLS settings apply to tcp:// engines only, as for the docker CLI (the SDK refuses them without a host)
        tls = ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
        tcp = env.get("DOCKER_HOST", "").startswith("tcp://")
        kwargs = kwargs_from_env(environment={k: v for k, v in env.items() if tcp or k not in tls})
    if str(kwargs.get("base_url", "")).startswith("ssh://"):
        kwargs["use_ssh_client"] = True
    return kwargs


def _newer(version: str, than: str) -> bool:
    return tuple(map(int, version.split("."))) > tuple(map(int, than.split(".")))


def _service_images(containers: list[dict[str, Any]]) -> dict[str, str]:
    """{service: image id} from `GET /containers/json` entries (their Labels and ImageID)."""
    images = {}
    for container in containers:
        service = (container.get("Labels") or {}).get("com.docker.compose.service")
        if service and container.get("ImageID"):
            images[str(service)] = str(container["ImageID"])
    return images


def _why(error: Exception, env: Mapping[str, str]) -> str:
    """`<host>: <the operating system's reason>` when there is one (socket missing, refused, timed out)."""
    host = engine_name(env)
    cause = _os_error(error)
    if cause is not None:
        return f"{host}: {cause.strerror or type(cause).__name__}"
    return f"{host}: {' '.join(str(error).split())[:300] or type(error).__name__}"


def engine_name(env: Mapping[str, str]) -> str:
    """The engine a docker environment names, for messages: its DOCKER_HOST, its context, or the default socket."""
    if "DOCKER_HOST" in env:
        return env["DOCKER_HOST"]
    return f"context {env['DOCKER_CONTEXT']}" if env.get("DOCKER_CONTEXT") else "unix:///var/run/docker.sock"


def _os_error(error: BaseException) -> OSError | None:
    """The OSError under the SDK's and urllib3's wrappers (their args, causes and reasons), if any."""
    seen: list[object] = [error]
    for found in seen:
        if isinstance(found, OSError) and found.strerror:
            return found
        if isinstance(found, BaseException) and len(seen) < 20:
            more = (*found.args, found.__cause__, found.__context__, getattr(found, "reason", None))
            seen += [m for m in more if isinstance(m, BaseException) and m not in seen]
    return None

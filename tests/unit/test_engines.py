"""Engines: which backend and engine each stack goes to (how many at once on one host: tests/unit/test_executor.py)."""

from __future__ import annotations

from deployer.apply.compose import ComposeBackend
from deployer.apply.engines import Engines, docker_env_for
from deployer.apply.swarm import SwarmBackend
from deployer.model import Placement
from deployer.runner import SubprocessRunner


def test_an_address_becomes_docker_host_and_a_name_docker_context() -> None:
    base = {"PATH": "/bin", "DOCKER_HOST": "unix:///var/run/docker.sock", "DOCKER_CONTEXT": "x"}
    assert docker_env_for(base, None) == base
    assert docker_env_for(base, "ssh://deploy@nas") == {"PATH": "/bin", "DOCKER_HOST": "ssh://deploy@nas"}
    assert docker_env_for(base, "nas") == {"PATH": "/bin", "DOCKER_CONTEXT": "nas"}


def test_tls_settings_reach_tcp_engines_only() -> None:
    tls = {"PATH": "/bin", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/certs"}
    assert docker_env_for(tls, "tcp://nas:2376") == {**tls, "DOCKER_HOST": "tcp://nas:2376"}
    assert docker_env_for(tls, None) == {"PATH": "/bin"}  # the local socket
    assert docker_env_for(tls, "ssh://deploy@nas") == {"PATH": "/bin", "DOCKER_HOST": "ssh://deploy@nas"}
    assert docker_env_for({**tls, "DOCKER_HOST": "tcp://main:2376"}, None) == {**tls, "DOCKER_HOST": "tcp://main:2376"}


def test_each_placement_has_its_own_backend_on_its_own_engine() -> None:
    engines = Engines(runner=SubprocessRunner(), docker_env={"PATH": "/bin"}, placed=lambda name: None)
    here = engines.backend(Placement())
    nas = engines.backend(Placement("swarm", "tcp://nas:2376"))
    assert isinstance(here, ComposeBackend) and not here.remote and "DOCKER_HOST" not in here.docker_env
    assert isinstance(nas, SwarmBackend) and nas.remote and nas.docker_env["DOCKER_HOST"] == "tcp://nas:2376"
    assert engines.backend(Placement()) is here  # made once, kept


def test_a_removal_goes_where_the_state_store_says_the_stack_runs() -> None:
    engines = Engines(runner=SubprocessRunner(), docker_env={}, placed={"web": Placement("swarm", "nas")}.get)
    assert engines.placement("web") == Placement("swarm", "nas")
    assert engines.placement("other") == Placement()

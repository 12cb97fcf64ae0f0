"""Engines: which backend and engine each stack goes to, and at most DEPLOYER_MAX_PER_HOST at once on one host."""

from __future__ import annotations

import threading
import time

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


def test_at_most_max_per_host_stacks_at_once_on_one_other_host_and_none_held_back_here() -> None:
    engines = Engines(runner=SubprocessRunner(), docker_env={}, placed=lambda name: None, max_per_host=2)
    running: dict[str | None, int] = {}
    most: dict[str | None, int] = {}
    lock = threading.Lock()

    def work(host: str | None) -> None:
        with engines._slot(Placement(docker_host=host)):
            with lock:
                running[host] = running.get(host, 0) + 1
                most[host] = max(most.get(host, 0), running[host])
            time.sleep(0.05)
            with lock:
                running[host] -= 1

    threads = [threading.Thread(target=work, args=(host,)) for host in ["ssh://a"] * 6 + ["ssh://b"] * 6 + [None] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == {"ssh://a": 2, "ssh://b": 2, None: 4}

"""Stacks spread over two engines against the same on one, and swarm convergence against bare `docker stack deploy`.

Two questions of issue 13, measured in one run through complete `deployer serve`s:
  spread:  20 one-service stacks (healthcheck passing at once), every one changed by one commit and pushed;
           from the delivery to `succeeded`. Layout "one engine": all 20 on the deployer's own engine.
           Layout "two engines": 10 there and 10 with `x-deployer.docker_host` naming a second real dockerd
           (its own socket, data root and network namespace: tests/engines.py). Each layout has its own
           repository and service; the runs alternate.
  swarm:   one swarm stack (2 replicas, start-first updates, healthcheck) on that second engine made a
           one-node swarm; each run changes an environment variable: ours is push to `succeeded` (the
           deployer's `docker stack deploy --detach=false` and its own reading of the services),
           the baseline `docker stack deploy --detach=false` of an identical stack by hand.
Run from the repository root, as root: `python -m benchmarks.hosts [--runs 5] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/hosts.py`

from benchmarks import _common as c
from benchmarks._served import finished, push, serving
from tests.engines import Engine, running_engine
from tests.helpers import TEST_IMAGE, ConfigRepo, service

STACKS = 20


def main() -> int:
    return c.docker_main(__doc__.splitlines()[0], 5, measure)


def measure(args: argparse.Namespace, prefix: str, tmp: Path) -> int:
    with running_engine() as other:
        spread = _spread(args, prefix, tmp, other)
        other.swarm_init()
        swarm = _swarm(args, prefix, tmp, other)
    report(args, info=c.run_info(), spread=spread, swarm=swarm)
    return 0


class _Layout:
    """One repository of STACKS stacks, `remote` of them on the other engine, served by its own deployer."""

    def __init__(self, tmp: Path, name: str, names: list[str], *, remote: int, host: str) -> None:
        self.repo = ConfigRepo(tmp / name)
        self.names, self.remote, self.host = names, remote, host
        self.head = self.commit("initial")
        self.state = tmp / f"{name}-state"
        self.port = c.free_port()

    def commit(self, value: str) -> str:
        for index, name in enumerate(self.names):
            placed = {"docker_host": self.host} if index < self.remote else {}
            self.repo.stack(name, {"app": service(environment={"VALUE": value})}, deployer={"wait_timeout": 60,
                                                                                            **placed})  # fmt: skip
        return self.repo.commit(value)


def _spread(args: argparse.Namespace, prefix: str, tmp: Path, other: Engine) -> dict[str, list[float]]:
    one = _Layout(tmp, "one", [f"{prefix}-a{i}" for i in range(STACKS)], remote=0, host=other.host)
    two = _Layout(tmp, "two", [f"{prefix}-b{i}" for i in range(STACKS)], remote=STACKS // 2, host=other.host)
    times: dict[str, list[float]] = {"one engine": [], "two engines": []}
    layouts = {"one engine": one, "two engines": two}
    env = {k: c.tool_env(layout.state, DEPLOYER_REPO_URL=layout.repo.url, DEPLOYER_POLL_INTERVAL="0")
           for k, layout in layouts.items()}  # fmt: skip
    with serving(env["one engine"], one.port, tmp / "one.log") as base_one, \
            serving(env["two engines"], two.port, tmp / "two.log") as base_two:  # fmt: skip
        bases = {"one engine": base_one, "two engines": base_two}
        for key, layout in layouts.items():  # the first deploy of each, unmeasured
            finished(bases[key], push(bases[key], layout.head, "0" * 39 + "1")[0])
        if args.wait_idle:
            c.wait_until_idle()
        for run in range(-1, args.runs):  # run -1: a warm-up of each
            for key in c.rotated(list(layouts), max(run, 0)):
                layout = layouts[key]
                sha = layout.commit(f"{key}-{run}")
                sent = time.time()
                deployment_id, _ = push(bases[key], sha, layout.head)
                took = finished(bases[key], deployment_id) - sent
                layout.head = sha
                if run >= 0:
                    times[key].append(took)
            if run >= 0:
                print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    assert len(_projects(["docker", "--host", other.host], prefix)) == STACKS // 2, "stacks not on the other engine"
    return times


def _swarm(args: argparse.Namespace, prefix: str, tmp: Path, other: Engine) -> dict[str, list[float]]:
    name, bare_name = f"{prefix}-sw", f"{prefix}-swbare"
    repo = ConfigRepo(tmp / "swarm")

    def spec(value: str) -> dict[str, Any]:
        return {"services": {"app": {
            "image": TEST_IMAGE, "command": ["sh", "-c", "while :; do sleep 3600; done"], "init": True,
            "environment": {"VALUE": value}, "stop_grace_period": "1s",
            "healthcheck": {"test": ["CMD", "true"], "interval": "1s", "timeout": "1s", "retries": 2},
            "deploy": {"replicas": 2, "update_config": {"order": "start-first", "parallelism": 2, "monitor": "1s"}},
        }}}  # fmt: skip

    def write(value: str) -> str:
        repo.stack(name, spec(value)["services"], deployer={"engine": "swarm", "docker_host": other.host,
                                                            "wait_timeout": 120})  # fmt: skip
        return repo.commit(value)

    bare_file = tmp / "swarm-bare.yaml"
    bare_argv = ["docker", "--host", other.host, "stack", "deploy", "--prune", "--detach=false", "--resolve-image",
                 "changed", "--compose-file", str(bare_file), bare_name]  # fmt: skip

    def bare(value: str) -> float:
        bare_file.write_text(yaml.safe_dump(spec(value)))
        return c.run_timed(bare_argv)

    state = tmp / "swarm-state"
    env = c.tool_env(state, DEPLOYER_REPO_URL=repo.url, DEPLOYER_POLL_INTERVAL="0")
    head = write("initial")
    times: dict[str, list[float]] = {"deployer": [], "bare": []}
    with serving(env, c.free_port(), tmp / "swarm.log") as base:
        finished(base, push(base, head, "0" * 39 + "1")[0])
        bare("initial")
        if args.wait_idle:
            c.wait_until_idle()

        def ours(run: int) -> float:
            nonlocal head
            sha = write(f"v{run}")
            sent = time.time()
            took = finished(base, push(base, sha, head)[0]) - sent
            head = sha
            return took

        steps: dict[str, Callable[[int], float]] = {"deployer": ours, "bare": lambda run: bare(f"v{run}")}
        for run in range(-1, args.runs):
            for key in c.rotated(list(steps), max(run, 0)):
                took = steps[key](run)
                if run >= 0:
                    times[key].append(took)
            if run >= 0:
                print(f"swarm run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    other.docker("stack", "rm", name, bare_name, check=False)
    return times


def _projects(docker: list[str], prefix: str) -> set[str]:
    argv = [*docker, "ps", "--filter", "label=com.docker.compose.project", "--format",
            '{{.Label "com.docker.compose.project"}}']  # fmt: skip
    found = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return {p for p in found if p.startswith(prefix)}


def report(args: argparse.Namespace, *, info: dict[str, str], spread: dict[str, list[float]],
           swarm: dict[str, list[float]]) -> None:  # fmt: skip
    ratio = [t / o for t, o in zip(spread["two engines"], spread["one engine"], strict=True)]
    over = [d - b for d, b in zip(swarm["deployer"], swarm["bare"], strict=True)]
    rows = [
        [f"{STACKS} stacks changed, all on one engine: push to succeeded", c.fmt(spread["one engine"])],
        [f"{STACKS} stacks changed, {STACKS // 2} on each of two engines: push to succeeded",
         c.fmt(spread["two engines"])],
        ["two engines / one engine, paired per run", c.fmt(ratio, unit="x")],
        ["swarm stack update (2 replicas): push to succeeded through the deployer", c.fmt(swarm["deployer"])],
        ["bare `docker stack deploy --detach=false` of the same update", c.fmt(swarm["bare"])],
        ["swarm: deployer - bare, paired per run", c.fmt(over)],
    ]  # fmt: skip
    body = f"""## Two engines against one, and swarm convergence (benchmarks/hosts.py)

**Spread**: {STACKS} one-service busybox stacks (healthcheck passing at once) in one repository, every one
changed by one commit, pushed to a running `deployer serve` (defaults: `DEPLOYER_MAX_PARALLEL=4`,
`DEPLOYER_MAX_PER_HOST=2`), timed from the delivery to `succeeded`. "One engine": all {STACKS} on the
deployer's own engine. "Two engines": {STACKS // 2} there and {STACKS // 2} with `x-deployer.docker_host` naming a
second real dockerd on this machine (its own socket, data root and network namespace, reached over its unix
socket, so no ssh time is in it). Each layout has its own repository and service; the order alternates.

**Swarm**: one swarm stack (2 replicas, `order: start-first`, healthcheck every second) on that second
engine made a one-node swarm; each run changes an environment variable. Ours: push to `succeeded`
(`docker stack deploy --detach=false`, then the deployer reading every service from the engine). The
baseline: `docker stack deploy --detach=false` of an identical stack by hand, in the same run, alternating.

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; N = {args.runs} runs of each, after one unmeasured warm-up; load average before: {info["load"]}

{c.table(["what", "median (spread)"], rows)}

On one machine two engines share the same 2 cores and disk: the spread measures what the deployer adds
(per-host slots in the executor, one connection per engine), not more hardware. Median ratio
{statistics.median(ratio):.2f}x. The swarm difference holds the deployer's preflight (`docker compose config`
for the host policy, `docker stack config`, the swarm-manager check) and its wait for Swarm to call the
update `completed`: Swarm keeps an update open for `update_config.monitor` (1 s here) after the last task
started, and a task failing then still rolls it back; the bare CLI returns as soon as the tasks converged.

Reproduce: `python -m benchmarks.hosts --runs {args.runs} --write-docs` (as root: it starts a dockerd)
"""
    print(body)
    if args.write_docs:
        c.write_section("hosts", body)


if __name__ == "__main__":
    raise SystemExit(main())

"""Overhead of `deployer deploy` over a bare `docker compose up --wait`, for a change to one stack of 20.

A 20-stack config repository is deployed once. Then, N times and interleaved (the order alternates
each run), one stack's environment variable changes so that its container is recreated, and we time:
  ours:     commit the change, then `deployer deploy --repo <repo>` (the console script, a new process);
  baseline: `docker compose -p <same project> -f <file> up --detach --wait --wait-timeout 60 --remove-orphans`
            of the same kind of change (another value), on the same project.
The overhead is ours minus the baseline, paired per run. Target: median overhead <= 0.5 s.
Run from the repository root: `python -m benchmarks.overhead [--runs 10] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/overhead.py`

from benchmarks import _common as c
from tests.helpers import ConfigRepo, audit_trail, service

STACKS = 20
TARGET_MEDIAN_OVERHEAD = 0.5
PHASES = ("startup", "fetch+plan", "preflight", "stack", "exit")


def write_stack(repo: ConfigRepo, name: str, value: str, depends_on: list[str]) -> Path:
    deployer: dict[str, object] = {"wait_timeout": 60}
    if depends_on:
        deployer["depends_on"] = depends_on
    return repo.stack(name, {"app": service(environment={"VALUE": value})}, deployer=deployer)


def phases(state: Path, started: float, ended: float) -> dict[str, float]:
    """Split one deploy's wall time using the audit trail's millisecond timestamps (last deployment)."""
    events = audit_trail(state)
    last = [e for e in events if e["deployment_id"] == events[-1]["deployment_id"]]
    at = {e["event"]: e for e in last}
    queued, begun = c.epoch(at["deployment.queued"]["time"]), c.epoch(at["deployment.started"]["time"])
    stack_started, stack_done = c.epoch(at["stack.started"]["time"]), c.epoch(at["stack.succeeded"]["time"])
    return {
        "startup": queued - started,
        "fetch+plan": begun - queued,
        "preflight": stack_started - begun,
        "stack": stack_done - stack_started,
        "exit": ended - stack_done,
    }


def main() -> int:
    return c.docker_main(__doc__.splitlines()[0], 10, measure)


def measure(args: argparse.Namespace, prefix: str, tmp: Path) -> int:
    repo = ConfigRepo(tmp / "config")
    names = [f"{prefix}-s{i:02d}" for i in range(STACKS)]
    # A little structure: every fifth stack depends on the first one (deps are not redeployed).
    deps = {name: ([names[0]] if i and i % 5 == 0 else []) for i, name in enumerate(names)}
    for name in names:
        write_stack(repo, name, "initial", deps[name])
    repo.commit("20 stacks")
    state = tmp / "state"
    env = c.tool_env(state)
    deploy = [c.deployer_exe(), "deploy", "--repo", repo.url]
    first = c.run_timed(deploy, env=env)
    print(f"initial deploy of {STACKS} stacks: {first:.2f} s")

    target = names[7]
    compose_file = repo.path / "stacks" / target / "compose.yaml"
    compose = ["docker", "compose", "-p", target, "-f", str(compose_file), "up", "--detach", "--wait",
               "--wait-timeout", "60", "--remove-orphans"]  # fmt: skip

    def ours(run: int) -> tuple[float, dict[str, float]]:
        write_stack(repo, target, f"deployer-{run}", deps[target])
        repo.commit(f"change {run}")
        before = c.container_id(target)
        started = time.time()
        took = c.run_timed(deploy, env=env)
        split = phases(state, started, time.time())
        assert c.container_id(target) != before, "deployer did not recreate the container"
        return took, split

    def bare(run: int) -> float:
        write_stack(repo, target, f"compose-{run}", deps[target])  # working copy only, never committed
        before = c.container_id(target)
        took = c.run_timed(compose, env=env)
        assert c.container_id(target) != before, "compose did not recreate the container"
        return took

    ours(-1), bare(-1)  # warm-up: first runs pay for caches (page cache, git packs, image layers)
    waited = c.wait_until_idle() if args.wait_idle else 0.0
    info = c.run_info()
    loads: list[float] = []
    busy: list[bool] = []

    def sample() -> None:
        busy.append(c.pytest_running())
        loads.append(os.getloadavg()[0])

    ours_t, bare_t, diffs, splits = c.paired_runs(args.runs, ours, bare, before=sample)
    report(args, info=info, waited=waited, busy=sum(busy), loads=loads, first=first, ours_t=ours_t, bare_t=bare_t,
           diffs=diffs, splits=splits)  # fmt: skip
    return 0


def report(
    args: argparse.Namespace,
    *,
    info: dict[str, str],
    waited: float,
    busy: int,
    loads: list[float],
    first: float,
    ours_t: list[float],
    bare_t: list[float],
    diffs: list[float],
    splits: list[dict[str, float]],
) -> None:
    median_overhead = statistics.median(diffs)
    met = median_overhead <= TARGET_MEDIAN_OVERHEAD
    rows = [
        ["`deployer deploy` (ours)", c.fmt(ours_t)],
        ["bare `docker compose up --wait` (baseline)", c.fmt(bare_t)],
        ["overhead, paired per run (ours - baseline)", c.fmt(diffs)],
    ]
    rows += [[f"ours, phase: {p}", c.fmt([s[p] for s in splits])] for p in PHASES]
    own = [sum(v for k, v in s.items() if k != "stack") for s in splits]
    rows += [["ours, all phases but *stack* (the deployer's own time)", c.fmt(own)]]
    verdict = "met" if met else "NOT met"
    body = f"""## Overhead of one deploy over bare `docker compose up` (benchmarks/overhead.py)

A {STACKS}-stack repository (one busybox service each, healthcheck passing at once) is deployed once
(first deploy of all {STACKS} stacks: {first:.2f} s). Then each run commits a new value of one environment
variable of one stack, so its container is recreated, and times `deployer deploy --repo <repo>` (a new
process of the console script, state directory warm). The baseline in the same run is
`docker compose -p <same project> -f <file> up --detach --wait --wait-timeout 60 --remove-orphans` for
the same kind of change (another value). Order alternates each run; one unmeasured warm-up of each first.

{c.conditions(info, runs=len(ours_t), waited=waited, busy=busy, loads=loads)}

{c.table(["what", "median (spread)"], rows)}

Phases of ours come from the audit journal (millisecond timestamps): *startup* is process start
to `deployment.queued` (interpreter, imports, state store); *fetch+plan* is the lock, `git fetch`
of the mirror, moving the planning worktree to the commit, loading the catalog, one `git diff` per
distinct last-good commit and the plan; *preflight* is `docker compose config` of the stack;
*stack* is the stack's worktree checkout plus `docker compose up --wait`; *exit* is the rest.

**Target: median overhead <= {TARGET_MEDIAN_OVERHEAD} s. Measured {median_overhead:.3f} s: {verdict}.**

Reproduce: `python -m benchmarks.overhead --runs {len(ours_t)} --wait-idle --write-docs`
"""
    c.publish("overhead", body, write_docs=args.write_docs)


if __name__ == "__main__":
    raise SystemExit(main())

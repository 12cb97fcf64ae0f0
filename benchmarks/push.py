"""Push to healthy through the complete `deployer serve`, over a bare `docker compose up --wait`, for one stack.

A 5-stack config repository is deployed once by the running service. Then, N times and interleaved (the order
alternates each run), one stack's environment variable changes so that its container is recreated, and we time:
  ours:     from the signed webhook delivery (the commit already made) to `GET /api/deployments/<id>` saying
            `succeeded` (compose's `--wait` has seen the container healthy), polled every 5 ms;
  baseline: `docker compose -p <same project> -f <file> up --detach --wait --wait-timeout 60 --remove-orphans`
            of the same kind of change (another value), on the same project.
The overhead is ours minus the baseline, paired per run. Target (issue 12): median overhead <= 0.25 s.
Run from the repository root: `python -m benchmarks.push [--runs 10] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/push.py`

from benchmarks import _common as c
from benchmarks._served import SECRET, finished, push, serving
from tests.helpers import ConfigRepo, audit_trail, service

STACKS = 5
TARGET_MEDIAN_OVERHEAD = 0.25
PHASES = ("answered", "queued -> started", "started -> stack up", "stack up -> healthy", "healthy -> seen")


def write_stack(repo: ConfigRepo, name: str, value: str) -> Path:
    return repo.stack(name, {"app": service(environment={"VALUE": value})}, deployer={"wait_timeout": 60})


def phases(state: Path, deployment_id: str, sent: float, answered: float, seen: float) -> dict[str, float]:
    at = {e["event"]: c.epoch(e["time"]) for e in audit_trail(state) if e["deployment_id"] == deployment_id}
    return {
        "answered": answered - sent,
        "queued -> started": at["deployment.started"] - at["deployment.queued"],
        "started -> stack up": at["stack.started"] - at["deployment.started"],
        "stack up -> healthy": at["stack.succeeded"] - at["stack.started"],
        "healthy -> seen": seen - at["deployment.finished"],
    }


def main() -> int:
    return c.docker_main(__doc__.splitlines()[0], 10, measure)


def measure(args: argparse.Namespace, prefix: str, tmp: Path) -> int:
    repo = ConfigRepo(tmp / "config")
    names = [f"{prefix}-s{i}" for i in range(STACKS)]
    for name in names:
        write_stack(repo, name, "initial")
    head = repo.commit("5 stacks")
    state = tmp / "state"
    port = c.free_port()
    base = f"http://127.0.0.1:{port}"
    env = c.tool_env(state, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET, DEPLOYER_POLL_INTERVAL="0")
    with serving(env, port, tmp / "serve.log"):
        deployment_id, _ = push(base, head, "0" * 39 + "1")
        finished(base, deployment_id)
        target = names[2]
        compose_file = repo.path / "stacks" / target / "compose.yaml"
        compose = ["docker", "compose", "-p", target, "-f", str(compose_file), "up", "--detach", "--wait",
                   "--wait-timeout", "60", "--remove-orphans"]  # fmt: skip
        last = [head]

        def ours(run: int) -> tuple[float, dict[str, float]]:
            write_stack(repo, target, f"deployer-{run}")
            sha = repo.commit(f"change {run}")
            before = c.container_id(target)
            sent = time.time()
            deployment_id, answered = push(base, sha, last[0])
            seen = finished(base, deployment_id)
            last[0] = sha
            assert c.container_id(target) != before, "deployer did not recreate the container"
            return seen - sent, phases(state, deployment_id, sent, answered, seen)

        def bare(run: int) -> float:
            write_stack(repo, target, f"compose-{run}")  # working copy only, never committed
            before = c.container_id(target)
            took = c.run_timed(compose, env=env)
            assert c.container_id(target) != before, "compose did not recreate the container"
            return took

        ours(-1), bare(-1)  # warm-up
        waited = c.wait_until_idle() if args.wait_idle else 0.0
        info = c.run_info()
        ours_t, bare_t, diffs, splits = c.paired_runs(args.runs, ours, bare)
    report(args, info=info, waited=waited, ours_t=ours_t, bare_t=bare_t, diffs=diffs, splits=splits)
    return 0


def report(args: argparse.Namespace, *, info: dict[str, str], waited: float, ours_t: list[float],
           bare_t: list[float], diffs: list[float], splits: list[dict[str, float]]) -> None:  # fmt: skip
    median_overhead = statistics.median(diffs)
    rows = [
        ["push to healthy through `deployer serve` (ours)", c.fmt(ours_t)],
        ["bare `docker compose up --wait` (baseline)", c.fmt(bare_t)],
        ["overhead, paired per run (ours - baseline)", c.fmt(diffs)],
    ]
    rows += [[f"ours, phase: {p}", c.fmt([s[p] for s in splits])] for p in PHASES]
    verdict = "met" if median_overhead <= TARGET_MEDIAN_OVERHEAD else "NOT met"
    body = f"""## Push to healthy through `deployer serve` over bare `docker compose up` (benchmarks/push.py)

A {STACKS}-stack repository (one busybox service each, healthcheck passing at once) is deployed once by a
running `deployer serve` (2 web workers, the deploy worker; `DEPLOYER_POLL_INTERVAL=0`). Then each run
commits a new value of one environment variable of one stack, so its container is recreated, and times
from sending the signed Gitea delivery to `GET /api/deployments/<id>` saying `succeeded` (polled every
5 ms). The baseline in the same run is `docker compose -p <same project> -f <file> up --detach --wait
--wait-timeout 60 --remove-orphans` for the same kind of change. Order alternates each run; one unmeasured
warm-up of each first.

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; N = {len(ours_t)} runs of each; load average before: {info["load"]}; waited {waited:.0f} s for
  the machine to be idle

{c.table(["what", "median (spread)"], rows)}

Phases from the audit trail (millisecond timestamps): *answered* is the webhook's round trip; *queued ->
started* is the doorbell waking the deploy worker, the claim, the fetch and planning; *started -> stack up*
preflight (`docker compose config` for the host policy, the engine's ping beside it); *stack up -> healthy*
the stack's worktree checkout, `docker compose up --wait` itself and reading its image ids from the engine;
*healthy -> seen* recording the end and this script's next poll.

**Target: median overhead <= {TARGET_MEDIAN_OVERHEAD} s. Measured {median_overhead:.3f} s: {verdict}.**

Reproduce: `python -m benchmarks.push --runs {len(ours_t)} --wait-idle --write-docs`
"""
    print(body)
    if args.write_docs:
        c.write_section("push", body)


if __name__ == "__main__":
    raise SystemExit(main())

"""Bring-up from nothing of six stacks shaped like the seed infrastructure: ours vs sequential vs critical path.

Stacks (x-deployer depends_on): zot; traefik <- zot; auth <- traefik; minio <- traefik;
monitoring <- auth, minio; mediaserver <- traefik, auth. Each has several busybox services whose
healthchecks pass after 1-6 s (some wait for another service of their stack to be healthy first).
Each run starts from nothing (every container and network removed) and measures, interleaved:
  ours:       `deployer deploy --repo <repo>` with a fresh state directory (clone, plan, preflight, up);
  sequential: `docker compose up --detach --wait` stack by stack in the seed order, each step timed;
  critical:   the longest dependency chain, summing each stack's own bring-up time from the sequential run
              (there, each stack comes up alone).
Target: ours / critical path <= 1.1 (median of the per-run ratios).
Run from the repository root: `python -m benchmarks.bringup [--runs 5] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/bringup.py`

from benchmarks import _common as c
from tests.helpers import ConfigRepo, audit_trail, service

TARGET_RATIO = 1.1
#: stack -> (stacks it depends on, {service: (seconds until healthy, services it waits for)}); seed order
STACKS: dict[str, tuple[list[str], dict[str, tuple[float, list[str]]]]] = {
    "zot": ([], {"registry": (2, []), "sync": (1, [])}),
    "traefik": (["zot"], {"proxy": (3, []), "socket-proxy": (1, [])}),
    "auth": (["traefik"], {"postgres": (2, []), "redis": (1, []), "server": (3, ["postgres", "redis"]),
                           "worker": (2, ["postgres", "redis"])}),
    "minio": (["traefik"], {"minio": (4, []), "console": (1, [])}),
    "monitoring": (["auth", "minio"], {"prometheus": (2, []), "loki": (3, []), "grafana": (2, ["prometheus", "loki"]),
                                       "alloy": (1, [])}),
    "mediaserver": (["traefik", "auth"], {"jellyfin": (6, []), "sonarr": (2, []), "radarr": (2, []),
                                          "prowlarr": (1, [])}),
}  # fmt: skip


def write_repo(repo: ConfigRepo, prefix: str) -> None:
    for name, (deps, services) in STACKS.items():
        specs: dict[str, Any] = {}
        for svc, (after, waits) in services.items():
            extra: dict[str, Any] = {}
            if waits:
                extra["depends_on"] = {w: {"condition": "service_healthy"} for w in waits}
            specs[svc] = service(healthy_after=after, **extra)
        block = {"depends_on": [f"{prefix}-{d}" for d in deps], "wait_timeout": 120}
        repo.stack(f"{prefix}-{name}", specs, deployer=block)
    repo.commit("six stacks")


def critical_path(times: dict[str, float]) -> tuple[float, list[str]]:
    """The longest chain of dependent stacks, summing their own bring-up times (STACKS is in topological order)."""
    best: dict[str, tuple[float, list[str]]] = {}
    for name, (deps, _) in STACKS.items():
        before = max((best[d] for d in deps), default=(0.0, []), key=lambda item: item[0])
        best[name] = (before[0] + times[name], [*before[1], name])
    return max(best.values(), key=lambda item: item[0])


def main() -> int:
    return c.docker_main(__doc__.splitlines()[0], 5, measure)


def measure(args: argparse.Namespace, prefix: str, tmp: Path) -> int:
    repo = ConfigRepo(tmp / "config")
    write_repo(repo, prefix)
    compose_env = c.tool_env(tmp / "unused")

    def ours(run: int) -> tuple[float, float, dict[str, float]]:
        """Wall time of the deploy, when its first `compose up` started, and each stack's own duration."""
        state = tmp / f"state-{run}"
        env = c.tool_env(state)
        started = time.time()
        took = c.run_timed([c.deployer_exe(), "deploy", "--repo", repo.url], env=env)
        events = audit_trail(state)
        assert sum(e["event"] == "stack.succeeded" for e in events) == len(STACKS), events
        first_up = min(e["time"] for e in events if e["event"] == "stack.started")
        inside = {e["stack"].removeprefix(f"{prefix}-"): e["duration_ms"] / 1000 for e in events
                  if e["event"] == "stack.succeeded"}  # fmt: skip
        return took, c.epoch(first_up) - started, inside

    def sequential() -> dict[str, float]:
        times = {}
        for name in STACKS:
            project = f"{prefix}-{name}"
            compose = repo.path / "stacks" / project / "compose.yaml"
            argv = ["docker", "compose", "-p", project, "-f", str(compose), "up", "--detach", "--wait",
                    "--wait-timeout", "120", "--remove-orphans"]  # fmt: skip
            times[name] = c.run_timed(argv, env=compose_env)
        return times

    c.remove_docker_objects(prefix)
    ours(-1)  # warm-up, unmeasured: page cache, image layers, compose plugin
    c.remove_docker_objects(prefix)
    waited = c.wait_until_idle() if args.wait_idle else 0.0
    info = c.run_info()
    ours_t, first_t, seq_t, crit_t, per_stack, paths, in_chain, loads, busy = [], [], [], [], [], [], [], [], 0
    for run in range(args.runs):
        busy += c.pytest_running()
        loads.append(os.getloadavg()[0])
        for variant in ("ours", "sequential") if run % 2 == 0 else ("sequential", "ours"):
            c.remove_docker_objects(prefix)
            if variant == "ours":
                took, first, inside = ours(run)
                ours_t.append(took)
                first_t.append(first)
            else:
                times = sequential()
                per_stack.append(times)
                seq_t.append(sum(times.values()))
                length, path = critical_path(times)
                crit_t.append(length)
                paths.append(" -> ".join(path))
        in_chain.append(sum(inside[name] for name in paths[-1].split(" -> ")))
        print(f"run {run + 1}: ours {ours_t[-1]:.2f} s (first up after {first_t[-1]:.2f} s), "
              f"sequential {seq_t[-1]:.2f} s, critical path {crit_t[-1]:.2f} s ({paths[-1]})", flush=True)  # fmt: skip
    c.remove_docker_objects(prefix)
    report(args, info, waited=waited, busy=busy, loads=loads, ours_t=ours_t, first_t=first_t, seq_t=seq_t,
           crit_t=crit_t, per_stack=per_stack, paths=paths, in_chain=in_chain)  # fmt: skip
    return 0


def report(args: argparse.Namespace, info: dict[str, str], *, waited: float, busy: int, loads: list[float],
           ours_t: list[float], first_t: list[float], seq_t: list[float], crit_t: list[float],
           per_stack: list[dict[str, float]], paths: list[str], in_chain: list[float]) -> None:  # fmt: skip
    vs_crit = [o / k for o, k in zip(ours_t, crit_t, strict=True)]
    vs_seq = [o / s for o, s in zip(ours_t, seq_t, strict=True)]
    rows = [
        ["`deployer deploy` of all six (ours)", c.fmt(ours_t)],
        ["ours: process start to the first `compose up`", c.fmt(first_t)],
        ["sequential `docker compose up --wait` in seed order (baseline)", c.fmt(seq_t)],
        ["critical path (sum of own times along the longest chain)", c.fmt(crit_t)],
        ["ours: the same chain's stack durations inside the deploy (journal)", c.fmt(in_chain)],
        ["ours: the rest (total - those durations)", c.fmt([o - i for o, i in zip(ours_t, in_chain, strict=True)])],
        ["ratio ours / critical path (per run)", c.fmt(vs_crit, "x")],
        ["ratio ours / sequential (per run)", c.fmt(vs_seq, "x")],
    ]
    rows += [[f"own bring-up: {name}", c.fmt([t[name] for t in per_stack])] for name in STACKS]
    shape = "; ".join(
        f"{name} ({', '.join(deps) or 'no deps'}): " + ", ".join(f"{s} {a:g}s" for s, (a, _) in services.items())
        for name, (deps, services) in STACKS.items()
    )
    ratio = statistics.median(vs_crit)
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    common_path = max(set(paths), key=paths.count)
    body = f"""## Bring-up of six seed-shaped stacks from nothing (benchmarks/bringup.py)

Stacks (dependencies in parentheses) and when each busybox service's healthcheck passes: {shape}.
In auth, server and worker start once postgres and redis are healthy; in monitoring, grafana waits
for prometheus and loki (compose `depends_on: condition: service_healthy`). Every run starts from
nothing (all containers and networks of the run's prefix removed) and measures, in alternating order,
ours (`deployer deploy --repo <repo>`, fresh state directory: clone, plan, preflight, bring-up with the
default `DEPLOYER_MAX_PARALLEL=4`) and the sequential baseline (`docker compose up --detach --wait
--wait-timeout 120 --remove-orphans`, one stack after another in the seed order, each step timed).
The critical path sums, per run, the stacks' own times from the sequential run along the longest
dependency chain (usually {common_path}). One unmeasured warm-up deploy first.

{c.conditions(info, runs=len(ours_t), waited=waited, busy=busy, loads=loads)}

{c.table(["what", "median (spread)"], rows)}

A stack's duration inside the deploy runs from its start to its success in the audit journal (its
worktree checkout and `compose up --wait`); "the rest" is process start, clone, plan, preflight
(`docker compose config` of each stack, one after another) and the hand-over between dependent stacks.

**Target: ours <= {TARGET_RATIO}x the critical path. Measured {ratio:.3f}x (median of per-run ratios): {verdict}.**
Ours vs strictly sequential: {statistics.median(vs_seq):.3f}x.

Reproduce: `python -m benchmarks.bringup --runs {len(ours_t)} --wait-idle --write-docs`
"""
    c.publish("bringup", body, write_docs=args.write_docs)


if __name__ == "__main__":
    raise SystemExit(main())

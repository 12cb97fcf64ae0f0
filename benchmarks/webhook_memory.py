"""Memory of the idle service: RSS and PSS of every process of `deployer serve`.

Read from /proc/PID/smaps_rollup after start and after one deployment plus ~10 s idle. Target: <= 150 MiB RSS
summed. Run from the repository root: `python -m benchmarks.webhook_memory [--runs N] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/webhook_memory.py`

from benchmarks import _common as c
from benchmarks import _procs as procs
from benchmarks._procs import Quiet, cmdline, http, process_tree, wait_for
from benchmarks._servers import deploy_head, deploying_runs, serving

TARGET_RSS_MIB = 150.0
IDLE_SECONDS = 10.0


def smaps(pid: int) -> dict[str, int]:
    """Rss, Pss and USS (private clean + dirty) of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return {"rss": values["Rss"], "pss": values["Pss"], "uss": values["Private_Clean"] + values["Private_Dirty"]}


def serve_memory(root: int) -> dict[str, dict[str, int]]:
    """Each process of `deployer serve` by role, taken when no short-lived helper (the heartbeat's `docker
    version`, git) runs beside them."""
    for _ in range(50):
        found = _serve_memory(root)
        if not any(role.startswith("other") for role in found):
            return found
        time.sleep(0.2)
    return found


def _serve_memory(root: int) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    master_cmd = cmdline(root)
    workers = 0
    for pid in sorted(process_tree(root)):
        cmd = cmdline(pid)
        if pid == root:
            role = "gunicorn master (`deployer serve`)"
        elif "-m" in cmd and "worker" in cmd and "deployer" in cmd:
            role = "deploy worker (`python -m deployer worker`)"
        elif cmd == master_cmd:
            workers += 1
            role = f"web worker {workers}"
        else:
            role = f"other: {' '.join(cmd)[:60]}"
        try:
            found[role] = smaps(pid)
        except OSError:
            continue
    return found


def one_memory(prefix: str, tmp: Path, run: int) -> dict[str, dict[str, dict[str, int]]]:
    where = Path(tempfile.mkdtemp(prefix=f"memory-{run}-", dir=tmp))
    names = [f"{prefix}-m{run}-{letter}" for letter in "ab"]
    try:
        with serving(where, names, dict.fromkeys(names, 0), "two stacks") as served:
            wait_for(lambda: "deploy worker not running" not in json.dumps(http("GET", f"{served.base}/readyz")[1]),
                     timeout=60, what="the deploy worker's heartbeat")  # fmt: skip
            time.sleep(3)
            started = serve_memory(served.proc.pid)
            deploy_head(served.base, served.forge, served.repo)
            time.sleep(IDLE_SECONDS)
            idle = serve_memory(served.proc.pid)
        return {"after start": started, "after a deployment + idle": idle}
    finally:
        c.remove_docker_objects(f"{prefix}-m{run}-")


def measure_memory(args: argparse.Namespace, prefix: str, tmp: Path, quiet: Quiet) -> dict[str, Any]:
    def show(run: int, moments: Mapping[str, Mapping[str, Mapping[str, int]]]) -> None:
        for moment, found in moments.items():
            print(f"memory run {run + 1}, {moment}: RSS {sum(p['rss'] for p in found.values()) / 1024:.1f} MiB, "
                  f"PSS {sum(p['pss'] for p in found.values()) / 1024:.1f} MiB over {len(found)} processes",
                  flush=True)  # fmt: skip

    return deploying_runs(args, quiet, lambda run: one_memory(prefix, tmp, run), show)


def report_memory(args: argparse.Namespace, data: Mapping[str, Any], quiet: Quiet) -> str:
    runs, info = data["runs"], data["info"]
    moments = list(runs[0])
    rows = []
    for moment in moments:
        for kind in ("rss", "pss"):
            total = [sum(p[kind] for p in r[moment].values()) / 1024 for r in runs]
            rows.append([f"{moment}: {kind.upper()} summed", c.fmt(total, "MiB", digits=1)])
    per_role = []
    for role in runs[-1][moments[-1]]:
        cells = [role]
        for moment in moments:
            got = [r[moment][role] for r in runs if role in r[moment]]
            for kind in ("rss", "pss", "uss"):
                cells.append(f"{statistics.median(g[kind] for g in got) / 1024:.1f}" if got else "-")
        per_role.append(cells)
    header = ["process", *(f"{m}: {k}" for m in ("start", "idle") for k in ("RSS", "PSS", "USS"))]
    worst = max(sum(p["rss"] for p in r[m].values()) / 1024 for r in runs for m in moments)
    return f"""## Memory of the idle service (benchmarks/webhook_memory.py)

`deployer serve` (gunicorn master, 2 web workers, the deploy worker) with a config repository of two
busybox stacks, `DEPLOYER_FORGE=github` to a forge stand-in. Measured from `/proc/PID/smaps_rollup` of
every process of the service: 3 s after the deploy worker's first heartbeat ("after start"), and again after
one push has been deployed (both stacks up, statuses sent) and the service has been idle for {IDLE_SECONDS:g} s.
RSS counts pages shared between processes (the interpreter, libraries) once per process; PSS divides each
shared page among the processes sharing it, so the PSS sum is what the service really takes. USS is what a
process alone holds. Each run starts a fresh service.

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; N = {len(runs)} runs; load average before: {info["load"]}; {quiet.line()}.

{c.table(["what", "median (spread) over runs"], rows)}

Per process (MiB, median over runs):

{c.table(header, per_role)}

**Target: <= {TARGET_RSS_MIB:g} MiB RSS summed. Measured at most {worst:.1f} MiB: {c.met(worst <= TARGET_RSS_MIB)}.**

Reproduce: `python -m benchmarks.webhook_memory --runs {len(runs)} --wait-idle --write-docs`
"""


def main() -> int:
    args = c.parser(__doc__.splitlines()[0], runs=3).parse_args()
    return procs.run(args, raw="memory", section="webhook_memory", measure=measure_memory, report=report_memory)


if __name__ == "__main__":
    raise SystemExit(main())

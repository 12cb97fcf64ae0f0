"""A 100,000-event audit backlog shipped to Loki by `deployer serve` (issue 11 item 9).

100,000 unshipped audit events in state.db (benchmarks/_statedb.py), `deployer serve` with a Loki stand-in
(tests/loki.py): the time until Loki has them all, events/s, the peak RSS of the deploy worker and of the
service. Baseline: the same lines pushed by a minimal `requests` loop (benchmarks/_record_child.py push).
Targets: <= 60 s, memory bounded.
Run from the repository root: `python -m benchmarks.record_backlog [--runs N] [--write-docs] [--wait-idle]`;
`--quick` makes short development runs.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/record_backlog.py`

from benchmarks import _common as c
from benchmarks import _procs as procs
from benchmarks._procs import Proc, Quiet, request
from benchmarks._servers import SECRET
from benchmarks._statedb import backlog_store
from benchmarks._trees import Tree, run_child
from tests.helpers import ConfigRepo
from tests.loki import LokiServer

BACKLOG = 100_000
SMALL_BACKLOG = 10_000
BATCH = 500
TARGET_BACKLOG_S = 60.0
#: memory is bounded when the deploy worker's peak at BACKLOG is within this of its peak at SMALL_BACKLOG
BOUND_MIB = 10.0
TARGET_SERVICE_MIB = 150.0  # the idle service's target (benchmarks/webhook_memory.py)
SAMPLE_EVERY = 0.1
SEED = 11


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(rest.split()[0])
    return found


class Sampler:
    """RSS of every process of `deployer serve` every SAMPLE_EVERY seconds, by role, in a thread."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak: dict[str, int] = {}
        self.hwm: dict[str, int] = {}
        self.sum_peak = 0
        self.helper_peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_EVERY)

    def sample(self) -> None:
        total = 0
        master = procs.cmdline(self.root)
        for pid in procs.process_tree(self.root):
            cmd = procs.cmdline(pid)
            if pid == self.root:
                role = "gunicorn master"
            elif cmd[-3:] == ["-m", "deployer", "worker"]:
                role = "deploy worker"
            elif cmd == master:
                role = f"web worker {pid}"
            else:
                role = "helper"
            try:
                kib = status_kib(pid)
            except (OSError, KeyError):
                continue
            if role == "helper":
                self.helper_peak = max(self.helper_peak, kib.get("VmRSS", 0))
                continue
            total += kib.get("VmRSS", 0)
            self.peak[role] = max(self.peak.get(role, 0), kib.get("VmRSS", 0))
            self.hwm[role] = max(self.hwm.get(role, 0), kib.get("VmHWM", 0))
        self.sum_peak = max(self.sum_peak, total)
        self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def one_backlog(tmp: Path, template: Path, run: str, *, events: int) -> dict[str, Any]:
    """A fresh copy of the backlog's state.db, `deployer serve` started; until Loki has every event."""
    where = Path(tempfile.mkdtemp(prefix=f"backlog-{run}-", dir=tmp))
    state = where / "state"
    state.mkdir()
    shutil.copy(template, state / "state.db")
    repo = ConfigRepo(where / "config")
    repo.write("README.md", "no stacks\n")
    repo.commit("empty")
    loki = LokiServer()
    port = c.free_port()
    env = c.tool_env(state, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET, DEPLOYER_LOKI_URL=loki.url,
                     DEPLOYER_POLL_INTERVAL="0", DEPLOYER_PUBLIC_URL=f"http://127.0.0.1:{port}")  # fmt: skip
    try:
        started = time.monotonic()
        proc = Proc([c.deployer_exe(), "serve", "--bind", f"127.0.0.1:{port}"], env=env, log=where / "serve.log")
        sampler = Sampler(proc.pid)
        first = answered = None
        with procs.running(proc):
            try:
                while len(loki.received) < events and time.monotonic() - started < 180:
                    if first is None and loki.received:
                        first = time.monotonic()
                    if answered is None and _healthy(port):
                        answered = time.monotonic()
                    if not proc.alive():
                        raise RuntimeError(f"deployer serve exited:\n{proc.log_path.read_text()[-2000:]}")
                    time.sleep(0.05)
                done = time.monotonic()
                sampler.sample()
            finally:
                sampler.stop()
        with closing(sqlite3.connect(state / "state.db")) as db:
            left = db.execute("SELECT COUNT(*) FROM audit_events WHERE shipped_at IS NULL").fetchone()[0]
        return {"seconds": done - started, "got": len(loki.received), "first_s": (first or done) - started,
                "answered_s": (answered or done) - started, "duplicates": loki.duplicates(),
                "errors": list(loki.errors), "requests": loki.requests, "unshipped_left": left,
                "peak_kib": sampler.peak, "hwm_kib": sampler.hwm,
                "sum_peak_kib": sampler.sum_peak, "helper_peak_kib": sampler.helper_peak, "samples": sampler.samples,
                "events": events}  # fmt: skip
    finally:
        loki.close()
        shutil.rmtree(where, ignore_errors=True)


def _healthy(port: int) -> bool:
    try:
        return request(port, "/healthz")[1] == 200
    except OSError:
        return False


def one_push_baseline(tmp: Path, template: Path, found: list[Tree]) -> dict[str, Any]:
    loki = LokiServer()
    try:
        answer = run_child(found[0], ["push", "--db", str(template), "--url", loki.url, "--batch", str(BATCH)], cwd=tmp)
        return answer | {"got": len(loki.received), "errors": list(loki.errors)}
    finally:
        loki.close()


def measure_backlog(args: argparse.Namespace, prefix: str, tmp: Path, quiet: Quiet) -> dict[str, Any]:
    rng = random.Random(SEED)
    events = args.events
    template = tmp / "backlog.db"
    built = backlog_store(template, events, rng)
    small = tmp / "small.db"
    backlog_store(small, min(SMALL_BACKLOG, events), random.Random(SEED + 1))
    print(f"backlog: {events:,} events, lines {built['min_bytes']}-{built['max_bytes']} bytes, "
          f"state.db {built['db_mib']:.0f} MiB, built in {built['built_s']:.1f} s", flush=True)  # fmt: skip
    info = c.run_info() | {"containers": procs.running_containers()}
    pusher = [Tree("pusher", "", c.ROOT)]
    runs, baseline = [], []
    for run in range(args.runs):
        for kind in c.rotated(["ours", "baseline"], run):
            quiet.before_run()
            if kind == "ours":
                runs.append(one_backlog(tmp, template, str(run), events=events))
                r = runs[-1]
                print(f"backlog run {run + 1}: {r['got']:,} in {r['seconds']:.1f} s, deploy worker peak "
                      f"{r['hwm_kib'].get('deploy worker', 0) / 1024:.1f} MiB", flush=True)  # fmt: skip
            else:
                baseline.append(one_push_baseline(tmp, template, pusher))
                print(f"baseline run {run + 1}: {baseline[-1]['got']:,} in {baseline[-1]['seconds']:.1f} s", flush=True)
            quiet.after_run()
    quiet.before_run()
    smaller = one_backlog(tmp, small, "small", events=min(SMALL_BACKLOG, events))
    return {"info": info, "built": built, "runs": runs, "baseline": baseline, "small": smaller}


def report_backlog(args: argparse.Namespace, data: Mapping[str, Any], quiet: Quiet) -> str:
    runs, base, info, built, small = data["runs"], data["baseline"], data["info"], data["built"], data["small"]
    events = built["events"]
    mib = 1024.0

    def role(r: Mapping[str, Any], name: str, kind: str = "hwm_kib") -> float:
        return float(r[kind].get(name, 0)) / mib

    def web(r: Mapping[str, Any]) -> float:
        return max((v for k, v in r["hwm_kib"].items() if k.startswith("web worker")), default=0) / mib

    ship = [r["seconds"] - r["first_s"] for r in runs]
    rows = [
        ["start -> Loki has all events", c.fmt([r["seconds"] for r in runs], "s")],
        ["start -> `/healthz` answers", c.fmt([r["answered_s"] for r in runs], "s")],
        ["start -> the first event at Loki", c.fmt([r["first_s"] for r in runs], "s")],
        ["first event -> last event at Loki", c.fmt(ship, "s")],
        ["events per second (first -> last)", c.fmt([events / s for s in ship], "/s", digits=0)],
        ["events per second (from start)", c.fmt([events / r["seconds"] for r in runs], "/s", digits=0)],
        ["deploy worker: peak RSS (VmHWM)", c.fmt([role(r, "deploy worker") for r in runs], "MiB", digits=1)],
        ["gunicorn master: peak RSS (VmHWM)", c.fmt([role(r, "gunicorn master") for r in runs], "MiB", digits=1)],
        ["web workers: peak RSS (VmHWM, the larger)", c.fmt([web(r) for r in runs], "MiB", digits=1)],
        ["service: peak of the summed RSS (samples every 100 ms)", c.fmt([r["sum_peak_kib"] / mib for r in runs],
                                                                          "MiB", digits=1)],
        ["baseline: the same lines pushed by a `requests` loop", c.fmt([b["seconds"] for b in base], "s")],
        ["baseline: events per second", c.fmt([b["lines"] / b["seconds"] for b in base], "/s", digits=0)],
    ]  # fmt: skip
    worst = max(r["seconds"] for r in runs)
    complete = all(r["got"] == events and not r["errors"] and r["unshipped_left"] == 0 for r in runs)
    complete_base = all(b["got"] == events and not b["errors"] for b in base)
    peak = max(role(r, "deploy worker") for r in runs)
    small_peak = role(small, "deploy worker")
    service_peak = max(r["sum_peak_kib"] for r in runs) / mib
    small_service = small["sum_peak_kib"] / mib
    bounded = peak - small_peak <= BOUND_MIB
    helper = max(r["helper_peak_kib"] for r in runs) / mib
    helper_text = f"at most {helper:.0f} MiB" if helper else "none seen"
    ratio = statistics.median(ship) / statistics.median(b["seconds"] for b in base)
    return f"""## A 100,000-event audit backlog shipped to Loki (benchmarks/record_backlog.py)

A long Loki outage, over: a state.db made with `deployer.state.StateStore` (its schema) holds {events:,} audit events
never shipped, inserted with sqlite3 in one transaction: lines shaped as deployer.state writes them (queued,
started, stack results, finished, refused, secrets decrypted; their fields filled in), {built["min_bytes"]}-{built["max_bytes"]}
bytes (median {built["median_bytes"]:.0f}; {built["line_mib"]:.0f} MiB of lines, state.db {built["db_mib"]:.0f} MiB),
distinct, `ts_ns` spread over the last hour. Each run copies it into a fresh state directory and starts the
complete `deployer serve` (gunicorn master, 2 web workers, the deploy worker; `DEPLOYER_POLL_INTERVAL=0`, a config
repository with no stacks) with `DEPLOYER_LOKI_URL` at the Loki stand-in (tests/loki.py: it checks the push shape
and keeps entries as Loki does, deduplicated), in this process, polled every 50 ms. The deploy worker's shipper
sends batches of {BATCH} (deployer.report.loki). Memory: `/proc/PID/status` of every process of the service every
{SAMPLE_EVERY * 1000:.0f} ms: VmHWM is the kernel's peak RSS of a process; the summed RSS is of the four deployer
processes (short-lived helpers such as the heartbeat's `docker version` not counted: {helper_text}).
Baseline, interleaved: the same lines read from the same state.db and pushed to a fresh stand-in by a minimal
`requests` loop in batches of {BATCH} (benchmarks/_record_child.py push, its own process, timed from the first
push to the last answer): what the network and the stand-in cost alone. N = {len(runs)} runs of each, then one
run with {small["events"]:,} events to see whether memory grows with the backlog.

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; load average before: {info["load"]}; {procs.containers_line(info)}; {quiet.line()}.

{c.table(["what", "median (spread) over runs"], rows)}

Every run: Loki had all {events:,} distinct entries, none refused, state.db left nothing unshipped:
{c.yes(complete)} (duplicates pushed: {", ".join(str(r["duplicates"]) for r in runs)}; push requests:
{", ".join(str(r["requests"]) for r in runs)}); baseline complete: {c.yes(complete_base)}. With {small["events"]:,}
events the deploy worker peaked at {small_peak:.1f} MiB and the service's summed RSS at {small_service:.1f} MiB
({small["seconds"]:.1f} s to ship them all).

**Target: the backlog ships within {TARGET_BACKLOG_S:g} s of the start. Slowest run {worst:.1f} s:
{"met" if worst <= TARGET_BACKLOG_S and complete else "NOT met"}.** **Target: memory bounded, read as the deploy worker's
peak within {BOUND_MIB:g} MiB of its peak with a backlog {events // small["events"]} times smaller: {peak:.1f} MiB at
{events:,} vs {small_peak:.1f} MiB at {small["events"]:,}: {"met" if bounded else "NOT met"}.** The whole service
peaked at {service_peak:.1f} MiB summed RSS ({small_service:.1f} MiB with the small backlog), against the idle
service's {TARGET_SERVICE_MIB:g} MiB target (benchmarks/webhook_memory.py): {_within(service_peak, TARGET_SERVICE_MIB)}.
Shipping took {ratio:.1f}x the baseline's time for
the same lines: the rest is reading each batch from SQLite, marking it shipped in a write transaction, and the
stand-in sharing this process with the poller and the sampler.

Reproduce: `python -m benchmarks.record_backlog --runs {len(runs)} --write-docs`
"""  # noqa: E501 -- the target line stays whole


def _within(value: float, limit: float) -> str:
    return "within it" if value <= limit else f"{value - limit:.1f} MiB over it"


def main() -> int:
    p = c.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("--quick", action="store_true", help="short development runs")
    p.add_argument("--events", type=int, default=BACKLOG, help="audit events waiting")
    args = p.parse_args()
    if args.quick:
        args.runs, args.events = 1, min(args.events, 20_000)
    return procs.run(args, raw="record-backlog", section="record_backlog", measure=measure_backlog,
                     report=report_backlog)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())

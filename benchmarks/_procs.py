"""Processes a benchmark starts and watches: servers in their own session, process trees and their CPU time,
loopback HTTP, other tests and benchmarks running beside it (`Quiet`), and the main of a benchmark
that measures, saves its raw results, then reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from benchmarks import _common as c

CLK_TCK = os.sysconf("SC_CLK_TCK")


def http(method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout: float = 30) -> tuple[int, Any]:  # fmt: skip
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 -- loopback http only
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    kids, found, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
    return pids


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process, plus those of its reaped children (webhook's /bin/true)."""
    try:
        fields = [int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
    except OSError:
        return 0.0, 0.0
    return (fields[0] + fields[2]) / CLK_TCK, (fields[1] + fields[3]) / CLK_TCK


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


class Proc:
    """A server process this benchmark started (own session), stopped with SIGTERM, then its group killed."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str], log: Path, cwd: Path = c.ROOT) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.popen = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree_cpu(self) -> tuple[float, float]:
        times = [cpu_seconds(pid) for pid in process_tree(self.pid)]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=60)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever of its group is left (its own session)
        self.popen.wait()
        self._log.close()


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def request(port: int, path: str, headers: Mapping[str, str] | None = None) -> tuple[float, int, str, int]:
    """One GET on a new loopback connection: (seconds from connect to the last byte, status, type, bytes)."""
    started = time.perf_counter()
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    took = time.perf_counter() - started
    return took, response.status, response.getheader("Content-Type") or "", len(body)


def running_containers() -> str:
    """How many containers the engine runs: each healthcheck is a process started on this machine's cores."""
    out = subprocess.run(["docker", "ps", "--quiet"], capture_output=True, text=True, check=False)
    return str(len(out.stdout.split())) if out.returncode == 0 else "?"


def others_busy() -> list[str]:
    """Other test or benchmark processes on the machine (not this one, its ancestors or its children)."""
    out = subprocess.run(["pgrep", "-af", r"pytest|benchmarks[./]"], capture_output=True, text=True, check=False)
    mine = ancestors() | set(process_tree(os.getpid()))
    return [line for line in out.stdout.splitlines() if line and int(line.split()[0]) not in mine]


class Quiet:
    """Before each measured run, wait until no pytest and no other benchmark runs (poll 20 s, <= 15 min a run)."""

    def __init__(self, enabled: bool, budget: float = 900, poll: float = 20) -> None:
        self.enabled, self.budget, self.poll = enabled, budget, poll
        self.waited = 0.0
        self.busy_runs = 0
        self.busy_after = 0
        self.runs = 0

    def before_run(self) -> None:
        self.runs += 1
        waited = 0.0
        while self.enabled and waited < self.budget:
            busy = others_busy()
            if not busy:
                return
            print(f"waiting {self.poll:.0f} s: {len(busy)} other test/benchmark processes, e.g. {busy[0][:100]}",
                  flush=True)  # fmt: skip
            time.sleep(self.poll)
            waited += self.poll
            self.waited += self.poll
        self.busy_runs += bool(others_busy())

    def after_run(self) -> None:
        self.busy_after += bool(others_busy())

    def line(self) -> str:
        return (f"waited {self.waited:.0f} s for other tests and benchmarks to end; one was running at the start "
                f"of {self.busy_runs} and at the end of {self.busy_after} of {self.runs} measured runs")  # fmt: skip


def containers_line(info: Mapping[str, str]) -> str:
    """Containers on the engine while measuring: none are this benchmark's, but their healthchecks use the CPU."""
    n = info.get("containers", "?")
    return f"containers running on the engine: {n}" + (" (others', with healthchecks)" if n not in ("0", "?") else "")


Measure = Callable[[argparse.Namespace, str, Path, Quiet], dict[str, Any]]
Report = Callable[[argparse.Namespace, Mapping[str, Any], Quiet], str]


def run(args: argparse.Namespace, *, raw: str, section: str, measure: Measure, report: Report) -> int:
    """Measure under a fresh prefix and temp dir (the prefix's docker objects removed afterwards, also on
    SIGTERM), save the raw results as `<prefix>-<raw>.json` beside the temp dir, then print the report and,
    with --write-docs, replace its section of docs/benchmarks.md."""
    prefix = c.new_prefix()
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    quiet = Quiet(args.wait_idle)
    try:
        with c.docker_cleanup(prefix):
            data = measure(args, prefix, tmp, quiet)
        saved = tmp.parent / f"{prefix}-{raw}.json"
        saved.write_text(json.dumps(data, default=str, indent=1))
        print(f"raw results: {saved}")
        c.publish(section, report(args, data, quiet), write_docs=args.write_docs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0

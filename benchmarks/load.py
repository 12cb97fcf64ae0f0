"""Acknowledgement under load through the complete `deployer serve`: while a deployment runs vs while idle.

tests/e2e/test_load.py's scenario as a measurement. A config repository with one busybox stack whose
`docker compose up --wait` takes a few seconds (its healthcheck passes HEALTHY_AFTER s after the start) is
deployed by a running `deployer serve` (2 web workers, the deploy worker, commit statuses to a Gitea
stand-in, tests/servers.py). Each run has two windows, their order alternating: in each, 50 concurrent
senders (this script's `send` command, its own asyncio process) post 1,000 signed push deliveries, a new
connection each, mixed as the test mixes them: GitHub, Gitea, Forgejo and GitLab signatures and headers in
turn; 40% pushes of the branch head, 20% of older commits of the branch (stale), 20% redeliveries of
earlier accepted ones (same delivery id: duplicates), 20% pushes of another branch.
  busy: a new commit is pushed first, and the 1,000 are sent once its stack is `running` (compose is
        recreating the container and waiting for it to be healthy); the window counts only if the audit
        trail shows the stack started before the first delivery and healthy after the last answer;
  idle: no deployment runs and none is queued when the first delivery is sent (the deliveries themselves
        queue deployments, which the worker plans: no stack changes, so no compose).
After each window the queue is let drain and every accepted delivery's deployment is checked final.
Run from the repository root: `python -m benchmarks.load [--runs 10] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks import _common as c
except ImportError:  # run as `python benchmarks/load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _common as c

from benchmarks._loadgen import REQUEST_TIMEOUT, percentile
from benchmarks._procs import wait_for
from tests.deliveries import FORGES, push_payload, sign
from tests.helpers import ConfigRepo, audit_trail, git, service
from tests.servers import ForgeServer

SECRET = "bench-load-secret"  # noqa: S105 -- a throwaway HMAC key for a loopback service
DELIVERIES = 1000
CONCURRENCY = 50
HEALTHY_AFTER = 4  # seconds: the busy window's `up --wait` lasts about this long
KINDS = ("head", "head", "head", "head", "stale", "stale", "duplicate", "duplicate", "other", "other")
FINISHED = ("succeeded", "failed", "superseded")
WINDOWS = ("idle", "busy")


# --- the sender process ----------------------------------------------------------------------------


def build(main: Sequence[str], other: Sequence[str], *, host: str, port: int) -> list[tuple[str, str, bytes]]:
    """The window's deliveries as raw HTTP requests: (kind, forge, bytes), in the order they are sent.

    A duplicate repeats, byte for byte, the delivery of a head or stale push a few places back (at least
    2 x CONCURRENCY earlier, so it has normally been answered)."""
    requests: list[tuple[str, str, bytes]] = []
    for n in range(DELIVERIES):
        kind, forge = KINDS[n % len(KINDS)], FORGES[(n // len(KINDS) + n) % len(FORGES)]
        if kind == "duplicate" and n >= 2 * CONCURRENCY:
            earlier = [r for r in requests[: n - 2 * CONCURRENCY] if r[0] in ("head", "stale")]
            requests.append(("duplicate", *earlier[(n * 7) % len(earlier)][1:]))
            continue
        kind = "head" if kind == "duplicate" else kind
        commits = other if kind == "other" else main
        sha = commits[(n // len(KINDS)) % (len(commits) - 1)] if kind == "stale" else commits[-1]
        delivery = sign(forge, push_payload(forge, after=sha, branch="feature" if kind == "other" else "main"),
                        SECRET)  # fmt: skip
        head = ["POST /webhook HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(delivery.body)}",
                *(f"{k}: {v}" for k, v in delivery.headers.items()), "Connection: close"]  # fmt: skip
        requests.append((kind, forge, ("\r\n".join(head) + "\r\n\r\n").encode() + delivery.body))
    return requests


async def _exchange(host: str, port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        code = int(lines[0].split(" ", 2)[1])
        length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")),
                      None)  # fmt: skip
        body = await (reader.readexactly(length) if length is not None else reader.read())
        return code, body
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _send_all(host: str, port: int, requests: list[tuple[str, str, bytes]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in requests]
    pending = iter(range(len(requests)))

    async def sender() -> None:
        for n in pending:
            kind, forge, request = requests[n]
            started = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    code, body = await _exchange(host, port, request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as error:
                results[n] = {"kind": kind, "forge": forge, "error": f"{type(error).__name__}: {error}"}
                continue
            took = time.perf_counter() - started
            answer = json.loads(body or b"null") if body.startswith(b"{") else None
            deployment = answer.get("deployment_id") if isinstance(answer, dict) else None
            results[n] = {"kind": kind, "forge": forge, "code": code, "seconds": took, "deployment_id": deployment}

    await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    return results


def send_main(argv: list[str]) -> int:
    """`python -m benchmarks.load send --port P --plan F --out F`: build the window's deliveries, say `ready`,
    wait for a line on stdin, send them, write what each was answered (and the window's epoch times)."""
    p = argparse.ArgumentParser(prog="benchmarks.load send")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--plan", type=Path, required=True, help="JSON: {'main': [shas, head last], 'other': [...]}")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    requests = build(plan["main"], plan["other"], host="127.0.0.1", port=args.port)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    results = asyncio.run(_send_all("127.0.0.1", args.port, requests))
    args.out.write_text(json.dumps({"started": started, "ended": time.time(), "results": results}))
    return 0


# --- the measuring process -------------------------------------------------------------------------


def get(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}{path}", timeout=30) as answer:  # noqa: S310 -- loopback
        return json.load(answer)


def push(base: str, sha: str) -> str:
    delivery = sign("gitea", push_payload("gitea", after=sha), SECRET)
    request = urllib.request.Request(f"{base}/webhook", data=delivery.body, headers=delivery.headers,  # noqa: S310
                                     method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 -- loopback
        return str(json.load(answer)["deployment_id"])


def in_hand(state: Path) -> int:
    """Deployments queued or running (read-only from the state store, as tests.helpers.audit_trail reads it)."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT count(*) FROM deployments WHERE state IN ('queued', 'running')").fetchone()
    return int(count)


def outbox_waiting(state: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT count(*) FROM status_outbox WHERE done_at IS NULL").fetchone()
    return int(count)


def tree_rss(pid: int) -> int:
    """Resident memory, in bytes, of a process and all its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return total


class Window:
    """One window's measurements."""

    def __init__(self, kind: str, raw: dict[str, Any], *, drained: float, lost: int, inside: bool | None,
                 load: float, pytest: bool) -> None:  # fmt: skip
        self.kind, self.drained, self.lost, self.inside = kind, drained, lost, inside
        self.load, self.pytest = load, pytest
        results: list[dict[str, Any]] = raw["results"]
        self.errors = [r["error"] for r in results if "error" in r]
        answered = [r for r in results if "code" in r]
        self.codes = Counter(r["code"] for r in answered)
        lat = sorted(r["seconds"] for r in answered)
        accepted = sorted(r["seconds"] for r in answered if r["code"] == 202)
        self.p50, self.p99, self.max = percentile(lat, 50), percentile(lat, 99), lat[-1]
        self.p50_202, self.p99_202 = percentile(accepted, 50), percentile(accepted, 99)
        self.elapsed = raw["ended"] - raw["started"]
        self.rate = len(answered) / self.elapsed
        self.accepted = len(accepted)

    def line(self) -> str:
        return (f"p50 {self.p50 * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, max {self.max * 1000:.1f} ms,"
                f" {self.rate:.0f}/s, codes {dict(self.codes)}, errors {len(self.errors)}, lost {self.lost}, drained"
                f" in {self.drained:.2f} s, inside {self.inside}, load {self.load:.2f}")  # fmt: skip


class Bench:
    def __init__(self, tmp: Path, prefix: str) -> None:
        self.tmp = tmp
        self.repo = ConfigRepo(tmp / "config")
        self.name = f"{prefix}-app"
        self.main: list[str] = []
        self.other: list[str] = []
        self.commits = 0
        self.state = tmp / "state"
        self.port = c.free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def commit(self) -> str:
        """A new VERSION on the branch (its container is recreated), and a commit on another branch."""
        self.commits += 1
        self.repo.stack(self.name, {"app": service(healthy_after=HEALTHY_AFTER,
                                                   environment={"VERSION": str(self.commits)})},
                        deployer={"wait_timeout": 60})  # fmt: skip
        sha = self.repo.commit(f"v{self.commits}")
        tree = git(self.repo.path, "rev-parse", "HEAD^{tree}")
        other = git(self.repo.path, "commit-tree", tree, "-p", self.other[-1] if self.other else sha, "-m", "f")
        git(self.repo.path, "update-ref", "refs/heads/feature", other)
        self.main.append(sha)
        self.other.append(other)
        return sha

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = get(self.base, f"/api/deployments/{deployment_id}")
        return found

    def window(self, kind: str, run: int) -> Window:
        plan = self.tmp / f"plan-{run}-{kind}.json"
        out = self.tmp / f"out-{run}-{kind}.json"
        wait_for(lambda: in_hand(self.state) == 0, timeout=300, what="an idle queue", every=0.1)
        load, pytest = os.getloadavg()[0], c.pytest_running()
        busy_id = None
        if kind == "busy":
            self.commit()  # the deliveries' head is the commit deploying
        plan.write_text(json.dumps({"main": self.main[-6:], "other": self.other[-6:]}))
        sender = subprocess.Popen([sys.executable, "-m", "benchmarks.load", "send", "--port", str(self.port),
                                   "--plan", str(plan), "--out", str(out)], cwd=c.ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert sender.stdin is not None and sender.stdout is not None
        assert sender.stdout.readline().strip() == "ready"
        if kind == "busy":
            busy_id = push(self.base, self.main[-1])
            wait_for(lambda: [s["state"] for s in self.deployment(busy_id)["stacks"]] == ["running"], timeout=60,
                 what="the stack to be running")  # fmt: skip
        sender.stdin.write("go\n")
        sender.stdin.flush()
        if sender.wait(timeout=300) != 0:
            raise RuntimeError("the sender failed")
        raw = json.loads(out.read_text())
        wait_for(lambda: in_hand(self.state) == 0, timeout=600, what="the queue to drain", every=0.05)
        empty = time.time()
        ids = {r["deployment_id"] for r in raw["results"] if r.get("code") == 202}
        lost = sum(self.deployment(i)["state"] not in ("succeeded", "superseded") for i in ids)
        inside, since = None, raw["ended"]
        if busy_id is not None:
            done = self.deployment(busy_id)
            assert done["state"] == "succeeded", done
            at = {e["event"]: c.epoch(e["time"]) for e in audit_trail(self.state) if e.get("deployment_id") == busy_id
                  and e["event"] in ("stack.started", "stack.succeeded", "deployment.finished")}  # fmt: skip
            inside = at["stack.started"] <= raw["started"] and raw["ended"] <= at["stack.succeeded"]
            since = max(since, at["deployment.finished"])  # the queue waits for the running deployment
        return Window(kind, raw, drained=empty - since, lost=lost, inside=inside, load=load, pytest=pytest)


def main() -> int:
    if sys.argv[1:2] == ["send"]:
        return send_main(sys.argv[2:])
    return c.docker_main(__doc__.splitlines()[0], 10, measure)


def measure(args: argparse.Namespace, prefix: str, tmp: Path) -> int:
    bench = Bench(tmp, prefix)
    forge = ForgeServer("gitea")
    for _ in range(6):  # older commits of the branch for the stale pushes
        bench.commit()
    env = c.tool_env(bench.state, DEPLOYER_REPO_URL=bench.repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                     DEPLOYER_POLL_INTERVAL="0", DEPLOYER_FORGE="gitea", DEPLOYER_FORGE_API_URL=forge.api_url,
                     DEPLOYER_FORGE_TOKEN=forge.token, DEPLOYER_PUBLIC_URL=bench.base)  # fmt: skip
    try:
        with _serving(env, bench.port, tmp / "serve.log") as pid:
            first = push(bench.base, bench.main[-1])
            wait_for(lambda: bench.deployment(first)["state"] in FINISHED, timeout=120, what="the first deploy")
            bench.window("idle", -1)  # warm-up, unmeasured
            bench.window("busy", -1)
            waited = c.wait_until_idle() if args.wait_idle else 0.0
            info = c.run_info()
            rss_before = tree_rss(pid)
            windows: dict[str, list[Window]] = {k: [] for k in WINDOWS}
            for run in range(args.runs):
                for kind in WINDOWS if run % 2 == 0 else WINDOWS[::-1]:
                    w = bench.window(kind, run)
                    windows[kind].append(w)
                    print(f"run {run + 1} {kind}: {w.line()}", flush=True)
            rss_after = tree_rss(pid)
            backlog = outbox_waiting(bench.state)
    finally:
        forge.close()
    report(args, info=info, waited=waited, windows=windows, rss=(rss_before, rss_after), backlog=backlog,
           forge_errors=len(forge.errors))  # fmt: skip
    return 0


def report(args: argparse.Namespace, *, info: dict[str, str], waited: float, windows: dict[str, list[Window]],
           rss: tuple[int, int], backlog: int, forge_errors: int) -> None:  # fmt: skip
    idle, busy = windows["idle"], windows["busy"]
    rows = []
    measures = (
        ("p50 acknowledgement", "p50"),
        ("p99 acknowledgement", "p99"),
        ("max acknowledgement", "max"),
        ("p50 acknowledgement of the 202s", "p50_202"),
        ("p99 acknowledgement of the 202s", "p99_202"),
    )
    for label, attr in measures:
        for kind, group in (("idle", idle), ("busy", busy)):
            rows.append([f"{kind}: {label}", _ms([getattr(w, attr) for w in group])])
    for kind, group in (("idle", idle), ("busy", busy)):
        rows.append([f"{kind}: deliveries answered per second", c.fmt([w.rate for w in group], "/s", digits=0)])
    rows.append(["busy - idle p50, paired per run", _ms([b.p50 - i.p50 for b, i in zip(busy, idle, strict=True)])])
    rows.append(["busy - idle p99, paired per run", _ms([b.p99 - i.p99 for b, i in zip(busy, idle, strict=True)])])
    for kind, group in (("idle", idle), ("busy", busy)):
        rows.append([f"{kind}: queue drained", c.fmt([w.drained for w in group])])
    for kind, group in (("idle", idle), ("busy", busy)):
        codes: Counter[int] = sum((w.codes for w in group), Counter())
        failed, server_errors = sum(len(w.errors) for w in group), sum(n for k, n in codes.items() if k >= 500)
        rows.append(
            [
                f"{kind}: answers (all runs) / failed connections / 5xx / lost",
                f"{dict(sorted(codes.items()))} / {failed} / {server_errors} / {sum(w.lost for w in group)}",
            ]
        )
    inside = sum(bool(w.inside) for w in busy)
    p50_ratio = statistics.median(b.p50 / i.p50 for b, i in zip(busy, idle, strict=True))
    p99_ratio = statistics.median(b.p99 / i.p99 for b, i in zip(busy, idle, strict=True))
    everyone = [*idle, *busy]
    worst = max(w.max for w in everyone)
    loads = [w.load for w in everyone]
    sent = 2 * len(idle) * DELIVERIES
    diffs = c.stats([b.p50 - i.p50 for b, i in zip(busy, idle, strict=True)])
    noise = (
        "; the paired p50 differences straddle zero (p10 to p90): the deployment's effect is within this run's noise"
        if diffs["p10"] < 0 < diffs["p90"]
        else ""
    )
    conditions = (
        f"- Waited {waited:.0f} s for no pytest and a 1-minute load average < 1.5 (the latter at most 2 min). At the"
        f" start\n  of the windows: pytest running in {sum(w.pytest for w in everyone)} of {len(everyone)}; 1-minute"
        f" load average median {statistics.median(loads):.2f}, max {max(loads):.2f}\n  (others share this machine;"
        " the service's own load counts too)."
    )
    body = f"""## Acknowledgement under load while a deployment runs vs idle (benchmarks/load.py)

tests/e2e/test_load.py's scenario measured: a running `deployer serve` (2 web workers, the deploy worker,
`DEPLOYER_POLL_INTERVAL=0`, commit statuses to a Gitea stand-in, tests/servers.py) deploys a config
repository with one busybox stack whose healthcheck passes {HEALTHY_AFTER} s after the start. Each run has two
windows, their order alternating; in each, {CONCURRENCY} concurrent senders (`python -m benchmarks.load send`,
its own asyncio process) post {DELIVERIES:,} signed push deliveries, a new connection each, mixed: GitHub, Gitea,
Forgejo and GitLab signatures and headers in turn; 40% pushes of the branch head, 20% of older commits of the
branch (stale), 20% redeliveries of accepted ones (same delivery id), 20% pushes of another branch. Latency
is connect to the answer's last byte. *busy*: a new commit is pushed first and the deliveries start once its
stack is `running` (compose recreating the container, then `up --wait` waiting for its health); a window
counts only if the audit trail has the stack started before the first delivery and healthy after the last
answer. *idle*: no deployment is queued or running when the first delivery goes (the deliveries queue
deployments of commits already deployed, which the worker plans and finds nothing to do: no compose).
After each window the queue drains and every accepted delivery's deployment is checked: `succeeded` or
`superseded`, else it counts as lost. One unmeasured run of each first.

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; N = {len(idle)} runs of each; load average before: {info["load"]}
{conditions}
- Busy windows wholly inside the stack's compose run: {inside} of {len(busy)}. RSS of the service's process tree
  (gunicorn master, web workers, deploy worker) {rss[0] / 2**20:.0f} MiB before the measured runs,
  {rss[1] / 2**20:.0f} MiB after {sent:,} more deliveries.

{c.table(["what", "median (spread) over runs"], rows)}

*Queue drained*: from the last answer (busy: from the end of the deployment that was running, which the queue
waits for) until no deployment is queued or running.

**Reading.** While a deployment runs, the median acknowledgement is {p50_ratio:.2f}x and the p99 {p99_ratio:.2f}x
the idle figure (medians of the per-run ratios){noise}. The absolute figures are the machine's as it
was loaded then: compare the two windows of a run, not these with other sections. The slowest of the
{sent:,} answers took {worst * 1000:.0f} ms; a forge gives up after 10 s. Deployments are coalesced: one
deployment of the newest commit supersedes every one queued before it, so the queue drains within a second.
The commit-status outbox held {backlog} unsent statuses at the end: the reporter sends at most one per commit
and context, then waits a second, and each superseded deployment adds a pending and a final status of its own;
forge stand-in errors: {forge_errors}.

Reproduce: `python -m benchmarks.load --runs {len(idle)} --wait-idle --write-docs`
"""
    print(body)
    if args.write_docs:
        c.write_section("load", body)


def _ms(seconds: Sequence[float]) -> str:
    return c.fmt(seconds, "ms", 1000.0, 1)


@contextlib.contextmanager
def _serving(env: dict[str, str], port: int, log_path: Path) -> Iterator[int]:
    """The complete `deployer serve` on loopback `port`, answering, until the block ends; yields its pid."""
    with log_path.open("w") as log:
        served = subprocess.Popen([c.deployer_exe(), "serve", "--bind", f"127.0.0.1:{port}"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for(lambda: _alive(f"http://127.0.0.1:{port}"), timeout=30, what="the service to listen", every=0.1)
            yield served.pid
        finally:
            served.terminate()
            served.wait(timeout=60)


def _alive(base: str) -> bool:
    try:
        get(base, "/healthz")
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())

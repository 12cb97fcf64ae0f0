"""The webhook service: acknowledgement latency and throughput vs adnanh/webhook, a burst of pushes, idle memory.

Subcommands (default `all`: the three in turn, each writing its own section of docs/benchmarks.md):
  ack     50 concurrent senders (benchmarks/_loadgen.py, its own process) of signed GitHub push deliveries
          on loopback, N runs of each, interleaved: ours = gunicorn with deploy/gunicorn.conf.py (what
          `deployer serve` runs: 2 sync web workers), WITHOUT the deploy worker; baseline = adnanh/webhook
          (Debian package `webhook`) whose hook checks the same HMAC-SHA256 and runs /bin/true without waiting.
          Targets: p99 acknowledgement <= 50 ms; ours >= 0.5 x the baseline's accepted deliveries per second.
          Diagnostics: one run of the complete `deployer serve`, what-ifs (gthread workers among them),
          per-request costs, a py-spy profile.
  burst   50 pushes in 5 s against the complete `deployer serve` deploying a real config repository
          (three busybox stacks), statuses to a forge stand-in (tests/servers.py). Targets: <= 3 deployments,
          the last commit deployed, a final `deployer` status on all 50 commits.
  memory  RSS and PSS (/proc/PID/smaps_rollup) of every process of `deployer serve`, after start and after one
          deployment plus ~10 s idle. Target: <= 150 MiB RSS summed.
Run from the repository root: `python -m benchmarks.webhook [ack|burst|memory|all] [--runs N] [--write-docs]
[--wait-idle]`; `--duration 3` makes short development runs.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

try:
    from benchmarks import _common as c
except ImportError:  # run as `python benchmarks/webhook.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _common as c

from tests.deliveries import push_payload, sign
from tests.helpers import TEST_IMAGE, ConfigRepo, git, service
from tests.servers import ForgeServer

SECRET = "bench-webhook-secret"  # noqa: S105 -- a throwaway HMAC key for loopback servers
GUNICORN_CONF = c.ROOT / "deploy" / "gunicorn.conf.py"
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.5
TARGET_DEPLOYMENTS = 3
TARGET_RSS_MIB = 150.0
BURST_PUSHES = 50
BURST_SECONDS = 5.0
IDLE_SECONDS = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINISHED = ("succeeded", "failed", "superseded")
PROFILE_HZ = 100
#: the web workers before they became gunicorn's sync workers: gthread, this many threads each
GTHREAD_THREADS = 16
GTHREAD_LABEL = f"ours, `gthread` workers x {GTHREAD_THREADS} threads (the earlier setting)"
LINGER_LABEL = "ours, gunicorn's own `sync` worker (waits for each sender to close)"
SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


# --------------------------------------------------------------------------------------------- plumbing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# ------------------------------------------------------------------------------------------------ servers


def ours_env(state: Path, port: int, **extra: str) -> dict[str, str]:
    return c.tool_env(
        state, DEPLOYER_BIND=f"127.0.0.1:{port}", DEPLOYER_REPO_URL=extra.pop("repo", str(state.parent / "none")),
        DEPLOYER_WEBHOOK_SECRET=SECRET, DEPLOYER_FORGE="github",
        DEPLOYER_FORGE_API_URL=extra.pop("api", "http://127.0.0.1:9"), DEPLOYER_POLL_INTERVAL="0", **extra,
    )  # fmt: skip


def answering(proc: Proc, base: str, what: str) -> None:
    """Wait until a just-started server answers /healthz; stop it if it never does."""
    try:
        wait_for(lambda: proc.alive() and http("GET", f"{base}/healthz", timeout=2)[0] == 200, timeout=60,
                 what=f"{what} to answer /healthz")  # fmt: skip
    except BaseException:
        proc.stop()
        print(proc.log_path.read_text()[-2000:], file=sys.stderr)
        raise


def start_gunicorn(tmp: Path, *, state: Path | None = None, workers: int | None = None,
                   options: Sequence[str] = ()) -> tuple[Proc, str]:  # fmt: skip
    """Ours, web side only: gunicorn with deploy/gunicorn.conf.py, as `deployer serve` runs it, no deploy worker.

    `options` are gunicorn command-line options, which override the configuration file's."""
    port = free_port()
    state = state or tmp / "state"
    env = ours_env(state, port, **({"WEB_CONCURRENCY": str(workers)} if workers else {}))
    argv = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), *options]
    proc = Proc(argv, env=env, log=tmp / "gunicorn.log")
    base = f"http://127.0.0.1:{port}"
    answering(proc, base, "gunicorn")
    return proc, f"{base}/webhook"


def start_serve(tmp: Path, *, repo_url: str, forge: ForgeServer) -> tuple[Proc, str]:
    """Ours complete: `deployer serve` (gunicorn master, 2 web workers, the deploy worker)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = ours_env(tmp / "state", port, repo=repo_url, api=forge.api_url, DEPLOYER_FORGE_TOKEN=forge.token,
                   DEPLOYER_PUBLIC_URL=base)  # fmt: skip
    proc = Proc([c.deployer_exe(), "serve", "--bind", f"127.0.0.1:{port}"], env=env, log=tmp / "serve.log")
    answering(proc, base, "deployer serve")
    return proc, base


def start_webhook(tmp: Path) -> tuple[Proc, str]:
    """adnanh/webhook: a hook that checks X-Hub-Signature-256 (HMAC-SHA256, same secret) and runs /bin/true."""
    exe = shutil.which("webhook")
    if exe is None:
        raise SystemExit("adnanh/webhook is not installed: apt-get install -y webhook")
    hook = {
        "id": "deploy", "execute-command": "/bin/true", "command-working-directory": str(tmp),
        "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": SECRET,
                                   "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},
    }  # fmt: skip
    hooks = tmp / "hooks.json"
    hooks.write_text(json.dumps([hook]))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = Proc([exe, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)], env=env,
                log=tmp / "webhook.log")  # fmt: skip

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc.alive()

    try:
        wait_for(listening, timeout=30, what="webhook to listen")
    except BaseException:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{port}/hooks/deploy"


def generate(url: str, expect: int, *, concurrency: int, duration: float, warmup: float, out: Path,
             server: Proc, keepalive: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run the load generator (its own process) against a server; add the server's CPU time per request."""
    argv = [sys.executable, "-m", "benchmarks._loadgen", "--url", url, "--secret", SECRET, "--expect", str(expect),
            "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup),
            "--tag", os.urandom(4).hex(), "--out", str(out), *(["--keepalive"] if keepalive else [])]  # fmt: skip
    cpu_before = server.tree_cpu()
    result = subprocess.run(argv, cwd=c.ROOT, capture_output=True, text=True, check=False,
                            timeout=duration + warmup + 180)  # fmt: skip
    cpu_after = server.tree_cpu()
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    summary: dict[str, Any] = json.loads(out.read_text())
    sent = max(1, summary["deliveries_built"])
    summary["server_user_ms_per_request"] = (cpu_after[0] - cpu_before[0]) * 1000 / sent
    summary["server_sys_ms_per_request"] = (cpu_after[1] - cpu_before[1]) * 1000 / sent
    summary["server_cpu_ms_per_request"] = summary["server_user_ms_per_request"] + summary["server_sys_ms_per_request"]
    summary["generator_cpu_share"] = summary["generator_cpu_s"] / summary["elapsed_s"]
    return summary


# --------------------------------------------------------------------------------------------------- (a) ack


def ack_variants() -> dict[str, Callable[[Path], tuple[Proc, str, int]]]:
    def ours(where: Path) -> tuple[Proc, str, int]:
        proc, url = start_gunicorn(where)
        return proc, url, 202

    def baseline(where: Path) -> tuple[Proc, str, int]:
        proc, url = start_webhook(where)
        return proc, url, 200

    return {"ours": ours, "webhook": baseline}


def one_load(tmp: Path, name: str, start: Callable[[Path], tuple[Proc, str, int]], args: argparse.Namespace, *,
             concurrency: int | None = None, keepalive: bool = False) -> dict[str, Any]:  # fmt: skip
    where = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    proc, url, expect = start(where)
    with running(proc):
        return generate(url, expect, concurrency=concurrency or args.concurrency, duration=args.duration,
                        warmup=args.warmup, out=where / "load.json", server=proc, keepalive=keepalive)  # fmt: skip


def show(name: str, s: Mapping[str, Any]) -> None:
    print(f"  {name}: {s['accepted_per_s']:.0f}/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
          f"max {s['max_ms']:.1f} ms, errors {s['errors']}, server CPU {s['server_cpu_ms_per_request']:.2f} ms/req, "
          f"generator {s['generator_cpu_share'] * 100:.0f}% of a core", flush=True)  # fmt: skip


def measure_ack(args: argparse.Namespace, prefix: str, tmp: Path, quiet: Quiet) -> dict[str, Any]:
    variants = ack_variants()
    for name, start in variants.items():  # unmeasured warm-up of each: page cache, imports
        one_load(tmp, f"warm-{name}", start, args)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    info = c.run_info() | {"containers": running_containers()}
    if info["containers"] not in ("0", "?"):
        print(f"warning: {info['containers']} containers run on the engine; their healthchecks load the CPU",
              flush=True)  # fmt: skip
    for run in range(args.runs):
        order = list(variants) if run % 2 == 0 else list(reversed(variants))
        print(f"ack run {run + 1}/{args.runs}", flush=True)
        for name in order:
            quiet.before_run()
            results[name].append(one_load(tmp, f"{name}-{run}", variants[name], args))
            quiet.after_run()
            show(name, results[name][-1])
    diagnostics = ack_diagnostics(args, prefix, tmp, variants, quiet)
    return {"info": info, "facts": code_facts(tmp), "results": results, "diagnostics": diagnostics}


Starter = Callable[[Path], tuple[Proc, str, int]]


def ack_diagnostics(args: argparse.Namespace, prefix: str, tmp: Path, variants: Mapping[str, Starter],
                    quiet: Quiet) -> dict[str, Any]:  # fmt: skip
    """Single runs that explain the numbers: unloaded latency, what-ifs, the complete service, a profile."""
    diag: dict[str, Any] = {}

    def diagnose(label: str, start: Callable[[Path], tuple[Proc, str, int]], **options: Any) -> None:
        quiet.before_run()
        diag[label] = one_load(tmp, label.replace(" ", "-").replace(",", ""), start, args, **options)
        quiet.after_run()
        show(label, diag[label])

    for name in variants:
        diagnose(f"{name}, 1 sender", variants[name], concurrency=1)

    def on_tmpfs(where: Path) -> tuple[Proc, str, int]:
        state = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/dev/shm")) / "state"
        proc, url = start_gunicorn(where, state=state)
        return proc, url, 202

    def one_worker(where: Path) -> tuple[Proc, str, int]:
        proc, url = start_gunicorn(where, workers=1)
        return proc, url, 202

    def lingering(where: Path) -> tuple[Proc, str, int]:
        proc, url = start_gunicorn(where, options=["--worker-class", "sync"])
        return proc, url, 202

    def threaded(where: Path) -> tuple[Proc, str, int]:
        proc, url = start_gunicorn(where, options=["--worker-class", "gthread", "--threads", str(GTHREAD_THREADS)])
        return proc, url, 202

    try:
        diagnose("ours, state dir on tmpfs", on_tmpfs)
    finally:
        for leftover in Path("/dev/shm").glob(f"{prefix}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    diagnose("ours, 1 web worker", one_worker)
    diagnose(LINGER_LABEL, lingering)
    diagnose(GTHREAD_LABEL, threaded)
    for name in variants:
        diagnose(f"{name}, keep-alive connections", variants[name], keepalive=True)
    if not args.no_serve:
        quiet.before_run()
        diag["serve"] = complete_serve_run(args, tmp)
        show("ours, complete deployer serve", diag["serve"])
    quiet.before_run()
    diag["costs"] = inprocess_costs(tmp)
    diag["contention"] = contention_costs(tmp)
    if not args.no_profile and shutil.which("py-spy"):
        for kind, gil in (("profile", True), ("waits", False)):
            quiet.before_run()
            diag[kind] = profile_run(args, tmp, gil=gil)
    return diag


def complete_serve_run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The same load against the complete `deployer serve`; the pushed shas do not exist in its repository."""
    where = Path(tempfile.mkdtemp(prefix="serve-", dir=tmp))
    repo = ConfigRepo(where / "config")
    repo.write("README.md", "no stacks\n")
    repo.commit("empty")
    forge = ForgeServer("github")
    try:
        proc, base = start_serve(where, repo_url=repo.url, forge=forge)
        with running(proc):
            summary = generate(f"{base}/webhook", 202, concurrency=args.concurrency, duration=args.duration,
                               warmup=args.warmup, out=where / "load.json", server=proc)  # fmt: skip
        with closing(sqlite3.connect(where / "state" / "state.db")) as db:
            states = dict(db.execute("SELECT state, count(*) FROM deployments GROUP BY state").fetchall())
        summary["deployment_states"] = states
        summary["statuses_posted"] = len(forge.posted)
        summary["forge_errors"] = len(forge.errors)
    finally:
        forge.close()
    return summary


def inprocess_costs(tmp: Path, calls: int = 1000) -> dict[str, dict[str, list[float]]]:
    """Per-request costs inside one process, no HTTP server: the whole app, and its stages, on disk and tmpfs."""
    import logging

    root = logging.getLogger()
    costs: dict[str, dict[str, list[float]]] = {}
    shm = Path(tempfile.mkdtemp(prefix="bench-costs-", dir="/dev/shm"))
    try:
        for index, (label, base) in enumerate((("disk", tmp), ("tmpfs", shm))):
            state = Path(tempfile.mkdtemp(prefix="costs-", dir=base)) / "state"
            handler = logging.FileHandler(state.parent / "app.log")  # as gunicorn's log file: one line a delivery
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            try:
                costs[label] = _stage_costs(state, index, calls)
            finally:
                root.removeHandler(handler)
                handler.close()
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    return costs


def _stage_costs(state: Path, index: int, calls: int) -> dict[str, list[float]]:
    from deployer.intake import submit
    from deployer.model import Intake, Trigger
    from deployer.receive import Ignored, detect_forge, parse_delivery, verify_signature
    from deployer.receive.events import signed_bytes
    from deployer.receive.forges import HeaderMap
    from deployer.report.targets import status_target
    from deployer.settings import Settings
    from deployer.web.app import create_app
    from deployer.web.context import Service

    app = create_app(Settings.from_env(ours_env(state, 9)))
    service = Service.current(app)
    client = app.test_client()
    tag = os.urandom(4).hex()
    deliveries = [sign("github", push_payload("github", after=f"{tag}{index:02x}{i + 1:030x}"), SECRET)
                  for i in range(3 * calls)]  # fmt: skip
    stage: dict[str, list[float]] = {"app": [], "receive": [], "queue": []}
    for d in deliveries[:calls]:
        started = time.perf_counter()
        answer = client.post("/webhook", data=d.body, headers=d.headers)
        stage["app"].append(time.perf_counter() - started)
        assert answer.status_code == 202, answer.get_data()
    for d in deliveries[calls : 2 * calls]:
        headers = HeaderMap(d.headers.items())
        started = time.perf_counter()
        forge = detect_forge(headers)
        assert forge is not None
        signed = signed_bytes(forge, headers, d.body)
        verify_signature(forge, signed=signed, headers=headers, secret=SECRET)
        event = parse_delivery(forge, headers, signed, branch="main")
        stage["receive"].append(time.perf_counter() - started)
        assert not isinstance(event, Ignored), event
    for i, d in enumerate(deliveries[2 * calls :]):
        sha = json.loads(d.body)["after"]
        started = time.perf_counter()
        submit(service.queue, service.settings, Intake(trigger=Trigger.WEBHOOK, ref="refs/heads/main", commit=sha,
                                                       actor="op", delivery=("github", f"{tag}-{i}")),
               target=status_target(service.settings))  # fmt: skip
        stage["queue"].append(time.perf_counter() - started)
    service.store.close()
    return stage


def _enqueue_loop(path: str, seconds: float, tag: str, out: Any) -> None:
    """One process enqueueing as fast as it can (a web worker's write, without HTTP); reports its latencies."""
    from deployer.model import Intake, Trigger
    from deployer.queue import Queue
    from deployer.state import StateStore

    queue = Queue(StateStore(Path(path)))
    took: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n = len(took)
        started = time.perf_counter()
        queue.enqueue(Intake(trigger=Trigger.WEBHOOK, ref="refs/heads/main", commit=f"{tag}{n + 1:032x}",
                             delivery=("github", f"{tag}-{n}")))  # fmt: skip
        took.append(time.perf_counter() - started)
    out.put(took)


def contention_costs(tmp: Path, seconds: float = 3.0) -> dict[str, dict[str, Any]]:
    """`Queue.enqueue` in a loop in one process, then in two processes at once on the same database."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    shm = Path(tempfile.mkdtemp(prefix="bench-contend-", dir="/dev/shm"))
    found: dict[str, dict[str, Any]] = {}
    try:
        for label, base in (("disk", tmp), ("tmpfs", shm)):
            for procs in (1, 2):
                path = Path(tempfile.mkdtemp(prefix="contend-", dir=base)) / "state.db"
                out = ctx.Queue()
                workers = [ctx.Process(target=_enqueue_loop, args=(str(path), seconds, f"{i:08x}", out))
                           for i in range(procs)]  # fmt: skip
                for w in workers:
                    w.start()
                took = sorted(t for _ in workers for t in out.get(timeout=seconds + 60))
                for w in workers:
                    w.join(timeout=30)
                found[f"{label}, {procs} process{'es' if procs > 1 else ''}"] = {
                    "per_s": len(took) / seconds, "p50_ms": took[len(took) // 2] * 1000,
                    "p99_ms": took[int(len(took) * 0.99)] * 1000, "max_ms": took[-1] * 1000,
                    "over_10ms": sum(t > 0.010 for t in took),
                }  # fmt: skip
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    return found


def profile_run(args: argparse.Namespace, tmp: Path, *, gil: bool) -> dict[str, Any]:
    """py-spy samples of ours' web workers under the same load: of the thread holding the GIL (`gil`: where
    Python CPU goes) or of every non-idle thread (also lock waits). Sampling slows the run."""
    where = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp))
    proc, url = start_gunicorn(where)
    raw = where / "profile.txt"
    with running(proc):
        seconds = max(2, int(args.duration) - 2)
        spy_argv = ["py-spy", "record", "--pid", str(proc.pid), "--subprocesses", "--rate", str(PROFILE_HZ),
                    "--nonblocking", *(["--gil"] if gil else []), "--duration", str(seconds), "--format", "raw",
                    "--output", str(raw)]  # fmt: skip
        spy: list[subprocess.CompletedProcess[str]] = []

        def sample() -> None:
            time.sleep(args.warmup + 1)
            spy.append(subprocess.run(spy_argv, capture_output=True, text=True, check=False))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary = generate(url, 202, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
                           out=where / "load.json", server=proc)  # fmt: skip
        sampler.join(timeout=seconds + 60)
    if not raw.exists():
        return {"error": spy[0].stderr[-500:] if spy else "py-spy did not finish", "load": summary}
    return {"load": summary, "seconds": seconds, **summarize_profile(raw)}


def _source(frame: str) -> tuple[str, str]:
    """('func (file:line)', the source line) of a py-spy frame."""
    func, _, location = frame.rpartition(" (")
    path, _, line = location.rstrip(")").rpartition(":")
    text = ""
    for base in sys.path:
        candidate = Path(base or ".") / path
        if candidate.exists():
            text = linecache.getline(str(candidate), int(line) if line.isdigit() else 0).strip()
            break
    return f"{func} ({path}:{line})", text


def summarize_profile(raw: Path) -> dict[str, Any]:
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        # the master's own samples are not a web worker's; a line that a frame's text broke has no count
        if stack.count("process ") < 2 or not frames or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf[frames[-1]] += n
        for name in {f.rpartition(" (")[0] for f in frames}:
            inclusive[name] += n
    top = [(*_source(frame), n / total) for frame, n in leaf.most_common(10)] if total else []
    kinds = {"store": "(deployer/state.py:", "close": "close_graceful ("}
    shares = {k: sum(n for frame, n in leaf.items() if mark in frame) / max(1, total) for k, mark in kinds.items()}
    watch = ["Flask.wsgi_app", "webhook", "Queue.enqueue", "write_told", "Logger.info", "Request.__init__",
             "SyncWorker.wait", "close_graceful"]  # fmt: skip
    return {"samples": total, "top": top, "shares": shares,
            "inclusive": {w: inclusive[w] / total for w in watch} if total else {}}  # fmt: skip


def code_facts(tmp: Path) -> dict[str, Any]:
    """What the measured deployer does, read from it (others change it): web workers and their class, SQLite
    synchronous mode, whether web workers fsync the audit journal, whether writers queue on a file lock."""
    from deployer.settings import Settings
    from deployer.web import gunicorn_settings
    from deployer.web.context import Service

    service = Service.build(Settings.from_env(ours_env(Path(tempfile.mkdtemp(dir=tmp)) / "state", 9)))
    try:
        with service.store.read() as db:
            synchronous = SYNCHRONOUS.get(int(db.execute("PRAGMA synchronous").fetchone()[0]), "?")
        return {
            "workers": gunicorn_settings.WORKERS, "synchronous": synchronous,
            "worker_class": gunicorn_settings.gunicorn_options(bind="127.0.0.1:9")["worker_class"],
            "writer_file_lock": hasattr(service.store, "_write_lock"),
        }  # fmt: skip
    finally:
        service.store.close()


def report_ack(args: argparse.Namespace, data: Mapping[str, Any], quiet: Quiet) -> str:
    res, diag, info, facts = data["results"], data["diagnostics"], data["info"], data["facts"]
    ours, base = res["ours"], res["webhook"]
    ratios = [o["accepted_per_s"] / b["accepted_per_s"] for o, b in zip(ours, base, strict=True)]

    def rows_for(label: str, runs: list[dict[str, Any]]) -> list[list[str]]:
        return [
            [f"{label}: accepted deliveries per second", c.fmt([r["accepted_per_s"] for r in runs], "/s", digits=0)],
            [f"{label}: p50 acknowledgement", c.fmt([r["p50_ms"] for r in runs], "ms", digits=1)],
            [f"{label}: p99 acknowledgement", c.fmt([r["p99_ms"] for r in runs], "ms", digits=1)],
            [f"{label}: max acknowledgement", c.fmt([r["max_ms"] for r in runs], "ms", digits=1)],
            [f"{label}: server CPU per delivery (user + system)",
             c.fmt([r["server_cpu_ms_per_request"] for r in runs], "ms")
             + f"; user {statistics.median(r['server_user_ms_per_request'] for r in runs):.2f}, system "
             f"{statistics.median(r['server_sys_ms_per_request'] for r in runs):.2f}"],
            [f"{label}: answers / errors (all runs)",
             f"{sum(r['requests'] for r in runs)} / {sum(r['errors'] for r in runs)}"],
        ]  # fmt: skip

    rows = rows_for("ours", ours) + rows_for("adnanh/webhook", base)
    rows.append(["ratio ours / webhook, deliveries per second (paired per run)", c.fmt(ratios, "x")])
    gen = [r["generator_cpu_share"] * 100 for r in ours + base]
    gen_note = ", far from a full core, so it was not the bottleneck" if max(gen) < 70 else ", so it may have limited"
    p99 = statistics.median(r["p99_ms"] for r in ours)
    ratio = statistics.median(ratios)
    return f"""## Webhook acknowledgement: latency and throughput vs adnanh/webhook (benchmarks/webhook.py ack)

{args.concurrency} concurrent senders (benchmarks/_loadgen.py, a separate asyncio process) post signed GitHub
push deliveries (tests/deliveries.py's shape and signature, X-Hub-Signature-256; every delivery has its own
`X-GitHub-Delivery` and `after` sha) on loopback, each over a new connection as a forge does, in a closed
loop for {args.duration:g} s after {args.warmup:g} s of unrecorded warm-up. Latency is connect to the answer's
last byte. Every answer is checked: only 202 (ours) or 200 (webhook) counts as accepted, anything else or
a failed connection is an error. N = {len(ours)} runs of each, order alternating; each run starts a fresh
server (fresh state directory in a temp dir); one unmeasured run of each first. Server CPU is the user and
system time of the server's processes (webhook: with its reaped `/bin/true` children) over the generator's
run, divided by the deliveries sent.

- ours: gunicorn with `deploy/gunicorn.conf.py`, what `deployer serve` runs: {facts["workers"]} web workers of class
  `{facts["worker_class"]}`; SQLite state store in WAL mode with `synchronous={facts["synchronous"]}`;
  the `deployment.queued` audit event written in the enqueue's own transaction; one INFO log line per delivery to a file;
  `DEPLOYER_FORGE=github`, so each delivery also queues its `pending` status in the outbox. **Run without
  the deploy worker**, which would otherwise try to deploy thousands of made-up commits; the complete
  service is measured once below.
- baseline: adnanh/webhook {webhook_version()} (Debian package), one hook whose trigger rule is
  `payload-hmac-sha256` on `X-Hub-Signature-256` with the same secret, running `/bin/true` without waiting
  for it (`include-command-output-in-response` off), default (non-verbose) logging.
- Machine: {c.machine_line(info)}
- Date: {info["date"]}; load average before: {info["load"]}; containers running on the engine:
  {info["containers"]}; {quiet.line()}.
- The generator used {statistics.median(gen):.0f}% of one core (median; max {max(gen):.0f}%){gen_note}; it
  shares the 2 cores with the server under test.

{c.table(["what", "median (spread) over runs"], rows)}

**Target: p99 acknowledgement <= {TARGET_P99_MS:g} ms. Measured {p99:.1f} ms (median of per-run p99): {_met(p99 <= TARGET_P99_MS)}.**
**Target: ours >= {TARGET_RATIO}x webhook's deliveries per second. Measured {ratio:.2f}x: {_met(ratio >= TARGET_RATIO)}.**

{ack_diagnostics_text(diag, facts)}

{reading_text(args, res, diag, facts)}

Reproduce: `python -m benchmarks.webhook ack --runs {len(ours)} --duration {args.duration:g} --wait-idle --write-docs`
"""  # noqa: E501 -- the target lines stay whole


def reading_text(args: argparse.Namespace, res: Mapping[str, list[dict[str, Any]]], diag: Mapping[str, Any],
                 facts: Mapping[str, Any]) -> str:  # fmt: skip
    """What the numbers say, computed from them; what they say about the code comes from `code_facts`."""
    ours, base = res["ours"], res["webhook"]

    def median_of(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    rate, base_rate = median_of(ours, "accepted_per_s"), median_of(base, "accepted_per_s")
    cpu, base_cpu = median_of(ours, "server_cpu_ms_per_request"), median_of(base, "server_cpu_ms_per_request")
    user, system = median_of(ours, "server_user_ms_per_request"), median_of(ours, "server_sys_ms_per_request")
    gen = median_of(ours, "generator_cpu_share")
    used = cpu * rate / 1000 + gen
    verdict = (
        f"together {used:.2f} of the 2 cores, so the machine is nearly used up and ours' throughput follows its "
        f"CPU cost per delivery: webhook's cost / ours' = {base_cpu / cpu:.2f}, measured throughput ratio "
        f"{base_rate and rate / base_rate:.2f}"
        if used > 1.6
        else f"together {used:.2f} of the 2 cores: ours waits more than it computes"
    )
    lines = [
        "**Reading.** "
        f"In a closed loop the mean acknowledgement is senders / throughput (Little's law): {args.concurrency} / "
        f"{rate:.0f} per s = {args.concurrency / rate * 1000:.0f} ms for ours, "
        f"{args.concurrency / base_rate * 1000:.0f} ms for webhook. A p99 of {TARGET_P99_MS:g} ms with "
        f"{args.concurrency} senders needs a mean well under that, i.e. far more than "
        f"{args.concurrency / TARGET_P99_MS * 1000:.0f} deliveries per second; webhook, at {base_rate:.0f}/s, had "
        f"a p99 of {median_of(base, 'p99_ms'):.0f} ms. Unloaded (1 sender) ours answers in "
        f"{diag['ours, 1 sender']['p50_ms']:.1f} ms (p50), so the loaded latency is queueing for the CPU. "
        f"Ours' processes used {cpu:.2f} ms of CPU per delivery ({user:.2f} user, {system:.2f} system) against "
        f"webhook's {base_cpu:.2f} ms (which includes a fork and exec of /bin/true per delivery); at {rate:.0f}/s "
        f"that is {cpu * rate / 1000:.2f} cores, and the generator took {gen:.2f}: {verdict}.",
        "",
        costs_reading(diag, facts, user),
        "",
        workers_reading(diag, facts, rate, median_of(ours, "p99_ms")),
    ]
    for kind in ("profile", "waits"):
        if "shares" in diag.get(kind, {}):
            lines += ["", profile_reading(kind, diag[kind], facts)]
    return "\n".join(lines)


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def costs_reading(diag: Mapping[str, Any], facts: Mapping[str, Any], user: float) -> str:
    disk = diag["costs"]["disk"]
    app, queue, receive = (_ms(disk[k]) for k in ("app", "queue", "receive"))
    tmpfs = diag["ours, state dir on tmpfs"]["accepted_per_s"]
    keep = diag["ours, keep-alive connections"]["accepted_per_s"]
    return (
        f"In one process, without HTTP, a whole delivery through the Flask app costs {app:.2f} ms: checking the "
        f"signature and parsing {receive:.2f} ms, the SQLite write transaction (`submit`: delivery, deployment, "
        f"audit event and outbox rows; WAL, `synchronous={facts['synchronous']}`) {queue:.2f} ms, the rest Flask, "
        f"JSON and the log line. The other ~{max(0.0, user - app):.2f} ms of user time per delivery under load is "
        f"gunicorn (accept, HTTP parsing, closing) and waiting for the database; the system time is the "
        f"kernel's: accept, read, write and close of one loopback TCP connection per delivery, select, the file "
        f"lock, the SQLite writes. "
        f"What-ifs: with the state directory on tmpfs ours reached {tmpfs:.0f}/s; with keep-alive connections "
        f"(not what forges do) {keep:.0f}/s, webhook {diag['webhook, keep-alive connections']['accepted_per_s']:.0f}/s."
    )


def workers_reading(diag: Mapping[str, Any], facts: Mapping[str, Any], rate: float, p99: float) -> str:
    one, two = diag["contention"]["disk, 1 process"], diag["contention"]["disk, 2 processes"]
    single = diag["ours, 1 web worker"]
    more = rate / single["accepted_per_s"] - 1
    gain = "adds no throughput" if more < 0.1 else f"adds {more * 100:.0f}% throughput"
    threaded = diag[GTHREAD_LABEL]
    return (
        f"A second web worker {gain} ({single['accepted_per_s']:.0f}/s and p99 {single['p99_ms']:.0f} ms with one, "
        f"{rate:.0f}/s and p99 {p99:.0f} ms with two): there are only 2 cores, and every delivery's write is "
        f"serialized, one write transaction at a time per database. The same two workers as `gthread` workers of "
        f"{GTHREAD_THREADS} threads each managed {threaded['accepted_per_s']:.0f}/s with a p99 of "
        f"{threaded['p99_ms']:.0f} ms at {threaded['server_cpu_ms_per_request']:.2f} ms of CPU per delivery: there "
        f"an accepting thread polls each connection and hands it to a pool thread, and every hand-off waits for the "
        f"GIL, which a busy thread keeps for up to its 5 ms switch interval; the threads also queue for the worker's "
        f"one database connection. A sync worker accepts, answers and closes one connection at a time, so "
        f"deliveries are served in the order they arrive. {_linger_reading(diag, rate)} "
        f"{_writer_mechanism(facts)} With two "
        f"writing processes, `Queue.enqueue` in a tight loop made {two['per_s']:.0f} transactions/s (one process: "
        f"{one['per_s']:.0f}), p99 {two['p99_ms']:.2f} ms (one: {one['p99_ms']:.2f}), slowest {two['max_ms']:.0f} ms "
        f"(one: {one['max_ms']:.0f})."
    )


def _linger_reading(diag: Mapping[str, Any], rate: float) -> str:
    plain = diag[LINGER_LABEL]
    return (
        f"gunicorn's own sync worker managed {plain['accepted_per_s']:.0f}/s (p99 {plain['p99_ms']:.0f} ms) at about "
        f"the same CPU per delivery ({plain['server_cpu_ms_per_request']:.2f} ms): after each answer it half-closes "
        f"and waits for the sender to close its side (RFC 9112 section 9.6), idle while a busy sender gets round to "
        f"it. Ours closes at once when the request was read whole and nothing more has arrived, as nginx's "
        f"`lingering_close on` does, and waits as gunicorn does otherwise ({rate / plain['accepted_per_s']:.2f}x "
        f"the deliveries per second)."
    )


def _writer_mechanism(facts: Mapping[str, Any]) -> str:
    if facts["writer_file_lock"]:
        return (
            "Writers of all processes queue on a file lock (`flock`) before `BEGIN IMMEDIATE`, so the kernel "
            "hands the database to the next writer at once."
        )
    return (
        "A `BEGIN IMMEDIATE` that finds the database locked goes to SQLite's busy handler, which sleeps (up to "
        "100 ms a try) while `StateStore`'s process-wide lock is held, so every thread of that worker waits."
    )


def profile_reading(kind: str, profile: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    inc = profile["inclusive"]
    load = profile["load"]
    if kind == "profile":
        outside = 1 - inc.get("Flask.wsgi_app", 0)
        return (
            f"CPU profile (py-spy `--gil`: the thread holding the GIL in each web worker, {PROFILE_HZ} Hz, "
            f"{profile['samples']} samples; the run slowed to {load['accepted_per_s']:.0f}/s): "
            f"{inc.get('Flask.wsgi_app', 0) * 100:.0f}% inside Flask (in the webhook handler itself "
            f"{inc.get('webhook', 0) * 100:.0f}%: `Queue.enqueue` {inc.get('Queue.enqueue', 0) * 100:.0f}%, "
            f"of which the audit event and status rows (`write_told`) {inc.get('write_told', 0) * 100:.0f}%, logging "
            f"{inc.get('Logger.info', 0) * 100:.0f}%); {outside * 100:.0f}% in gunicorn around it (request parsing "
            f"{inc.get('Request.__init__', 0) * 100:.0f}%, waiting for a connection "
            f"{inc.get('SyncWorker.wait', 0) * 100:.0f}%, closing connections "
            f"{inc.get('close_graceful', 0) * 100:.0f}%). Top lines:\n\n"
            + c.table(
                ["frame", "source line", "share"],
                [[f"`{f}`", f"`{t[:70]}`" if t else "", f"{sh * 100:.1f}%"] for f, t, sh in profile["top"]],
            )
        )
    sh = profile["shares"]
    return (
        f"Wait profile (py-spy, every non-idle thread, {PROFILE_HZ} Hz, {profile['samples']} samples; "
        f"{load['accepted_per_s']:.0f}/s): {sh['store'] * 100:.0f}% of the samples are in the state store (its "
        f"SQL, the audit event written with each delivery, and the wait for the other worker's write), "
        f"{sh['close'] * 100:.0f}% in gunicorn's `close_graceful` (where gunicorn's own sync worker waits for each "
        f"sender to close)."
    )


def webhook_version() -> str:
    out = subprocess.run(["webhook", "-version"], capture_output=True, text=True, check=False).stdout
    return out.strip().removeprefix("webhook version ") or "?"


def _row(label: str, s: Mapping[str, Any]) -> list[str]:
    return [label, f"{s['accepted_per_s']:.0f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['max_ms']:.1f}",
            f"{s['server_cpu_ms_per_request']:.2f}", str(s["errors"])]  # fmt: skip


DIAG_TABLES = ("costs", "contention", "profile", "waits", "serve")


def ack_diagnostics_text(diag: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    rows = [_row(name, s) for name, s in diag.items() if name not in DIAG_TABLES]
    if "serve" in diag:
        rows.append(_row("ours, complete `deployer serve` (deploy worker running)", diag["serve"]))
    header = ["diagnostic run (N = 1 each)", "accepted/s", "p50 ms", "p99 ms", "max ms", "server CPU ms/delivery",
              "errors"]  # fmt: skip
    parts = [
        "### What limits ours",
        "",
        "Single diagnostic runs, same load unless said: 1 sender (no queueing: the bare cost of one delivery), "
        "ours with the state directory on tmpfs (/dev/shm: `fsync` costs nothing), ours with one web worker "
        "(`WEB_CONCURRENCY=1`), and both with keep-alive (each sender reuses one connection; forges do not).",
        "",
        c.table(header, rows),
    ]
    if "serve" in diag:
        s = diag["serve"]
        parts += ["", (
            f"The complete `deployer serve` run deploys from a real (empty) repository; the pushed shas do not exist "
            f"there, so every deployment the worker takes fails at once, after superseding every older queued one. "
            f"Deployments by state at the end: {json.dumps(s['deployment_states'])}; the forge stand-in had received "
            f"{s['statuses_posted']} statuses ({s['forge_errors']} malformed) when the service stopped."
        )]  # fmt: skip
    parts += ["", costs_text(diag["costs"], facts), "", contention_text(diag["contention"], facts)]
    return "\n".join(parts)


def costs_text(costs: Mapping[str, Mapping[str, list[float]]], facts: Mapping[str, Any]) -> str:
    names = {
        "app": "whole delivery in-process (Flask test client, no HTTP server)",
        "receive": "detect forge, check HMAC, parse the push",
        "queue": f"`submit`: one SQLite write transaction with the audit event and the pending status (WAL, "
        f"synchronous={facts['synchronous']})",
    }
    rows = [[names[k], c.fmt(costs["disk"][k], "ms", 1000), c.fmt(costs["tmpfs"][k], "ms", 1000)] for k in names]
    n = len(costs["disk"]["app"])
    return (f"Per-delivery costs in one process (N = {n} calls each; Python {sys.version.split()[0]}):\n\n"
            + c.table(["stage", "state dir on disk (ext4)", "state dir on tmpfs"], rows))  # fmt: skip


def contention_text(found: Mapping[str, Mapping[str, Any]], facts: Mapping[str, Any]) -> str:
    rows = [[name, f"{r['per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['max_ms']:.1f}",
             str(r["over_10ms"])] for name, r in found.items()]  # fmt: skip
    return (
        "`Queue.enqueue` (the write every accepted delivery makes) in a tight loop for 3 s, in one process and then "
        "in two processes at once on the same database, as the two web workers do. SQLite lets one connection "
        f"write at a time. {_writer_mechanism(facts)}\n\n"
        + c.table(["state dir, writers", "transactions/s", "p50 ms", "p99 ms", "max ms", "over 10 ms"], rows)
    )


# ------------------------------------------------------------------------------------------------- (b) burst


class TimedForge(ForgeServer):
    """The forge stand-in, also noting when each accepted status arrived (index-aligned with `posted`)."""

    def __post_init__(self) -> None:
        self.arrivals: list[float] = []
        self._arrival_lock = threading.Lock()
        super().__post_init__()

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._arrival_lock:
            status, answer = super()._answer(path, headers, raw)
            if status == 201:
                self.arrivals.append(time.time())
        return status, answer


def write_stacks(repo: ConfigRepo, names: list[str], values: Mapping[str, int]) -> None:
    for name in names:
        repo.stack(name, {"app": service(environment={"V": str(values[name])})}, deployer={"wait_timeout": 60})


def push(base: str, *, before: str, after: str) -> tuple[int, Any, float]:
    delivery = sign("github", push_payload("github", after=after, before=before), SECRET)
    started = time.perf_counter()
    code, answer = http("POST", f"{base}/webhook", body=delivery.body, headers=delivery.headers)
    return code, answer, time.perf_counter() - started


def final_statuses(forge: TimedForge, shas: list[str]) -> dict[str, tuple[str, str, float]]:
    """The last `deployer` status of each commit: (state, description, arrival)."""
    last: dict[str, tuple[str, str, float]] = {}
    with forge._arrival_lock:
        for post, at in zip(forge.posted, forge.arrivals, strict=True):
            if post.context == "deployer" and post.sha in shas:
                last[post.sha] = (post.state, post.description, at)
    return last


def is_final(state: str, description: str) -> bool:
    return state == "success" or (state == "error" and description.startswith("superseded by"))


def container_env(project: str) -> dict[str, str]:
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    if len(ids) != 1:
        return {"containers": str(len(ids))}
    raw = subprocess.run(["docker", "inspect", "--format", "{{json .Config.Env}}", ids[0]], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(item.split("=", 1) for item in json.loads(raw))


def deploy_head(base: str, forge: TimedForge, repo: ConfigRepo) -> dict[str, Any]:
    """Push the repository's head and wait until its deployment and final status are in."""
    head = repo.head()
    code, answer, _ = push(base, before="0" * 39 + "1", after=head)
    assert code == 202, (code, answer)
    done: dict[str, Any] = wait_for(lambda: _finished(base, answer["deployment_id"]), timeout=180,
                                    what="the first deployment")  # fmt: skip
    assert done["state"] == "succeeded", done
    wait_for(lambda: forge.latest(head).get("deployer") == "success", timeout=60, what="the first final status")
    return done


def _finished(base: str, deployment_id: str) -> dict[str, Any] | None:
    code, deployment = http("GET", f"{base}/api/deployments/{deployment_id}")
    return deployment if code == 200 and deployment["state"] in FINISHED else None


def one_burst(prefix: str, tmp: Path, run: int) -> dict[str, Any]:
    where = Path(tempfile.mkdtemp(prefix=f"burst-{run}-", dir=tmp))
    names = [f"{prefix}-r{run}-{letter}" for letter in "abc"]
    values = dict.fromkeys(names, 0)
    repo = ConfigRepo(where / "config")
    write_stacks(repo, names, values)
    repo.commit("three stacks")
    forge = TimedForge("github")
    try:
        proc, base = start_serve(where, repo_url=repo.url, forge=forge)
        with running(proc):
            deploy_head(base, forge, repo)
            sent = send_burst(base, repo, names, values)
            return collect_burst(base, forge, repo, names=names, values=values, sent=sent)
    finally:
        forge.close()


def send_burst(base: str, repo: ConfigRepo, names: list[str], values: dict[str, int]) -> dict[str, Any]:
    """50 pushes in 5 s: each commits a new value for one stack's variable, then posts its signed push."""
    shas, codes, acks, before = [], [], [], repo.head()
    started = time.time()
    for i in range(BURST_PUSHES):
        delay = started + i * BURST_SECONDS / BURST_PUSHES - time.time()
        if delay > 0:
            time.sleep(delay)
        name = names[i % len(names)]
        values[name] = i + 1
        write_stacks(repo, [name], values)
        sha = repo.commit(f"push {i + 1}: {name} V={i + 1}")
        code, _, took = push(base, before=before, after=sha)
        shas.append(sha)
        codes.append(code)
        acks.append(took)
        before = sha
    return {"shas": shas, "codes": codes, "acks": acks, "started": started, "last_sent": time.time()}


def same_files(repo: ConfigRepo, commit: str | None, other: str, folder: str) -> bool:
    """Whether `folder` is the same at both commits (a stack deployed at `commit` runs what `other` has)."""
    return bool(commit) and not git(repo.path, "diff", "--name-only", str(commit), other, "--", folder)


def collect_burst(base: str, forge: TimedForge, repo: ConfigRepo, *, names: list[str], values: Mapping[str, int],
                  sent: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    shas: list[str] = sent["shas"]
    try:
        wait_for(lambda: all(is_final(s, d) for s, d, _ in final_statuses(forge, shas).values())
                 and len(final_statuses(forge, shas)) == len(shas), timeout=300, what="50 final statuses",
                 every=0.05)  # fmt: skip
        timed_out = False
    except TimeoutError:
        timed_out = True
    wait_for(lambda: all(d["state"] in FINISHED for d in http("GET", f"{base}/api/deployments?limit=100")[1]),
             timeout=300, what="every deployment to finish")  # fmt: skip
    deployments = [d for d in http("GET", f"{base}/api/deployments?limit=500")[1] if d["commit"] in shas]
    ran = [d for d in deployments if d["state"] in ("succeeded", "failed")]
    stacks = {s["name"]: s for s in http("GET", f"{base}/api/stacks")[1]}
    last = shas[-1]
    content_ok = {n: same_files(repo, stacks.get(n, {}).get("deployed_commit"), last, f"stacks/{n}") for n in names}
    env_ok = {n: container_env(n).get("V") == str(values[n]) for n in names}
    finals = final_statuses(forge, shas)
    last_deploy = next((d for d in ran if d["commit"] == last), None)
    return {
        "acks_202": sum(code == 202 for code in sent["codes"]),
        "ack_ms": [a * 1000 for a in sent["acks"]],
        "deployments_ran": len(ran),
        "ran_states": Counter(d["state"] for d in ran),
        "superseded": sum(d["state"] == "superseded" for d in deployments),
        "ran_seconds": [c.epoch(d["finished_at"]) - c.epoch(d["started_at"]) for d in ran],
        "last_deployed": bool(last_deploy and last_deploy["state"] == "succeeded"),
        "last_stack_commit": stacks.get(names[(BURST_PUSHES - 1) % len(names)], {}).get("deployed_commit") == last,
        "content_ok": all(content_ok.values()),
        "env_ok": all(env_ok.values()),
        "finals": sum(is_final(s, d) for s, d, _ in finals.values()),
        "final_kinds": Counter(s if s == "success" else f"{s}: {d.split(' by ')[0]}" for s, d, _ in finals.values()),
        "forge_errors": list(forge.errors),
        "timed_out": timed_out,
        "last_status_after_first_push": max((at for _, _, at in finals.values()), default=float("nan"))
        - sent["started"],
        "last_status_after_last_push": max((at for _, _, at in finals.values()), default=float("nan"))
        - sent["last_sent"],
        "last_commit_deployed_after_last_push": c.epoch(last_deploy["finished_at"]) - sent["last_sent"]
        if last_deploy
        else float("nan"),
        "burst_seconds": sent["last_sent"] - sent["started"],
    }


def measure_burst(args: argparse.Namespace, prefix: str, tmp: Path, quiet: Quiet) -> dict[str, Any]:
    c.ensure_image(TEST_IMAGE)
    info = c.run_info()
    runs = []
    for run in range(args.runs):
        quiet.before_run()
        result = one_burst(prefix, tmp, run)
        quiet.after_run()
        runs.append(result)
        c.remove_docker_objects(f"{prefix}-r{run}-")
        print(f"burst run {run + 1}/{args.runs}: {result['deployments_ran']} deployments ran "
              f"({dict(result['ran_states'])}), {result['superseded']} superseded, last deployed "
              f"{result['last_deployed']} (env {result['env_ok']}, content {result['content_ok']}), "
              f"{result['finals']}/{BURST_PUSHES} final statuses, last status "
              f"{result['last_status_after_first_push']:.1f} s after the first push, forge errors "
              f"{len(result['forge_errors'])}", flush=True)  # fmt: skip
    return {"info": info, "runs": runs}


def report_burst(args: argparse.Namespace, data: Mapping[str, Any], quiet: Quiet) -> str:
    runs, info = data["runs"], data["info"]
    header = ["run", "acks 202", "deployments ran", "superseded", "last commit deployed (API / stack / env)",
              "final statuses", "forge errors", "last status after 1st push", "... after last push"]  # fmt: skip
    rows = [
        [str(i + 1), f"{r['acks_202']}/{BURST_PUSHES}", f"{r['deployments_ran']} ({_kinds(r['ran_states'])})",
         str(r["superseded"]),
         f"{_yes(r['last_deployed'])} / {_yes(r['last_stack_commit'] and r['content_ok'])} / {_yes(r['env_ok'])}",
         f"{r['finals']}/{BURST_PUSHES} ({_kinds(r['final_kinds'])})", str(len(r["forge_errors"])),
         f"{r['last_status_after_first_push']:.1f} s", f"{r['last_status_after_last_push']:.1f} s"]
        for i, r in enumerate(runs)
    ]  # fmt: skip
    summary = [
        ["deployments that ran per burst", c.fmt([r["deployments_ran"] for r in runs], "deployments", digits=0)],
        ["one deployment's duration (started -> finished)", c.fmt([t for r in runs for t in r["ran_seconds"]])],
        ["last push -> the last commit's deployment finished",
         c.fmt([r["last_commit_deployed_after_last_push"] for r in runs])],
        ["first push -> the last final status at the forge", c.fmt([r["last_status_after_first_push"] for r in runs])],
        ["last push -> the last final status at the forge", c.fmt([r["last_status_after_last_push"] for r in runs])],
        ["acknowledgement of a push during the burst", c.fmt([a for r in runs for a in r["ack_ms"]], "ms", digits=1)],
    ]  # fmt: skip
    worst = max(r["deployments_ran"] for r in runs)
    few = worst <= TARGET_DEPLOYMENTS
    last_ok = all(r["last_deployed"] and r["last_stack_commit"] and r["content_ok"] and r["env_ok"] for r in runs)
    finals_ok = all(r["finals"] == BURST_PUSHES and not r["forge_errors"] for r in runs)
    return f"""## A burst of {BURST_PUSHES} pushes in {BURST_SECONDS:g} s (benchmarks/webhook.py burst)

The complete `deployer serve` (gunicorn master, 2 web workers, the deploy worker) deploys a real config
repository of three busybox stacks (one service each, `{TEST_IMAGE}`, `pull_policy: never`, healthcheck).
Its first commit is pushed and deployed first (not counted). Then, every {BURST_SECONDS / BURST_PUSHES * 1000:.0f} ms,
{BURST_PUSHES} times, the benchmark commits a new value of one stack's environment variable (round robin) and
posts that commit's signed GitHub push delivery. `DEPLOYER_FORGE=github`, `DEPLOYER_FORGE_API_URL` is a
`ForgeServer("github")` (tests/servers.py) in the benchmark process, `DEPLOYER_POLL_INTERVAL=0`. A run ends when
every commit's `deployer` status is final and no deployment is queued or running. "Deployments ran" counts
the burst's deployments whose state is succeeded or failed (not superseded). The last commit counts as
deployed when its deployment succeeded (API), every stack's `deployed_commit` (GET /api/stacks) has that
stack's files as at the last commit and the last push's stack is at the last commit, and every container's
environment has the last value (env). A final status is `success`, or `error` "superseded by <sha>".

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; N = {len(runs)} bursts; load average before: {info["load"]}; {quiet.line()}.

{c.table(header, rows)}

{c.table(["what", "median (spread) over runs"], summary)}

**Target: <= {TARGET_DEPLOYMENTS} deployments per burst. Measured at most {worst}: {_met(few)}.**
**Target: the last commit deployed: {_met(last_ok)}. Target: a final status on all {BURST_PUSHES} commits, no malformed
status: {_met(finals_ok)}.**

Reproduce: `python -m benchmarks.webhook burst --runs {len(runs)} --wait-idle --write-docs`
"""


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def _met(value: bool) -> str:
    return "met" if value else "NOT met"


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


# ------------------------------------------------------------------------------------------------ (c) memory


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
    repo = ConfigRepo(where / "config")
    write_stacks(repo, names, dict.fromkeys(names, 0))
    repo.commit("two stacks")
    forge = TimedForge("github")
    try:
        proc, base = start_serve(where, repo_url=repo.url, forge=forge)
        with running(proc):
            wait_for(lambda: "deploy worker not running" not in json.dumps(http("GET", f"{base}/readyz")[1]),
                     timeout=60, what="the deploy worker's heartbeat")  # fmt: skip
            time.sleep(3)
            started = serve_memory(proc.pid)
            deploy_head(base, forge, repo)
            time.sleep(IDLE_SECONDS)
            idle = serve_memory(proc.pid)
        return {"after start": started, "after a deployment + idle": idle}
    finally:
        forge.close()
        c.remove_docker_objects(f"{prefix}-m{run}-")


def measure_memory(args: argparse.Namespace, prefix: str, tmp: Path, quiet: Quiet) -> dict[str, Any]:
    c.ensure_image(TEST_IMAGE)
    info = c.run_info()
    runs = []
    for run in range(args.runs):
        quiet.before_run()
        runs.append(one_memory(prefix, tmp, run))
        quiet.after_run()
        for moment, procs in runs[-1].items():
            print(f"memory run {run + 1}, {moment}: RSS {sum(p['rss'] for p in procs.values()) / 1024:.1f} MiB, "
                  f"PSS {sum(p['pss'] for p in procs.values()) / 1024:.1f} MiB over {len(procs)} processes",
                  flush=True)  # fmt: skip
    return {"info": info, "runs": runs}


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
    return f"""## Memory of the idle service (benchmarks/webhook.py memory)

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

**Target: <= {TARGET_RSS_MIB:g} MiB RSS summed. Measured at most {worst:.1f} MiB: {_met(worst <= TARGET_RSS_MIB)}.**

Reproduce: `python -m benchmarks.webhook memory --runs {len(runs)} --wait-idle --write-docs`
"""


# ---------------------------------------------------------------------------------------------------- main


def main() -> int:
    p = c.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("what", nargs="?", default="all", choices=["ack", "burst", "memory", "all"])
    p.add_argument("--duration", type=float, default=15.0, help="ack: measured seconds per run (default 15)")
    p.add_argument("--warmup", type=float, default=2.0, help="ack: unrecorded seconds before each run (default 2)")
    p.add_argument("--concurrency", type=int, default=50, help="ack: concurrent senders (default 50)")
    p.add_argument("--no-serve", action="store_true", help="ack: skip the run of the complete `deployer serve`")
    p.add_argument("--no-profile", action="store_true", help="ack: skip the py-spy profile")
    args = p.parse_args()
    prefix = c.new_prefix()
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    jobs = {"ack": (measure_ack, report_ack, "webhook_ack"), "burst": (measure_burst, report_burst, "webhook_burst"),
            "memory": (measure_memory, report_memory, "webhook_memory")}  # fmt: skip
    try:
        with c.docker_cleanup(prefix):
            for name in ("ack", "burst", "memory") if args.what == "all" else (args.what,):
                measure, report, section = jobs[name]
                quiet = Quiet(args.wait_idle)
                data = measure(args, prefix, tmp, quiet)
                saved = tmp.parent / f"{prefix}-{name}.json"
                saved.write_text(json.dumps(data, default=str, indent=1))
                print(f"raw results: {saved}")
                body = report(args, data, quiet)
                print()
                print(body)
                if args.write_docs:
                    c.write_section(section, body)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

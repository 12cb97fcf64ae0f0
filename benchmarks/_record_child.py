"""The child processes of benchmarks/record_cost.py and record_backlog.py, each importing `deployer` from its tree.

  deploy  with PYTHONPATH at one deployer tree: K deployments of a config repository's commits, each
          as the service makes it (the web worker's `Service.enqueue_push`, the deploy worker's
          `Queue.claim` and `Worker.run_claim`, which runs `deployer.pipeline.deploy`), with a stack
          backend that succeeds at once; the state-store, journal and recorder calls are timed by
          wrapping them. Then M `enqueue_push` calls alone, as a web worker makes them per webhook.
  push    the Loki baseline: the recorded lines of a state.db pushed in batches with `requests`.

Run as a script (`python benchmarks/_record_child.py ...`), never as `-m benchmarks...`: it must not import
benchmarks._common, which puts the working tree first on sys.path. Whatever the tree's API, this file only
calls what every measured version has (Settings.from_env, Deps.from_settings, web.context.Service, Worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

#: what a deployment records, by class: (module, class, methods); only those the tree has are wrapped
RECORDING = (
    ("deployer.pipeline.record", "Recorder",
     ("started", "stack", "released", "release_held", "hold_or_release", "secrets_decrypted", "refused", "finish")),
    ("deployer.state", "StateStore",
     ("start_deployment", "record_stack", "finish_deployment", "release", "hold", "tell", "supersede", "set_retry")),
    ("deployer.queue", "Queue", ("enqueue", "supersede_older", "add_statuses", "add_statuses_of")),
    ("deployer.report.audit", "Journal", ("record", "record_many")),
    ("deployer.jobs", "Worker", ("_superseded",)),
)  # fmt: skip
READS = (
    ("deployer.state", "StateStore", ("last_good", "held", "latest_deployed")),
    ("deployer.queue", "Queue", ("status_target", "meta", "latest_attempt")),
)
GIT = (
    ("deployer.fetch.mirror", "Mirror",
     ("sync", "resolve", "try_resolve", "clean_checkout", "changed_paths", "not_ancestors", "is_ancestor", "checkout",
      "fetch_ref")),
)  # fmt: skip
CLAIM = (("deployer.queue", "Queue", ("claim",)),)
#: nested parts counted even inside a recording call: the journal's append, the Told rows, transactions
DETAILS: tuple[tuple[str, str | None, str, tuple[str, ...]], ...] = (
    ("deployer.report.audit", "Journal", "journal", ("record_many",)),
    ("deployer.state", None, "write_told", ("write_told",)),
    ("deployer.queue", None, "write_told", ("write_told",)),
    ("deployer.state", "StateStore", "transactions", ("_tx",)),
)


SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class NoBackend:
    """A stack backend whose every stack is valid and comes up at once: no engine in the measurement."""

    def check(self, stack: object, *, workdir: Path, env: object) -> dict[str, object]:
        return {}  # the resolved config, which trees since the host policy (15ce79d) judge: nothing in it

    def up(self, stack: object, *, workdir: Path, env: object, force: bool = False) -> str:
        return ""

    def down(self, name: str) -> str:
        return ""

    def images(self, name: object) -> dict[str, str]:
        return {}

    def ping(self) -> str | None:
        return None


class Timers:
    """Wall time of wrapped calls: each outermost call of a thread counts once, to its category and its name."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def snapshot(self) -> tuple[dict[str, float], dict[str, int]]:
        return dict(self.seconds), dict(self.calls)

    def wrap(self, owner: Any, name: str, category: str) -> None:
        original = getattr(owner, name)
        label = f"{getattr(owner, '__name__', '?')}.{name}"

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self.local, "depth", 0)
            self.local.depth = depth + 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.local.depth = depth
                if depth == 0:
                    took = time.perf_counter() - started
                    self.seconds[category] += took
                    self.seconds[label] += took
                    self.calls[label] += 1

        setattr(owner, name, timed)

    def detail(self, owner: Any, name: str, key: str) -> None:
        """Count (and time, when it returns its result) every call, nested or not."""
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[f"detail:{key}"] += time.perf_counter() - started
                self.calls[f"detail:{key}"] += 1

        setattr(owner, name, counted)


def instrument(timers: Timers) -> list[str]:
    """Wrap what this tree has; return the names wrapped (the report says which calls were timed)."""
    wrapped = []
    for category, table in (("recording", RECORDING), ("reads", READS), ("git", GIT), ("claim", CLAIM)):
        for module_name, class_name, methods in table:
            owner = getattr(_module(module_name), class_name, None)
            for method in methods:
                if owner is not None and method in vars(owner):
                    timers.wrap(owner, method, category)
                    wrapped.append(f"{category}: {class_name}.{method}")
    plan = _module("deployer.pipeline.deploy")
    for function in ("load_catalog", "make_plan"):
        if hasattr(plan, function):
            timers.wrap(plan, function, "plan")
            wrapped.append(f"plan: {function}")
    for module_name, holder, key, names in DETAILS:
        module = _module(module_name)
        owner = module if holder is None else getattr(module, holder, None)
        for name in names:
            if owner is not None and hasattr(owner, name):
                timers.detail(owner, name, key)
    timers.detail(os, "fsync", "fsync")
    return wrapped


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def settings_env(repo: str, state: Path) -> dict[str, str]:
    return {
        "DEPLOYER_REPO_URL": repo, "DEPLOYER_STATE_DIR": str(state), "DEPLOYER_WEBHOOK_SECRET": "bench-record",
        "DEPLOYER_FORGE": "github", "DEPLOYER_FORGE_API_URL": "http://127.0.0.1:9",
        "DEPLOYER_PUBLIC_URL": "http://127.0.0.1:8000", "DEPLOYER_POLL_INTERVAL": "0",
    }  # fmt: skip


def written(state: Path) -> dict[str, int]:
    """Audit events (rows, or journal lines) and commit statuses written so far."""
    db = sqlite3.connect(state / "state.db")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        events = db.execute("SELECT COUNT(*) FROM audit_events").fetchone()[0] if "audit_events" in tables else 0
        statuses = db.execute("SELECT COUNT(*) FROM status_outbox").fetchone()[0]
    finally:
        db.close()
    journal = state / "audit.jsonl"
    if journal.exists():
        events += journal.read_bytes().count(b"\n")
    return {"events": int(events), "statuses": int(statuses)}


class Harness:
    """One state directory, its web side (what a web worker holds) and its deploy worker."""

    def __init__(self, repo: str, state: Path) -> None:
        settings = _module("deployer.settings").Settings.from_env(settings_env(repo, state))
        self.state = state
        self.web = _module("deployer.web.context").Service.build(settings)
        deps = _module("deployer.pipeline").Deps.from_settings(settings)
        self.worker = _module("deployer.jobs").Worker(dataclasses.replace(deps, backend=NoBackend()))
        self.forge = _module("deployer.receive.forges").Forge("github")
        self.push_event = _module("deployer.receive.events").PushEvent

    def push(self, *, before: str, after: str) -> Any:
        event = self.push_event(forge=self.forge, delivery_id=uuid.uuid4().hex, ref="refs/heads/main", before=before,
                                after=after, repo="ops/config", api_url=None, actor="op")  # fmt: skip
        return self.web.enqueue_push(event)


def one_deployment(harness: Harness, timers: Timers, *, before: str, after: str) -> dict[str, Any]:
    """Queue a push of `after` (the branch head), claim it and run it; the times of each phase and its calls."""
    marks = [time.perf_counter()]
    snaps = [timers.snapshot()]
    enqueued = harness.push(before=before, after=after)
    marks.append(time.perf_counter())
    snaps.append(timers.snapshot())
    claim = harness.worker.queue.claim()
    marks.append(time.perf_counter())
    snaps.append(timers.snapshot())
    outcome = harness.worker.run_claim(claim)
    marks.append(time.perf_counter())
    snaps.append(timers.snapshot())
    if claim.deployment_id != enqueued.deployment_id or str(outcome.state) != "succeeded" or len(outcome.results) != 5:
        raise RuntimeError(f"deployment of {after[:12]}: {outcome}")
    phases = {}
    for index, phase in enumerate(("queued", "claim", "run")):
        (s0, c0), (s1, c1) = snaps[index], snaps[index + 1]
        phases[phase] = {
            "ms": (marks[index + 1] - marks[index]) * 1000,
            "seconds_ms": {k: (v - s0.get(k, 0.0)) * 1000 for k, v in s1.items() if v != s0.get(k, 0.0)},
            "calls": {k: v - c0.get(k, 0) for k, v in c1.items() if v != c0.get(k, 0)},
        }
    return phases


def deploy_main(args: argparse.Namespace) -> dict[str, Any]:
    deployer = _module("deployer")
    timers = Timers()
    wrapped = instrument(timers)
    commits = args.commits.split(",")
    harness = Harness(args.repo, Path(args.state))
    samples = []
    before = "0" * 40
    for number, sha in enumerate(commits):
        subprocess.run(["git", "-C", args.repo, "update-ref", "refs/heads/main", sha], check=True)
        counts = written(harness.state)
        phases = one_deployment(harness, timers, before=before, after=sha)
        after = written(harness.state)
        before = sha
        if number >= args.warmup:
            samples.append(phases | {"events": after["events"] - counts["events"],
                                     "statuses": after["statuses"] - counts["statuses"]})  # fmt: skip
    hooks = Harness(args.repo, Path(args.state + "-hooks"))
    hooks.push(before="0" * 40, after=os.urandom(20).hex())  # the first write creates the schema's pages
    webhook_ms = []
    for _ in range(args.webhooks):
        started = time.perf_counter()
        hooks.push(before="0" * 40, after=os.urandom(20).hex())
        webhook_ms.append((time.perf_counter() - started) * 1000)
    with harness.worker.deps.store.read() as db:
        synchronous = SYNCHRONOUS.get(int(db.execute("PRAGMA synchronous").fetchone()[0]), "?")
    return {"deployer": str(Path(deployer.__file__).parent), "wrapped": wrapped, "deployments": samples,
            "webhook_ms": webhook_ms, "webhook_written": written(hooks.state), "synchronous": synchronous}  # fmt: skip


def push_main(args: argparse.Namespace) -> dict[str, Any]:
    """Every recorded line of `args.db`, pushed to `args.url` in batches as Loki's push API takes them."""
    db = sqlite3.connect(args.db)
    try:
        values = [[str(ts), str(line)] for ts, line in db.execute("SELECT ts_ns, line FROM audit_events ORDER BY id")]
    finally:
        db.close()
    session = requests.Session()
    url = args.url.rstrip("/") + "/loki/api/v1/push"
    labels = {"service_name": "deployer", "source": "audit"}
    started = time.perf_counter()
    for first in range(0, len(values), args.batch):
        body: dict[str, Any] = {"streams": [{"stream": labels, "values": values[first : first + args.batch]}]}
        response = session.post(url, json=body, headers={"Content-Type": "application/json"}, timeout=30)
        response.raise_for_status()
    return {"seconds": time.perf_counter() - started, "lines": len(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("deploy")
    d.add_argument("--repo", required=True)
    d.add_argument("--state", required=True)
    d.add_argument("--commits", required=True, help="comma-separated shas, deployed in this order")
    d.add_argument("--warmup", type=int, default=2, help="unmeasured deployments first")
    d.add_argument("--webhooks", type=int, default=500, help="enqueue_push calls timed after the deployments")
    d.add_argument("--out", required=True)
    q = sub.add_parser("push")
    q.add_argument("--db", required=True)
    q.add_argument("--url", required=True)
    q.add_argument("--batch", type=int, default=500)
    q.add_argument("--out", required=True)
    args = p.parse_args()
    run: Callable[[argparse.Namespace], dict[str, Any]] = deploy_main if args.mode == "deploy" else push_main
    Path(args.out).write_text(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

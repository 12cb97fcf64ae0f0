"""webhook_ack's in-process diagnostics: what one delivery costs in the Flask app and its stages (no HTTP
server), what the write transaction costs with one and two writing processes, and what the measured
deployer's code does (workers, SQLite synchronous mode, writer lock), with the text that reports them.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from benchmarks._servers import SECRET, ours_env
from tests.deliveries import push_payload, sign

SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


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


def writer_mechanism(facts: Mapping[str, Any]) -> str:
    if facts["writer_file_lock"]:
        return (
            "Writers of all processes queue on a file lock (`flock`) before `BEGIN IMMEDIATE`, so the kernel "
            "hands the database to the next writer at once."
        )
    return (
        "A `BEGIN IMMEDIATE` that finds the database locked goes to SQLite's busy handler, which sleeps (up to "
        "100 ms a try) while `StateStore`'s process-wide lock is held, so every thread of that worker waits."
    )


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
        f"write at a time. {writer_mechanism(facts)}\n\n"
        + c.table(["state dir, writers", "transactions/s", "p50 ms", "p99 ms", "max ms", "over 10 ms"], rows)
    )

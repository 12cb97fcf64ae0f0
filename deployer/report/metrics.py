"""GET /metrics: what the state store knows, read at scrape time, and the web workers' own counters.

Every value that lives in the state store (deployments, stack durations, the queue, the status and
audit outboxes, the worker's heartbeat) is read from it when Prometheus scrapes, so any web worker
answers the same. The one per-request count, webhook deliveries by forge and outcome, is kept by
prometheus_client in multiprocess mode under `deployer serve`: the directory is cleared when the
service starts and a web worker that exits is marked dead (deployer.serve, gunicorn's `child_exit`),
and a scrape sums every worker's file. Without that directory (the app in one process, as the tests
build it) the counter lives in the process.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from deployer import __version__
from deployer.model import DeploymentState, StackState
from deployer.state import DURATION_BUCKETS, StateStore

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "MULTIPROC_ENV",
    "WEBHOOK_DELIVERIES",
    "Metrics",
]

log = logging.getLogger("deployer.metrics")

#: set by deployer.web.gunicorn_settings before the web workers fork (prometheus_client reads it at import)
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_FINISHED: Final = (DeploymentState.SUCCEEDED, DeploymentState.FAILED, DeploymentState.SUPERSEDED)
#: stack results that ran compose, and so have a duration
_RAN: Final = (StackState.SUCCEEDED, StackState.FAILED, StackState.ROLLED_BACK)

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: the counts alone, as a scrape of several workers gives them

#: counted by the web worker that answered; `reason` is one of a few words per outcome (docs/service.md)
WEBHOOK_DELIVERIES: Final = Counter(
    "deployer_webhook_deliveries",
    "Webhook deliveries by forge and outcome (accepted, ignored, rejected) and a short reason",
    ["forge", "outcome", "reason"],
    registry=None,
)


class Metrics:
    """What one web worker answers a scrape with: every worker's counters, the state store's live values,
    and its history (deployments and stack results), kept rendered between scrapes.

    Every change to a deployment or a stack result is recorded with its audit event (deployer.state), so
    the last event id says whether the history changed, and the events since say which stacks did: only
    those are read again. With `shipping` (DEPLOYER_LOKI_URL set), how shipping to Loki stands.
    """

    def __init__(self, store: StateStore, *, shipping: bool) -> None:
        self.store = store
        self.live = CollectorRegistry(auto_describe=False)
        if os.environ.get(MULTIPROC_ENV):
            MultiProcessCollector(self.live)  # type: ignore[no-untyped-call]
        else:
            self.live.register(WEBHOOK_DELIVERIES)
        self.live.register(_Live(self, shipping=shipping))
        self._seen = -1  # the last audit event id the history was read at
        self._stacks: dict[str, _StackTotals] = {}
        self._history = b""
        self._up = False

    def render(self) -> bytes:
        """The exposition: the live part now (it says whether the store answered), then the history."""
        try:
            with self.store.read() as db:
                self._read_history(db)
            self._up = True
        except sqlite3.Error as error:
            log.warning("metrics: state store unreadable: %s", error)
            self._up = False
        live = generate_latest(self.live)
        return live + self._history if self._up else live

    def _read_history(self, db: sqlite3.Connection) -> None:
        (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM audit_events").fetchone()
        if last == self._seen:
            return
        if self._seen < 0:
            self._stacks = _stack_totals(db, None)
        else:
            since = db.execute(
                "SELECT DISTINCT stack FROM audit_events WHERE id > ? AND stack IS NOT NULL", (self._seen,)
            )
            changed = [row[0] for row in since]
            if changed:
                fresh = _stack_totals(db, changed)
                for name in changed:
                    self._stacks.pop(name, None)
                self._stacks.update(fresh)
        history = CollectorRegistry(auto_describe=False)
        history.register(_Families([_deployments(db), *_stack_families(self._stacks)]))
        self._history, self._seen = generate_latest(history), last


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class _Live(Collector):
    """The values that change without an event, read at every scrape."""

    def __init__(self, owner: Metrics, *, shipping: bool) -> None:
        self.owner, self.shipping = owner, shipping

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("deployer_build_info", "The deployer's version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        up = GaugeMetricFamily("deployer_state_store_up", "1 when the state store answered this scrape")
        if not self.owner._up:
            up.add_metric([], 0.0)
            yield up
            return
        try:
            with self.owner.store.read() as db:
                found = list(_outboxes(db, now=time.time(), shipping=self.shipping))
        except sqlite3.Error as error:
            log.warning("metrics: state store unreadable: %s", error)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from found


def _deployments(db: sqlite3.Connection) -> Metric:
    deployments = CounterMetricFamily(
        "deployer_deployments", "Finished deployments by trigger and result", labels=["trigger", "result"]
    )
    finished = ",".join("?" * len(_FINISHED))
    for row in db.execute(
        "SELECT trigger, state, COUNT(*) FROM deployments INDEXED BY deployments_by_state_and_trigger"  # noqa: S608
        f" WHERE state IN ({finished}) GROUP BY state, trigger",
        [str(s) for s in _FINISHED],
    ):
        deployments.add_metric([row[0], row[1]], row[2])
    return deployments


def _outboxes(db: sqlite3.Connection, *, now: float, shipping: bool) -> Iterable[Metric]:
    """The queue, what waits to be told (statuses, audit events) and how the worker and its shippers stand:
    read every scrape (a claim changes the queue without an event)."""
    counts = dict(db.execute("SELECT state, COUNT(*) FROM deployments WHERE state IN ('queued', 'running')"
                             " GROUP BY state").fetchall())  # fmt: skip
    yield _gauge("deployer_queue_depth", "Deployments queued and not started", counts.get("queued", 0))
    yield _gauge("deployer_deployments_running", "Deployments under way (0 or 1)", counts.get("running", 0))
    waiting, oldest = db.execute("SELECT COUNT(*), MIN(queued_at) FROM status_outbox WHERE done_at IS NULL").fetchone()
    yield _gauge("deployer_statuses_waiting", "Commit statuses not yet delivered to the forge", waiting)
    yield _gauge("deployer_statuses_oldest_waiting_seconds", "Age of the oldest status not yet delivered",
                 max(0.0, now - oldest) if oldest else 0.0)  # fmt: skip

    if shipping:
        waiting, oldest_ns = db.execute(
            "SELECT COUNT(*), MIN(ts_ns) FROM audit_events WHERE shipped_at IS NULL AND ship_error IS NULL"
        ).fetchone()
        (aside,) = db.execute("SELECT COUNT(*) FROM audit_events WHERE ship_error IS NOT NULL").fetchone()
        yield _gauge("deployer_audit_events_waiting", "Audit events not yet shipped to Loki", waiting)
        yield _gauge("deployer_audit_events_oldest_waiting_seconds", "Age of the oldest audit event not yet shipped",
                     max(0.0, now - oldest_ns / 1e9) if oldest_ns else 0.0)  # fmt: skip
        yield _gauge(
            "deployer_audit_events_set_aside", "Audit events Loki refused or would refuse, kept locally", aside
        )

    keys = "'worker', 'loki', 'notify', 'engine', 'hosts', 'drift'"
    meta = dict(db.execute(f"SELECT key, value FROM meta WHERE key IN ({keys})").fetchall())  # noqa: S608 -- constants
    yield _engines(meta)
    yield _drift(db)
    for key, name, what in (("seconds", "deployer_drift_check_duration_seconds", "Wall time"),
                            ("cpu_seconds", "deployer_drift_check_cpu_seconds", "CPU time of the drift thread"),
                            ("at", "deployer_drift_check_timestamp_seconds", "When it ended (epoch)")):  # fmt: skip
        value = _json_field(meta.get("drift"), key)
        if value is not None:
            yield _gauge(name, f"{what} of the last drift check", float(value))
    beat = _json_field(meta.get("worker"), "at")
    if beat is not None:
        yield _gauge("deployer_worker_heartbeat_age_seconds", "Seconds since the deploy worker's last heartbeat",
                     max(0.0, now - beat))  # fmt: skip
    for key, name, what in (("loki", "deployer_audit_shipping_ok", "the last push of audit events to Loki"),
                            ("notify", "deployer_notifications_ok", "the last notification sent")):  # fmt: skip
        ok = _json_field(meta.get(key), "ok") if key != "loki" or shipping else None
        if ok is not None:
            yield _gauge(name, f"1 when {what} succeeded", 1.0 if ok else 0.0)


def _engines(meta: dict[str, str]) -> Metric:
    """1 or 0 per engine as the deploy worker last found it: its own (`host=""`) and each docker_host."""
    what = "1 when the engine answered the deploy worker's last check (host: a docker_host; empty: its own)"
    up = GaugeMetricFamily("deployer_engine_up", what, labels=["host"])
    own = _json_field(meta.get("engine"), "ok")
    if own is not None:
        up.add_metric([""], 1.0 if own else 0.0)
    try:
        hosts = json.loads(meta.get("hosts") or "{}")
    except ValueError:
        hosts = {}
    for host, state in sorted(hosts.items() if isinstance(hosts, dict) else ()):
        if isinstance(state, dict):
            up.add_metric([str(host)], 1.0 if state.get("ok") else 0.0)
    return up


def _drift(db: sqlite3.Connection) -> Metric:
    """Each deployed stack's drift findings by kind as the last drift check recorded them (0 of each kind a
    stack has none of is left out; a stack without any drift shows as kind="" 0)."""
    drift = GaugeMetricFamily("deployer_stack_drift", "Drift findings of each deployed stack at the last check "
                              "(kind: missing, stopped, unhealthy, config_changed, image_changed, extra, unknown)",
                              labels=["stack", "kind"])  # fmt: skip
    for name, raw in db.execute("SELECT name, drift FROM stacks ORDER BY name"):
        try:
            found = json.loads(raw or "[]")
        except ValueError:
            found = []
        kinds: dict[str, int] = {}
        for finding in found if isinstance(found, list) else ():
            if isinstance(finding, dict):
                kinds[str(finding.get("kind"))] = kinds.get(str(finding.get("kind")), 0) + 1
        for kind, n in sorted(kinds.items()) or [("", 0)]:
            drift.add_metric([name, kind], n)
    return drift


@dataclass
class _StackTotals:
    """One stack's results by state, its durations by bucket (then their sum in ms), its last success."""

    results: dict[str, int] = field(default_factory=dict)
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(DURATION_BUCKETS) + 2))
    ran: bool = False
    last_success: str = ""


def _stack_totals(db: sqlite3.Connection, names: list[str] | None) -> dict[str, _StackTotals]:
    """The totals of the stacks named (all when None), from the index that holds them."""
    where, args = ("", []) if names is None else (f" AND name IN ({','.join('?' * len(names))})", names)
    rows = db.execute(
        "SELECT name, state, duration_bucket, COUNT(*), SUM(duration_ms), MAX(finished_at)"  # noqa: S608
        " FROM deployment_stacks INDEXED BY deployment_stacks_metrics"
        f" WHERE state NOT IN ('pending', 'running'){where} GROUP BY name, state, duration_bucket",
        args,
    ).fetchall()
    found: dict[str, _StackTotals] = {}
    for name, state, index, n, total_ms, finished in rows:
        totals = found.setdefault(name, _StackTotals())
        totals.results[state] = totals.results.get(state, 0) + n
        if state in _RAN and index is not None:
            totals.buckets[index] += n
            totals.buckets[-1] += total_ms
            totals.ran = True
        if state == StackState.SUCCEEDED and finished is not None and finished > totals.last_success:
            totals.last_success = finished
    return found


def _stack_families(stacks: dict[str, _StackTotals]) -> Iterable[Metric]:
    duration = HistogramMetricFamily(
        "deployer_stack_deploy_duration_seconds", "Wall time of each stack deploy that ran", labels=["stack"]
    )
    counted = CounterMetricFamily("deployer_stack_deployments", "Stack results by stack", labels=["stack", "result"])
    success = GaugeMetricFamily(
        "deployer_stack_last_success_timestamp_seconds", "When each stack last deployed successfully", labels=["stack"]
    )
    for name in sorted(stacks):
        totals = stacks[name]
        if totals.ran:
            *counts, total_ms = totals.buckets
            cumulative = list(itertools.accumulate(counts))
            buckets = [(_le(bound), cumulative[i]) for i, bound in enumerate(DURATION_BUCKETS)]
            duration.add_metric([name], [*buckets, ("+Inf", cumulative[-1])], sum_value=total_ms / 1000)
        for state, n in sorted(totals.results.items()):
            counted.add_metric([name, state], n)
        if totals.last_success:
            success.add_metric([name], _epoch(totals.last_success))
    return duration, counted, success


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def _json_field(raw: str | None, key: str) -> float | bool | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, int | float | bool) else None


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

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
from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from deployer import __version__
from deployer.model import DeploymentState, StackState
from deployer.state import StateStore

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "MULTIPROC_ENV",
    "WEBHOOK_DELIVERIES",
    "StateCollector",
    "registry",
    "render",
]

log = logging.getLogger("deployer.metrics")

#: set by deployer.web.gunicorn_settings before the web workers fork (prometheus_client reads it at import)
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: seconds: a stack is brought up in a few seconds to several minutes (health checks wait up to 10)
DURATION_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
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


def registry(store: StateStore, *, shipping: bool) -> CollectorRegistry:
    """What one web worker answers a scrape with: the state store's view and every worker's counters."""
    found = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(found)  # type: ignore[no-untyped-call]
    else:
        found.register(WEBHOOK_DELIVERIES)
    found.register(StateCollector(store, shipping=shipping))
    return found


def render(target: CollectorRegistry) -> bytes:
    return generate_latest(target)


class StateCollector(Collector):
    """Metrics read from the state store at scrape time: the same whichever web worker answers.

    With `shipping` (DEPLOYER_LOKI_URL set), how shipping the audit trail to Loki stands.
    """

    def __init__(self, store: StateStore, *, shipping: bool) -> None:
        self.store = store
        self.shipping = shipping
        #: the history's metrics and the last audit event id they were read at: every change to a deployment or
        #: a stack result is recorded with its event (deployer.state), so an unchanged id means unchanged history
        self._history: tuple[int, list[Metric]] = (-1, [])

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("deployer_build_info", "The deployer's version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        up = GaugeMetricFamily("deployer_state_store_up", "1 when the state store answered this scrape")
        try:
            with self.store.read() as db:
                (last_event,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM audit_events").fetchone()
                if last_event != self._history[0]:
                    self._history = (last_event, [*_history(db)])
                found = [*self._history[1], *_outboxes(db, now=time.time(), shipping=self.shipping)]
        except sqlite3.Error as error:
            log.warning("metrics: state store unreadable: %s", error)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from found


def _history(db: sqlite3.Connection) -> Iterable[Metric]:
    """What the deployments and stack results say: read again only when something was recorded."""
    deployments = CounterMetricFamily(
        "deployer_deployments", "Finished deployments by trigger and result", labels=["trigger", "result"]
    )
    finished = ",".join("?" * len(_FINISHED))
    for row in db.execute(
        f"SELECT trigger, state, COUNT(*) FROM deployments WHERE state IN ({finished}) GROUP BY trigger, state",  # noqa: S608
        [str(s) for s in _FINISHED],
    ):
        deployments.add_metric([row[0], row[1]], row[2])
    yield deployments

    yield from _stacks(db)


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

    meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('worker', 'loki', 'notify')").fetchall())
    beat = _json_field(meta.get("worker"), "at")
    if beat is not None:
        yield _gauge("deployer_worker_heartbeat_age_seconds", "Seconds since the deploy worker's last heartbeat",
                     max(0.0, now - beat))  # fmt: skip
    for key, name, what in (("loki", "deployer_audit_shipping_ok", "the last push of audit events to Loki"),
                            ("notify", "deployer_notifications_ok", "the last notification sent")):  # fmt: skip
        ok = _json_field(meta.get(key), "ok") if key != "loki" or shipping else None
        if ok is not None:
            yield _gauge(name, f"1 when {what} succeeded", 1.0 if ok else 0.0)


def _stacks(db: sqlite3.Connection) -> Iterable[Metric]:
    """Each stack's results, durations and last success, in one pass over the index that holds them."""
    bucket = " ".join(f"WHEN duration_ms <= {round(bound * 1000)} THEN {i}" for i, bound in enumerate(DURATION_BUCKETS))
    rows = db.execute(
        f"SELECT name, state, CASE {bucket} ELSE {len(DURATION_BUCKETS)} END AS bucket, COUNT(*), SUM(duration_ms),"  # noqa: S608 -- constants only
        " MAX(finished_at) FROM deployment_stacks INDEXED BY deployment_stacks_results"
        " WHERE state NOT IN ('pending', 'running') GROUP BY name, state, bucket"
    ).fetchall()
    results: dict[tuple[str, str], int] = {}
    durations: dict[str, list[float]] = {}  # per stack: counts in each bucket, then the sum in ms
    last: dict[str, str] = {}
    for name, state, index, n, total_ms, finished in rows:
        results[name, state] = results.get((name, state), 0) + n
        if state in _RAN and total_ms is not None:
            found = durations.setdefault(name, [0.0] * (len(DURATION_BUCKETS) + 2))
            found[index] += n
            found[-1] += total_ms
        if state == StackState.SUCCEEDED and finished is not None and finished > last.get(name, ""):
            last[name] = finished

    duration = HistogramMetricFamily(
        "deployer_stack_deploy_duration_seconds", "Wall time of each stack deploy that ran", labels=["stack"]
    )
    for name in sorted(durations):
        *counts, total_ms = durations[name]
        cumulative = list(itertools.accumulate(counts))
        buckets = [(_le(bound), cumulative[i]) for i, bound in enumerate(DURATION_BUCKETS)]
        duration.add_metric([name], [*buckets, ("+Inf", cumulative[-1])], sum_value=total_ms / 1000)
    yield duration

    counted = CounterMetricFamily("deployer_stack_deployments", "Stack results by stack", labels=["stack", "result"])
    for (name, state), n in sorted(results.items()):
        counted.add_metric([name, state], n)
    yield counted

    success = GaugeMetricFamily(
        "deployer_stack_last_success_timestamp_seconds", "When each stack last deployed successfully", labels=["stack"]
    )
    for name in sorted(last):
        success.add_metric([name], _epoch(last[name]))
    yield success


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

"""Read-only API: deployments, stacks, liveness, readiness and metrics."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from deployer.errors import PlanError
from deployer.report import metrics as metrics_
from deployer.web.context import Service
from deployer.web.manual import manual

__all__ = ["api"]

api = Blueprint("api", __name__)
api.register_blueprint(manual)  # under the same identity checks as the rest of /api

#: the worker is taken for dead when its heartbeat is older than this many seconds
WORKER_STALE = 30.0
#: below this much free space in the state directory /readyz says the disk is full
STATE_DISK_MIN_FREE = 1024 * 1024


@api.get("/api/deployments")
def deployments() -> ResponseReturnValue:
    limit = request.args.get("limit", default=20, type=int) or 20
    return jsonify(Service.current(current_app).store.deployments(limit=max(1, min(limit, 500))))


@api.get("/api/deployments/<deployment_id>")
def deployment(deployment_id: str) -> ResponseReturnValue:
    found = Service.current(current_app).store.deployment(deployment_id)
    if found is None:
        raise PlanError(f"no deployment {deployment_id!r}")
    return jsonify(found)


@api.get("/api/stacks")
def stacks() -> ResponseReturnValue:
    service = Service.current(current_app)
    store = service.store
    held, paused, drift = store.held(), store.paused(), store.drift()
    hosts = host_states(service)
    shaped = [
        {"name": r.name, "deployed_commit": r.last_good_commit, "state": r.last_state, "depends_on": list(r.depends_on),
         "held": held.get(r.name), "paused": r.name in paused, "drift": drift.get(r.name, []), "engine": r.engine,
         "docker_host": r.docker_host, "host": hosts.get(r.docker_host) if r.docker_host else None}
        for r in store.stacks()
    ]  # fmt: skip
    return jsonify(shaped)


@api.get("/api/branch")
def branch() -> ResponseReturnValue:
    """What the reconcile loop last concluded about the branch head: converged, queued, a retry due, or why not."""
    service = Service.current(current_app)
    found = service.queue.meta("reconcile")
    if not isinstance(found, dict):
        found = {"branch": service.settings.branch, "head": None, "next": "unknown", "why": "not checked yet",
                 "retry_at": None, "checked_at": None}  # fmt: skip
    return jsonify(found)


@api.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus text format: the state store read now, and every web worker's counters (deployer.report.metrics)."""
    return Response(Service.current(current_app).metrics.render(), content_type=metrics_.CONTENT_TYPE)


@api.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@api.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Ready when the state store answers, the mirror exists and the deploy worker's heartbeat is fresh."""
    service = Service.current(current_app)
    problems = []
    try:
        beat = service.queue.meta("worker")
    except Exception as error:  # noqa: BLE001 -- any store failure means not ready, said in the answer
        return jsonify(status="unready", problems=[f"state store: {error}"]), 503
    disk = _state_disk_problem(service.settings.state_dir)
    if disk:
        problems.append(disk)
    if not (service.settings.state_dir / "mirror.git" / "HEAD").exists():
        problems.append("repository mirror not fetched yet")
    if not isinstance(beat, dict) or time.time() - float(beat.get("at", 0)) > WORKER_STALE:
        problems.append("deploy worker not running")
    engine = service.queue.meta("engine")
    if not (isinstance(engine, dict) and engine.get("ok")):
        problems.append(f"docker engine not reachable: {engine.get('error') if isinstance(engine, dict) else '?'}")
    warnings = _fetch_warnings(service) + _shipping_warnings(service) + _host_warnings(service)
    if problems:
        return jsonify(status="unready", problems=problems, warnings=warnings), 503
    return jsonify(status="ready", warnings=warnings)


def _state_disk_problem(state_dir: Path) -> str | None:
    """A state directory that cannot take a write: deliveries get 503 and nothing starts until it can.

    A file is opened there for writing (unnamed: O_TMPFILE), because a filesystem ext4 turned read-only
    after an I/O error still says `rw` in statvfs; free space comes from statvfs.
    """
    try:
        with tempfile.TemporaryFile(dir=state_dir):
            pass
        found = os.statvfs(state_dir)
    except OSError as error:
        if error.errno == errno.EROFS:
            return f"state directory {state_dir} is on a read-only filesystem: nothing can be recorded"
        return f"state directory {state_dir} cannot be written: {error.strerror}"
    free = found.f_bavail * found.f_frsize
    if free < STATE_DISK_MIN_FREE:
        return f"state directory {state_dir} has {free // 1024} KiB free: recording may fail (disk full)"
    return None


def host_states(service: Service) -> dict[str, dict[str, Any]]:
    """Each other engine stacks run on (x-deployer.docker_host): {"ok", "error", "checked_at"} as the deploy
    worker last found it (every 30 s)."""
    found = service.queue.meta("hosts")
    if not isinstance(found, dict):
        return {}
    return {
        str(host): {"ok": bool(state.get("ok")), "error": state.get("error"), "checked_at": state.get("at")}
        for host, state in found.items() if isinstance(state, dict)
    }  # fmt: skip


def _host_warnings(service: Service) -> list[str]:
    """Another engine that does not answer fails its own stacks only: the deployer stays ready."""
    return [f"engine {host} not reachable: {state['error']} (its stacks fail until it answers)"
            for host, state in sorted(host_states(service).items()) if not state["ok"]]  # fmt: skip


def _fetch_warnings(service: Service) -> list[str]:
    """The deploy worker's last fetch of the branch failed (a remote down, or one that never answers): what
    the mirror holds still deploys by hand, nothing new arrives until a fetch works (retried with backoff)."""
    fetch = service.queue.meta("fetch")
    if isinstance(fetch, dict) and not fetch.get("ok"):
        return [f"{fetch.get('error')} (the deploy worker retries)"]
    return []


def _shipping_warnings(service: Service) -> list[str]:
    """What is wrong with shipping the audit trail to Loki or sending notifications: visible here, though
    deployments go on (ready)."""
    found = []
    notify = service.queue.meta("notify") if service.settings.notify_urls else None
    if isinstance(notify, dict) and not notify.get("ok"):
        found.append(f"notifications not sent: {notify.get('error')}")
    if not service.settings.loki_url:
        return found
    shipping = service.store.shipping()
    loki = service.queue.meta("loki")
    if isinstance(loki, dict) and not loki.get("ok"):
        age = shipping["oldest_age_s"]
        found.append(f"audit events not shipped to Loki: {loki.get('error')}; {shipping['waiting']} waiting"
                     + (f", the oldest for {age:.0f}s" if age is not None else ""))  # fmt: skip
    if shipping["set_aside"]:
        found.append(f"{shipping['set_aside']} audit events refused by Loki and set aside (deployer audit has them)")
    return found

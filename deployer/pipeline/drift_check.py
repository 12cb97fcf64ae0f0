"""The drift check use case: what each deployed stack runs now against what its last good deploy left.

One pass asks each engine once for every compose project's containers (deployer.apply.engines), compares
each deployed stack with the baseline its last good deploy recorded (deployer.plan.drift, pure), and records
every stack's findings in one transaction with a `stack.drifted` event for each stack whose drift changed
(new, different or gone). With DEPLOYER_DRIFT=repair a drifted stack's last good commit is queued again
through the one intake (trigger `drift`, its containers recreated), at most DEPLOYER_DRIFT_MAX_REPAIRS times
per stack in any hour (the flap guard), never for a paused stack, and never on an engine that did not
answer (drift is then unknown, and a repair could not run anyway).

A pass is skipped while a deployment is queued or running: containers come and go then by design.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from docker.errors import DockerException
from requests.exceptions import RequestException

from deployer.apply.engine import engine_name
from deployer.apply.engines import docker_env_for
from deployer.intake import submit
from deployer.model import Event, Intake, Told, Trigger
from deployer.pipeline.wiring import Deps
from deployer.plan.drift import Baseline, Finding, findings, group_by_project, unreachable
from deployer.queue import Queue
from deployer.report.targets import status_target
from deployer.state import DriftSubject

__all__ = ["DriftPass", "check_drift"]

log = logging.getLogger(__name__)

#: the window of the flap guard (seconds)
REPAIR_WINDOW = 3600.0


@dataclass(frozen=True)
class DriftPass:
    """What one drift check found: each checked stack's findings, the repairs it queued ({stack: deployment
    id}), the stacks whose drift changed, and why it checked nothing (a deployment under way), if so."""

    found: Mapping[str, list[Finding]] = field(default_factory=dict)
    repairs: Mapping[str, str] = field(default_factory=dict)
    changed: tuple[str, ...] = ()
    skipped: str | None = None


def check_drift(deps: Deps, *, now: float | None = None) -> DriftPass:
    """One drift check of every deployed compose stack; record it, and repair what DEPLOYER_DRIFT=repair allows."""
    at = time.time() if now is None else now
    if deps.store.busy():
        return DriftPass(skipped="a deployment is queued or running")
    subjects = [s for s in deps.store.drift_subjects() if s.baseline is not None and s.placement.engine == "compose"]
    by_host: dict[str | None, list[DriftSubject]] = {}
    for subject in subjects:
        by_host.setdefault(subject.placement.docker_host, []).append(subject)
    found: dict[str, list[Finding]] = {}
    for host, on_host in by_host.items():
        found |= _check_engine(deps, host, on_host)
    repairs = {}
    decisions: dict[str, str] = {}
    for subject in subjects:
        decisions[subject.name] = _decide(deps, subject, found[subject.name], now=at)
        if decisions[subject.name] == "queued":
            repairs[subject.name] = _repair(deps, subject, found[subject.name])
            decisions[subject.name] = f"queued {repairs[subject.name]}"
    changed = tuple(s.name for s in subjects if _identity(s.drift) != _identity([f.as_dict() for f in found[s.name]]))
    events = tuple(_drifted(s, found[s.name], decisions[s.name]) for s in subjects if s.name in changed)
    deps.store.record_drift({s.name: (s.deployment_id, [f.as_dict() for f in found[s.name]]) for s in subjects},
                            told=Told(events))  # fmt: skip
    for name in changed:
        if found[name]:
            log.warning("stack %s drifted: %s (%s)", name, "; ".join(f.detail for f in found[name][:3]),
                        decisions[name])  # fmt: skip
        else:
            log.info("stack %s: no drift any more", name)
    return DriftPass(found=found, repairs=repairs, changed=changed)


def _check_engine(deps: Deps, host: str | None, subjects: list[DriftSubject]) -> dict[str, list[Finding]]:
    """Each stack's findings on one engine: one request for every project's containers. A paused stack is
    stopped on purpose: nothing about it is drift."""
    try:
        projects = group_by_project(deps.backend.project_containers(host))
    except (DockerException, RequestException) as error:
        where = engine_name(docker_env_for(deps.settings.docker_env, host))
        said = " ".join(str(error).split())[:200] or type(error).__name__
        return {s.name: [] if s.paused else unreachable(f"{where}: {said}") for s in subjects}
    return {
        s.name: [] if s.paused else findings(Baseline.from_dict(s.baseline or {}), projects.get(s.name, []))
        for s in subjects
    }


def _decide(deps: Deps, subject: DriftSubject, found: list[Finding], *, now: float) -> str:
    """What is done about a stack's drift: "none", "report", "queued" (a repair), or why not repaired."""
    if not found:
        return "none"
    if deps.settings.drift != "repair":
        return "report"
    if any(f.kind == "unknown" for f in found):
        return "not repaired: the engine did not answer"
    limit = deps.settings.drift_max_repairs
    done = deps.store.drift_repairs(subject.name, since=now - REPAIR_WINDOW)
    if done >= limit:
        log.warning("stack %s: drift not repaired: %d repairs in the last hour (DEPLOYER_DRIFT_MAX_REPAIRS=%d)",
                    subject.name, done, limit)  # fmt: skip
        return f"not repaired: {done} repairs in the last hour (DEPLOYER_DRIFT_MAX_REPAIRS={limit})"
    return "queued"


def _repair(deps: Deps, subject: DriftSubject, found: list[Finding]) -> str:
    """Queue the stack's last good commit again, its containers recreated; return the deployment id."""
    intake = Intake(trigger=Trigger.DRIFT, ref=subject.commit, commit=subject.commit, actor="deployer",
                    reason=f"drift: {found[0].detail}", stacks=(subject.name,), force=True)  # fmt: skip
    enqueued = submit(Queue(deps.store), deps.settings, intake, target=status_target(deps.settings))
    log.warning("stack %s drifted: repair queued as %s (its last good commit %s)", subject.name,
                enqueued.deployment_id, subject.commit[:12])  # fmt: skip
    return enqueued.deployment_id


def _identity(found: object) -> list[tuple[str, str, str]]:
    """What makes drift the same drift: kinds, services and containers, not details (a status' "3 minutes ago")."""
    if not isinstance(found, list | tuple):
        return []
    return sorted(
        (str(f.get("kind")), str(f.get("service")), str(f.get("container"))) for f in found if isinstance(f, dict)
    )


def _drifted(subject: DriftSubject, found: list[Finding], decision: str) -> Event:
    result = "unknown" if any(f.kind == "unknown" for f in found) else "drifted" if found else "converged"
    fields: dict[str, Any] = {
        "deployment_id": subject.deployment_id, "commit": subject.commit, "stack": subject.name,
        "trigger": "drift", "result": result, "findings": [f.as_dict() for f in found], "repair": decision,
    }  # fmt: skip
    return Event("stack.drifted", fields)

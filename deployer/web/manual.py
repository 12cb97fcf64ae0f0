"""POST /api/deployments and POST /api/stacks/<name>/release: a person's requests, through the one intake.

Checked before anything is queued: the body's shape (400), the ref (404), the stacks (422). A
request deploys exactly what it names, at the commit its ref resolves to now, even an older one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from deployer.errors import EventError, PlanError, UnknownStackError
from deployer.intake import submit
from deployer.model import Intake, Trigger
from deployer.plan.fields import STACK_NAME
from deployer.report.targets import status_target
from deployer.runner import SubprocessRunner
from deployer.web import refs
from deployer.web.context import Service

__all__ = ["manual", "request_redeploy"]

manual = Blueprint("manual", __name__)
_FIELDS = {"stacks": list, "ref": str, "reason": str, "force": bool}
_MAX_REASON = 500


@manual.post("/api/deployments")
def redeploy() -> ResponseReturnValue:
    deployment_id, commit = request_redeploy(_body())
    return jsonify(deployment_id=deployment_id, commit=commit), 202


def request_redeploy(body: Mapping[str, Any]) -> tuple[str, str]:
    """Check a redeploy request (the JSON body's fields, also the pages' form) and queue it: (deployment id, commit)."""
    _check(body)
    service = Service.current(current_app)
    runner = SubprocessRunner()
    ref = body.get("ref") or service.settings.branch
    commit = refs.resolve(service.settings, runner, ref)
    stacks = tuple(body.get("stacks") or ())
    unknown = sorted(set(stacks) - refs.stacks_at(service.settings, runner, commit))
    if unknown:
        raise UnknownStackError(f"stacks: no such stack at {commit[:12]}: {', '.join(unknown)}")
    intake = Intake(trigger=Trigger.MANUAL, ref=ref, commit=commit, actor=_actor(), reason=body.get("reason"),
                    stacks=stacks, force=bool(body.get("force")))  # fmt: skip
    enqueued = submit(service.queue, service.settings, intake, target=status_target(service.settings))
    return enqueued.deployment_id, commit


@manual.post("/api/stacks/<name>/release")
def release(name: str) -> ResponseReturnValue:
    service = Service.current(current_app)
    if name not in service.store.held() and name not in {r.name for r in service.store.stacks()}:
        raise PlanError(f"no stack {name!r}")
    released = service.store.release([name])
    head = refs.resolve(service.settings, SubprocessRunner(), service.settings.branch)
    intake = Intake(trigger=Trigger.MANUAL, ref=service.settings.branch, commit=head, actor=_actor(),
                    reason=f"release {name}", stacks=(name,))  # fmt: skip
    enqueued = submit(service.queue, service.settings, intake, target=status_target(service.settings))
    return jsonify(deployment_id=enqueued.deployment_id, released=bool(released), commit=head), 202


def _body() -> dict[str, Any]:
    """The JSON object of the request (empty is allowed); request_redeploy checks its fields."""
    if not request.get_data(cache=True).strip():
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise EventError('body is not a JSON object: send {"stacks", "ref", "reason", "force"}')
    return body


def _check(body: Mapping[str, Any]) -> None:
    """Every field known and of the expected type, the stack names well-formed, the reason not too long."""
    for key, value in body.items():
        kind = _FIELDS.get(key)
        if kind is None:
            raise EventError(f"{str(key)[:40]}: unknown field (known: {', '.join(_FIELDS)})")
        if value is not None and not isinstance(value, kind):
            raise EventError(f"{key}: expected a {kind.__name__}")
    for index, stack in enumerate(body.get("stacks") or ()):
        if not isinstance(stack, str) or not STACK_NAME.fullmatch(stack):
            raise EventError(f"stacks[{index}]: not a stack name")
    if len(body.get("reason") or "") > _MAX_REASON:
        raise EventError(f"reason: longer than {_MAX_REASON} characters")


def _actor() -> str | None:
    identity = getattr(g, "identity", None)
    return getattr(identity, "username", None)

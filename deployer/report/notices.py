"""What an audit event tells the people watching, and in which words: pure (deployer.report.notify sends it).

Which events tell what:

- `stack.failed`: a failure; `stack.rolled_back`: a rollback;
- `deployment.finished` failed with no stack failed or rolled back (the deployer could not fetch or
  plan, or turned the push away): a failure of the deployment as a whole;
- `stack.succeeded`: a recovery when the stack's last outcome was a failure or a rollback, else a
  success; a succeeded deployment recovers the deployment as a whole (told as a recovery only).

The same failure (kind, stack, error) is told at most once an hour, judged by the events' own times so
that a catch-up after an outage judges as it happened; a success forgets the stack's failures, so a
stack that breaks again is told again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

__all__ = ["BAD", "FAILURE", "RECOVERY", "ROLLBACK", "SUCCESS", "SUPPRESS_FOR", "Memory", "Notice", "judge",
           "message", "one_line", "scrub"]  # fmt: skip

FAILURE, ROLLBACK, RECOVERY, SUCCESS = "failure", "rollback", "recovery", "success"
#: the same failure of the same stack is told again only this long after it was last told (seconds)
SUPPRESS_FOR = 3600.0
#: failures remembered for suppression, at most (the oldest are forgotten first)
MAX_REMEMBERED = 200
#: the error shown in a notification, at most this many characters, on one line
ERROR_LENGTH = 300

_TITLE: Final = {FAILURE: "failed", ROLLBACK: "rolled back", RECOVERY: "recovered", SUCCESS: "deployed"}
#: the events that say a stack is in a bad way, and the outcome each leaves it in
BAD: Final = {"stack.failed": "failed", "stack.rolled_back": "rolled_back"}
_CREDENTIALS = re.compile(r"//[^/@\s]*@")


@dataclass(frozen=True)
class Notice:
    """What one event tells: its kind, and the stack it is about (None: the deployment as a whole)."""

    kind: str
    stack: str | None
    deployment_id: str | None
    commit: str | None
    reason: str | None = None
    error: str | None = None
    action: str | None = None  # a stack's: deploy or remove


@dataclass(frozen=True)
class Memory:
    """What the notifier remembers between events, kept in meta so that it survives restarts.

    `outcomes`: each stack ("" for the deployment as a whole) whose last outcome was bad, and that
    outcome; `told`: per stack, each failure told (a digest of kind and error) and when (event time).
    """

    outcomes: Mapping[str, str] = field(default_factory=dict)
    told: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def judge(fields: Mapping[str, Any], memory: Memory, *, on: Collection[str], at: float,
          stack_failed: bool = False) -> tuple[Notice | None, Memory]:  # fmt: skip
    """What the event with `fields`, recorded at `at` (epoch), tells given `memory`, and the memory after.

    `stack_failed` says whether a stack of the deployment failed or rolled back (for its
    `deployment.finished`). Whatever `on` chooses, outcomes are remembered: a recovery is a recovery
    even when the failure before it was not told.
    """
    name, result = fields.get("event"), fields.get("result")
    stack = fields.get("stack") if str(name).startswith("stack.") else None
    scope = stack or ""
    notice = Notice("", stack, fields.get("deployment_id"), fields.get("commit"), fields.get("reason"),
                    one_line(fields.get("error")), fields.get("action"))  # fmt: skip
    if name in BAD or (name == "deployment.finished" and result == "failed" and not stack_failed):
        kind = ROLLBACK if name == "stack.rolled_back" else FAILURE
        outcomes = {**memory.outcomes, scope: BAD.get(str(name), "failed")}
        digest = _digest(kind, notice.error or "")
        seen = {k: t for k, t in memory.told.get(scope, {}).items() if at - t < SUPPRESS_FOR}
        if kind not in on or digest in seen:
            return None, Memory(outcomes, {**memory.told, scope: seen})
        told = {**memory.told, scope: {**seen, digest: at}}
        return replace(notice, kind=kind), Memory(outcomes, _bounded(told))
    if name == "stack.succeeded" or (name == "deployment.finished" and result == "succeeded"):
        recovered = scope in memory.outcomes
        after = Memory({k: v for k, v in memory.outcomes.items() if k != scope},
                       {k: v for k, v in memory.told.items() if k != scope})  # fmt: skip
        kind = RECOVERY if recovered and RECOVERY in on else SUCCESS
        if kind not in on or (stack is None and kind != RECOVERY):  # a deployment's success: told per stack
            return None, after
        return replace(notice, kind=kind, reason=None, error=None), after
    return None, memory


def message(notice: Notice, deployment: Mapping[str, Any] | None, *, public_url: str | None) -> tuple[str, str]:
    """The title and body telling `notice`; `deployment` (the recorded one, if any) says who and how."""
    about = f"stack {notice.stack}" if notice.stack else "deployment"
    lines = []
    if notice.commit:
        lines.append(f"commit: {notice.commit[:12]}")
    if notice.deployment_id:
        lines.append(f"deployment: {notice.deployment_id}")
    if deployment:
        by = f" by {deployment['actor']}" if deployment.get("actor") else ""
        lines.append(f"trigger: {deployment.get('trigger')}{by}")
    if notice.error or notice.reason:
        lines.append("error: " + ": ".join(str(part) for part in (notice.reason, notice.error) if part))
    if public_url and notice.deployment_id:
        lines.append(f"{public_url.rstrip('/')}/deployments/{notice.deployment_id}")
    what = "removed" if notice.kind == SUCCESS and notice.action == "remove" else _TITLE[notice.kind]
    return f"deployer: {about} {what}", "\n".join(lines)


def one_line(text: object) -> str | None:
    """`text` on one line of at most ERROR_LENGTH characters (None stays None)."""
    if text is None:
        return None
    flat = " ".join(str(text).split())
    return flat if len(flat) <= ERROR_LENGTH else flat[: ERROR_LENGTH - 1] + "…"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` without credentials in URLs and without any of `secrets` (each replaced by `***`)."""
    text = _CREDENTIALS.sub("//***@", text)
    for value in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _digest(kind: str, error: str) -> str:
    return hashlib.sha256(f"{kind}\n{error}".encode()).hexdigest()[:16]


def _bounded(told: Mapping[str, Mapping[str, float]]) -> dict[str, Mapping[str, float]]:
    """`told` without its oldest entries beyond MAX_REMEMBERED."""
    entries = sorted(((t, scope, k) for scope, seen in told.items() for k, t in seen.items()), reverse=True)
    kept: dict[str, dict[str, float]] = {}
    for t, scope, k in entries[:MAX_REMEMBERED]:
        kept.setdefault(scope, {})[k] = t
    return dict(kept)

"""The audit trail as people read it: one event's JSON line (as recorded in the state store's
`audit_events`, deployer.state) turned into a line of text for `deployer audit`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_event"]

#: shown after the time, the event and the deployment, in this order, when present
_FIELDS = ("stack", "stacks", "actor", "trigger", "ref", "result", "reason", "duration_ms", "files", "error")


def format_event(fields: Mapping[str, Any]) -> str:
    """`time event deployment commit key=value ...`; names and commits only (events never hold secrets)."""
    commit = str(fields.get("commit") or "-")[:12]
    parts = [str(fields.get("time", "")), str(fields.get("event", "")), str(fields.get("deployment_id") or "-"), commit]
    for key in _FIELDS:
        value = fields.get(key)
        if value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        parts.append(f"{key}={text!r}" if " " in text else f"{key}={text}")
    return " ".join(parts)

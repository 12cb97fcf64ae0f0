"""The audit trail: one JSON line per event, written durably to a local journal first.

Shipping the journal to Loki reads from this file, so an event written here survives Loki or the
deployer being down. Callers pass names, commits and errors, never secret values.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deployer.model import rfc3339

__all__ = ["Journal"]

log = logging.getLogger(__name__)


class Journal:
    """Appends audit events to a JSON-lines file, fsynced, one write per event."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        #: fsync each event (power-loss safe); without, an event survives any process crash, as the
        #: state store's commits do (WAL, synchronous=NORMAL). The web workers, on the hot path, skip it.
        self.fsync = fsync
        self._lock = threading.Lock()

    def record(self, event: str, *, deployment_id: str, commit: str | None, **fields: Any) -> None:
        """Append one event; a journal that cannot be written is logged, never raised."""
        self.record_many(event, [{"deployment_id": deployment_id, "commit": commit, **fields}])

    def record_many(self, event: str, items: Sequence[Mapping[str, Any]]) -> None:
        """Append one event per item (each with deployment_id and commit) in one write and one fsync."""
        now = rfc3339()
        lines = []
        for item in items:
            line = {"event": event, "deployment_id": item["deployment_id"], "commit": item["commit"], "time": now}
            line.update({key: value for key, value in item.items() if value is not None and key not in line})
            lines.append(json.dumps(line, separators=(",", ":"), default=str) + "\n")
        if not lines:
            return
        data = "".join(lines).encode()
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, data)
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as error:
            log.error("audit journal %s not written: %s", self.path, error)

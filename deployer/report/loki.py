"""Shipping the audit trail to Loki: `POST /loki/api/v1/push` with the recorded lines as they are.

Each event goes out with the timestamp and line fixed when it was recorded (deployer.state), in one
stream labelled `service_name="deployer"` and `source="audit"`: commit, stack and ids stay in the
line. A resend after a crash is therefore the same entry, which Loki drops as a duplicate: the
shipper marks a batch shipped only after Loki's 2xx, and relies on that for "once in effect".
Connection errors, timeouts, 429, 5xx and a wrong token, tenant or URL (401, 403, 404) are retried,
not before a Retry-After Loki (or the proxy in front of it) sends; a 400 or 413 is not (Loki says
why: that batch is set aside).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from deployer.report.forges import GiveUp, Retry, retry_error
from deployer.state import AuditEvent, StateStore

__all__ = ["LABELS", "MAX_AGE_NS", "LokiClient", "push_body", "ship_batch"]

log = logging.getLogger("deployer.loki")

#: the stream's labels: few and bounded (protocols.md 4); everything else is in the line
LABELS = {"service_name": "deployer", "source": "audit"}
#: Loki refuses entries older than this by default (reject_old_samples_max_age = 7d)
MAX_AGE_NS = 7 * 24 * 3600 * 1_000_000_000
TIMEOUT = 10.0


def push_body(events: Sequence[AuditEvent]) -> dict[str, Any]:
    """The JSON push body: one stream, values [timestamp in ns as a string, the recorded line]."""
    return {"streams": [{"stream": dict(LABELS), "values": [[str(e.ts_ns), e.line] for e in events]}]}


@dataclass
class LokiClient:
    """One Loki: its push URL, tenant and credentials (basic auth or a bearer token)."""

    url: str
    tenant: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def push_url(self) -> str:
        return self.url.rstrip("/") + "/loki/api/v1/push"

    def headers(self) -> dict[str, str]:
        found = {"Content-Type": "application/json", "User-Agent": "deployer"}
        if self.tenant:
            found["X-Scope-OrgID"] = self.tenant
        if self.token:
            found["Authorization"] = f"Bearer {self.token}"
        elif self.user is not None:
            pair = f"{self.user}:{self.password or ''}".encode()
            found["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return found

    def push(self, events: Sequence[AuditEvent]) -> None:
        """Send one batch; raise Retry (try later) or GiveUp (Loki refuses this batch as it is: 400, 413).

        A 401, 403 or 404 is retried like an outage: the batch is fine, the configuration is not, and the
        events must ship once the operator fixes it (the problem shows in /readyz, /metrics and the log).
        """
        try:
            response = self.session.post(self.push_url, json=push_body(events), headers=self.headers(),
                                         timeout=TIMEOUT)  # fmt: skip
        except requests.RequestException as error:
            raise Retry(f"{type(error).__name__}: {error}") from error
        if response.status_code in (400, 413):  # this batch, as it is: Loki says why
            raise GiveUp(f"HTTP {response.status_code}: {response.text.strip()[:300]}")
        if not response.ok:  # 429, 5xx; and 401, 403, 404: a wrong token, tenant or URL, fixed by the operator
            raise retry_error(response, f"HTTP {response.status_code}: {response.text.strip()[:200]}")


def ship_batch(store: StateStore, client: LokiClient, *, now_ns: int, limit: int = 500) -> int:
    """Ship the oldest waiting events once; return how many were shipped (0: nothing waiting).

    Events older than Loki's window are set aside first (Loki would refuse the whole batch), and said
    in the log. A 400 sets the batch aside with Loki's message; Retry propagates to the caller's backoff.
    """
    batch = store.unshipped(limit=limit)
    if not batch:
        return 0
    old = [e.id for e in batch if now_ns - e.ts_ns > MAX_AGE_NS - 3600 * 1_000_000_000]
    if old:
        log.error("%d audit events older than Loki accepts (7 days) set aside, not shipped (ids %d-%d);"
                  " they stay in `deployer audit`", len(old), old[0], old[-1])  # fmt: skip
        store.shipped(old, error="older than Loki's 7-day window (reject_old_samples_max_age)")
        set_aside = set(old)
        batch = [e for e in batch if e.id not in set_aside]
        if not batch:
            return 0
    try:
        client.push(batch)
    except GiveUp as error:
        log.error("Loki refused %d audit events (ids %d-%d), set aside: %s", len(batch), batch[0].id, batch[-1].id,
                  error)  # fmt: skip
        store.shipped([e.id for e in batch], error=str(error))
        return 0
    store.shipped([e.id for e in batch])
    return len(batch)

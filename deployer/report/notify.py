"""Notifications: failures, rollbacks and recoveries told to people through Apprise (ntfy, Slack, Discord,
Matrix, email ...), read from the audit trail as the Loki shipper reads it (what tells what:
deployer.report.notices).

The notifier runs beside the deploy loop with its own connection and reads recorded events after a
cursor kept in the meta table, so it never stands in a deployment's way, and a restart resumes where it
stopped (a cursor by id does not mind events pruned meanwhile). Each event goes to each URL once in
effect: it is done when every URL took it (a retry goes only to those that did not), or when it has
failed for an hour (said in the log: one dead URL must not hold back the others for ever). URLs carry
tokens: only their schemes are ever logged, and what is sent and logged is scrubbed of every
configured secret.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

import apprise

from deployer.errors import ConfigError, StateUnavailableError
from deployer.report.forges import Retry
from deployer.report.notices import (
    BAD,
    FAILURE,
    RECOVERY,
    ROLLBACK,
    SUCCESS,
    Memory,
    Notice,
    judge,
    message,
    scrub,
)
from deployer.settings import Settings
from deployer.state import AuditEvent, StateStore

__all__ = ["Notifier"]

log = logging.getLogger("deployer.notify")

#: a notification a URL has not taken for this long is given up (seconds): the URL is down, the rest go on
GIVE_UP_AFTER = 3600.0
#: backoff while a URL cannot take a notification: 1, 2, 4 ... seconds, at most this
MAX_BACKOFF = 60.0
#: meta keys: the notifier's own state, and how it stands (read by /readyz and /metrics)
STATE_KEY, HEALTH_KEY = "notifier", "notify"

_TYPE: Final = {FAILURE: apprise.NotifyType.FAILURE, ROLLBACK: apprise.NotifyType.WARNING,
                RECOVERY: apprise.NotifyType.SUCCESS, SUCCESS: apprise.NotifyType.SUCCESS}  # fmt: skip
_WORDS = re.compile(r"^[a-z_.-]+$")


@dataclass(frozen=True)
class _Target:
    """One configured URL: its scheme (what the log may say), a digest (what meta may keep), its sender."""

    scheme: str
    digest: str
    sender: apprise.Apprise


class Notifier:
    """Tells `urls` what the audit trail in `store` says, as `on` chooses; `clock` and the wait in `run`
    can be replaced (tests).

    Its state, in meta "notifier": the cursor (the last event done), the memory (see Memory), the
    notification being sent (`pending`: its event, since when, the URLs that took it) and the URLs
    given up on (`down`: digests, never URLs). A URL that is down costs each later event one try
    and never holds the cursor again, until it takes a notification.
    """

    def __init__(self, store: StateStore, urls: Collection[str], *, on: Collection[str], public_url: str | None = None,
                 secrets: Iterable[str] = (), clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        """Raises ConfigError naming the entry (never its value) when Apprise cannot send to a URL."""
        self.store, self.on, self.public_url, self.clock = store, frozenset(on), public_url, clock
        self.targets = [_target(i, url) for i, url in enumerate(urls, 1)]
        self.secrets = tuple(secrets) + tuple(part for url in urls for part in _url_secrets(url))
        found = store.meta(STATE_KEY)
        if isinstance(found, dict):
            self.state: dict[str, Any] = found
        else:  # first start: from now on, knowing which stacks are failing now
            bad = {r.name: r.last_state for r in store.stacks() if r.last_state in BAD.values()}
            self.state = {"cursor": _last_event_id(store), "outcomes": bad, "told": {}, "pending": None, "down": []}
            store.set_meta(STATE_KEY, self.state)
        #: why the notifier is not well (a URL given up on), for meta "notify"
        self.problem = self._down()
        self._said: tuple[bool, str | None] | None = None
        log.info("notifying of %s through %d URL(s): %s", ", ".join(sorted(self.on)), len(self.targets),
                 ", ".join(t.scheme for t in self.targets))  # fmt: skip

    @classmethod
    def from_settings(
        cls, store: StateStore, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> Notifier:
        """The notifier DEPLOYER_NOTIFY_URLS and DEPLOYER_NOTIFY_ON ask for; raises ConfigError as __init__."""
        secrets = (settings.webhook_secret, settings.forge_token, settings.loki_password, settings.loki_token,
                   settings.authentik_client_secret)  # fmt: skip
        return cls(store, settings.notify_urls, on=settings.notify_on, public_url=settings.public_url,
                   secrets=[s for s in secrets if s], clock=clock)  # fmt: skip

    def deliver(self, *, limit: int = 100) -> int:
        """Tell what waits, oldest first; return how many events were done (0: none waiting).

        Raises Retry when a notification could not be sent to every URL yet (the cursor stays on it).
        The state is written after each notification sent and after the batch: a crash in between
        judges again only events that sent nothing.
        """
        events = self.store.events(after_id=int(self.state["cursor"]), limit=limit)
        for event in events:
            self._one(event)
        if events:
            self.store.set_meta(STATE_KEY, self.state)
        return len(events)

    def run(self, stop: threading.Event, *, wait: Callable[[float], object] | None = None) -> None:
        """Deliver until `stop` is set, backing off 1 s doubling to 60 s while a URL cannot take a
        notification; how it stands goes to meta "notify" ({ok, error, at}) at least every 5 s."""
        pause = wait or stop.wait
        delay, last = 0.0, 0.0
        while not stop.is_set():
            try:
                done = self.deliver()
            except Retry as error:
                delay = min(max(1.0, delay * 2), MAX_BACKOFF)
                log.warning("notification not sent (%s); retrying in %.0fs", error, delay)
                last = self._health(ok=False, error=str(error), last=0.0)
                pause(delay)
                continue
            except StateUnavailableError as error:  # sent and not marked: sent again once it can be (said)
                log.warning("notifications wait for the state store: %s", error.message)
                pause(5.0)
                continue
            except Exception:  # the notifier must outlive any one bad event
                log.exception("notifying failed")
                last = self._health(ok=False, error="the notifier failed: see the worker's log", last=0.0)
                pause(5.0)
                continue
            delay = 0.0
            last = self._health(ok=self.problem is None, error=self.problem, last=last)
            if done == 0:
                pause(1.0)

    def _one(self, event: AuditEvent) -> None:
        fields = event.fields
        failed = fields.get("event") == "deployment.finished" and self._stack_failed(fields.get("deployment_id"))
        memory = Memory(self.state["outcomes"], self.state["told"])
        notice, after = judge(fields, memory, on=self.on, at=event.ts_ns / 1e9, stack_failed=failed)
        if notice is not None:
            self._send(event.id, notice)
        self.state = {**self.state, "cursor": event.id, "outcomes": dict(after.outcomes), "told": dict(after.told),
                      "pending": None}  # fmt: skip
        if notice is not None:
            self.store.set_meta(STATE_KEY, self.state)

    def _send(self, event_id: int, notice: Notice) -> None:
        """Send to every URL that has not taken it yet; raises Retry while one that is not down cannot,
        for at most GIVE_UP_AFTER (then that URL is down)."""
        deployment = self.store.deployment(notice.deployment_id) if notice.deployment_id else None
        title, body = (scrub(text, self.secrets) for text in message(notice, deployment, public_url=self.public_url))
        pending = self.state.get("pending") or {}
        if pending.get("event") != event_id:
            pending = {"event": event_id, "since": self.clock(), "sent": []}
        down = set(self.state.get("down") or ()) & {t.digest for t in self.targets}  # URLs since removed: forgotten
        failing, errors = [], []
        for target in (t for t in self.targets if t.digest not in pending["sent"]):
            error = _send_one(target, title=title, body=body, kind=notice.kind)
            if error is None:
                pending["sent"].append(target.digest)
                down.discard(target.digest)
            elif target.digest in down:
                log.warning("notification %r not sent to a URL given up on: %s", title, scrub(error, self.secrets))
            else:
                failing.append(target.digest)
                errors.append(scrub(error, self.secrets))
        if failing and self.clock() - float(pending["since"]) < GIVE_UP_AFTER:
            self.state = {**self.state, "pending": pending, "down": sorted(down)}
            self.store.set_meta(STATE_KEY, self.state)
            raise Retry("; ".join(errors))
        if failing:
            log.error("notification %r (audit event %d) not sent for an hour, given up: %s", title, event_id,
                      "; ".join(errors))  # fmt: skip
            down.update(failing)
        self.state = {**self.state, "down": sorted(down)}
        self.problem = self._down()

    def _down(self) -> str | None:
        """What the URLs given up on make of the notifier's health (schemes only: URLs hold tokens)."""
        down = [t.scheme for t in self.targets if t.digest in (self.state.get("down") or ())]
        return f"{len(down)} notification URL(s) failing for over an hour: {', '.join(down)}" if down else None

    def _stack_failed(self, deployment_id: object) -> bool:
        if not isinstance(deployment_id, str):
            return False
        return any(self.store.events(deployment=deployment_id, event=name, limit=1) for name in BAD)

    def _health(self, *, ok: bool, error: str | None, last: float) -> float:
        """Say how the notifier stands in meta "notify" when that changed or 5 s after the last time."""
        now = time.time()
        if last and now - last < 5.0 and (ok, error) == self._said:
            return last
        self._said = (ok, error)
        self.store.set_meta(HEALTH_KEY, {"ok": ok, "error": error, "at": now})
        return now


class _Said(logging.Handler):
    """Apprise's warnings while one notification is sent: the only place it says why a send failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _send_one(target: _Target, *, title: str, body: str, kind: str) -> str | None:
    """Send one notification to one URL; return why it was not sent, or None."""
    said = _Said()
    logger = logging.getLogger("apprise")
    logger.addHandler(said)
    try:
        sent = target.sender.notify(body=body, title=title, notify_type=_TYPE[kind])
    finally:
        logger.removeHandler(said)
    if sent:
        return None
    return f"{target.scheme}: {said.lines[-1] if said.lines else 'not sent'}"


def _target(position: int, url: str) -> _Target:
    scheme = url.partition("://")[0].lower()
    sender = apprise.Apprise()
    if not sender.add(url):
        raise ConfigError(f"DEPLOYER_NOTIFY_URLS: entry {position} ({scheme}://...) is not a URL Apprise can send to")
    return _Target(scheme, hashlib.sha256(url.encode()).hexdigest()[:16], sender)


def _url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be tokens: its password, and the user, path segments, query values
    and a host that is no DNS name (Slack's and Discord's URLs start with a token) that look like one:
    12 characters or more, not just lower-case words (a topic named "deploys" is no secret)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2].partition(":")[0]
    found = [parts.username or "", *parts.path.split("/"), *(v for _, v in urllib.parse.parse_qsl(parts.query))]
    found += [] if "." in host else [host]
    tokens = [part for part in map(urllib.parse.unquote, found) if len(part) >= 12 and not _WORDS.match(part)]
    return [urllib.parse.unquote(parts.password), *tokens] if parts.password else tokens


def _last_event_id(store: StateStore) -> int:
    with store.read() as db:
        row = db.execute("SELECT MAX(id) AS id FROM audit_events").fetchone()
    return int(row["id"] or 0)

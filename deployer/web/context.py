"""What a web process holds: settings, its own state-store connection (the audit trail lives there), the queue."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask

from deployer.intake import submit
from deployer.model import Intake, Trigger
from deployer.previews import Previews, Queued
from deployer.queue import Enqueued, Queue
from deployer.receive import PullRequestEvent, PushEvent
from deployer.report import metrics
from deployer.report.targets import status_target
from deployer.settings import Settings
from deployer.state import StateStore

__all__ = ["Service"]

_KEY = "deployer.service"


@dataclass(frozen=True)
class Service:
    settings: Settings
    store: StateStore
    queue: Queue
    metrics: metrics.Metrics
    _known: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Service:
        store = StateStore(settings.state_dir / "state.db", durable=False)  # deliveries: see StateStore
        return cls(settings, store, Queue(store), metrics.Metrics(store, shipping=bool(settings.loki_url)))

    def attach(self, app: Flask) -> None:
        app.extensions[_KEY] = self

    @staticmethod
    def current(app: Flask) -> Service:
        service: Service = app.extensions[_KEY]
        return service

    def object_format(self) -> str | None:
        """The repository's object format ("sha1", "sha256") once the deploy worker has fetched it; else None."""
        known = self._known.get("object_format")
        if known is None:
            found = self.queue.meta("object_format")
            known = found if found in ("sha1", "sha256") else None
            if known is not None:  # it never changes for a repository: read once per process
                self._known["object_format"] = known
        return known

    def enqueue_push(self, event: PushEvent) -> Enqueued:
        """Queue a push with its delivery id and its `pending` status, in one transaction."""
        target = status_target(self.settings, repo=event.repo, api_url=event.api_url)
        intake = Intake(trigger=Trigger.WEBHOOK, ref=event.ref, commit=event.after, actor=event.actor,
                        reason=f"push by {event.actor}" if event.actor else "push",
                        delivery=(str(event.forge), event.delivery_id) if event.delivery_id else None)  # fmt: skip
        return submit(self.queue, self.settings, intake, target=target)

    def enqueue_preview(self, event: PullRequestEvent) -> Queued:
        """Queue a plan preview of a pull request's head (never a deployment); its status comes once planned."""
        target = status_target(self.settings, repo=event.repo, api_url=event.api_url)
        return Previews(self.store).enqueue(
            forge=str(event.forge),
            target=target,
            number=event.number,
            head=event.head,
            head_ref=event.head_ref,
            base_branch=event.base_branch,
            source_branch=event.source_branch,
            from_fork=event.from_fork,
            actor=event.actor,
            title=event.title,
            delivery_id=event.delivery_id,
        )

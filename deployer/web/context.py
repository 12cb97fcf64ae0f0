"""What a web process holds: settings, its own state-store connection, the queue, the journal."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask

from deployer.model import new_deployment_id
from deployer.queue import Enqueued, Queue
from deployer.receive import PushEvent
from deployer.report import Journal
from deployer.report.statuses import describe_queued
from deployer.report.targets import status_target, target_url
from deployer.settings import Settings
from deployer.state import StateStore

__all__ = ["Service"]

_KEY = "deployer.service"


@dataclass(frozen=True)
class Service:
    settings: Settings
    store: StateStore
    queue: Queue
    journal: Journal
    _known: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Service:
        store = StateStore(settings.state_dir / "state.db")
        return cls(settings, store, Queue(store), Journal(settings.state_dir / "audit.jsonl", fsync=False))

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
        deployment_id = new_deployment_id()
        pending = describe_queued(event.after, deployment_id, target_url=target_url(self.settings, deployment_id))
        enqueued = self.queue.enqueue(
            commit=event.after, ref=event.ref, trigger="webhook", actor=event.actor, target=target, pending=pending,
            delivery=(str(event.forge), event.delivery_id) if event.delivery_id else None,
            deployment_id=deployment_id,
        )  # fmt: skip
        if enqueued.duplicate_of is None:
            self.journal.record("deployment.queued", deployment_id=deployment_id, commit=event.after,
                                trigger="webhook", actor=event.actor, ref=event.ref, forge=str(event.forge),
                                delivery_id=event.delivery_id)  # fmt: skip
        return enqueued

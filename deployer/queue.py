"""The durable deployment queue, webhook deliveries seen, and the commit-status outbox.

All of it lives in the state store's SQLite database, so a queued deployment or an unsent status
survives a crash, and any number of web processes can enqueue while one worker drains.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from deployer.model import (
    NOTHING_TOLD,
    TRANSIENT,
    Attempt,
    CommitStatus,
    DeploymentState,
    Intake,
    Reason,
    StatusTarget,
    Told,
    new_deployment_id,
    rfc3339,
)
from deployer.state import StateStore, write_told

__all__ = ["UNDELIVERED", "Claim", "Enqueued", "Queue", "StatusTarget", "Undelivered"]

#: statuses due (next_attempt <= ?), oldest first (LIMIT ?), none behind an older undelivered one of its
#: commit and context; the state store's status_outbox_waiting index answers the NOT EXISTS
UNDELIVERED = (
    "SELECT * FROM status_outbox o WHERE done_at IS NULL AND NOT EXISTS ("
    " SELECT 1 FROM status_outbox p WHERE p.done_at IS NULL AND p.sha = o.sha"
    " AND p.context = o.context AND p.repo = o.repo AND p.id < o.id)"
    " AND next_attempt <= ? ORDER BY id LIMIT ?"
)

#: undelivered statuses a newer undelivered one of the same commit, context and repository replaces
REPLACED_WHERE = (
    "o.done_at IS NULL AND EXISTS (SELECT 1 FROM status_outbox n WHERE n.done_at IS NULL AND n.sha = o.sha"
    " AND n.context = o.context AND n.repo = o.repo AND n.id > o.id)"
)
REPLACED = f"UPDATE status_outbox AS o SET done_at = ?, last_error = ? WHERE {REPLACED_WHERE}"  # noqa: S608 -- constants

_REASON_CODES = frozenset(str(r) for r in Reason)
_TRANSIENT_CODES = frozenset(str(r) for r in TRANSIENT)

#: deployments in these states are finished: a redelivery of their webhook is deliberate
_FINISHED = (DeploymentState.FAILED,)


@dataclass(frozen=True)
class Enqueued:
    deployment_id: str
    duplicate_of: str | None = None  # set when the delivery was already seen and is still in hand


@dataclass(frozen=True)
class Claim:
    """A deployment the worker took off the queue."""

    deployment_id: str
    commit: str
    ref: str
    trigger: str
    actor: str | None
    stacks: tuple[str, ...] = ()
    force: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class Undelivered:
    id: int
    deployment_id: str
    target: StatusTarget
    status: CommitStatus
    attempts: int


class Queue:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def enqueue(
        self,
        intake: Intake,
        *,
        target: StatusTarget | None = None,
        deployment_id: str | None = None,
        running: bool = False,
        told: Told = NOTHING_TOLD,
    ) -> Enqueued:
        """Record a deployment as `intake` asks, in one transaction with its delivery and what it tells
        (its `deployment.queued` event and pending status, which name `deployment_id`).

        A delivery (forge, id) seen before is a duplicate while its deployment is queued, running,
        succeeded or superseded; after a failed deployment it is a deliberate redelivery and queues
        again. A duplicate writes nothing. `running`: the caller runs it at once (the CLI), so no
        worker may claim it.
        """
        deployment_id = deployment_id or new_deployment_id()
        state = DeploymentState.RUNNING if running else DeploymentState.QUEUED
        with self.store.transaction() as db:
            if intake.delivery is not None:
                seen = db.execute(
                    "SELECT d.id, d.state FROM deliveries v JOIN deployments d ON d.id = v.deployment_id"
                    " WHERE v.forge = ? AND v.delivery_id = ?",
                    intake.delivery,
                ).fetchone()
                if seen is not None and seen["state"] not in _FINISHED:
                    return Enqueued(seen["id"], duplicate_of=seen["id"])
            db.execute(
                "INSERT INTO deployments (id, commit_sha, ref, trigger, actor, state, created_at, forge_repo,"
                " forge_api_url, reason, requested_stacks, force) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (deployment_id, intake.commit, intake.ref, intake.trigger, intake.actor, state, rfc3339(),
                 target.repo if target else None, target.api_url if target else None, intake.reason,
                 json.dumps(list(intake.stacks)), int(intake.force)),
            )  # fmt: skip
            if intake.delivery is not None:
                db.execute(
                    "INSERT INTO deliveries (forge, delivery_id, deployment_id, received_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT DO UPDATE SET deployment_id = excluded.deployment_id,"
                    " received_at = excluded.received_at",
                    (*intake.delivery, deployment_id, rfc3339()),
                )
            write_told(db, told)
        return Enqueued(deployment_id)

    def claim(self) -> Claim | None:
        """Take the newest queued deployment (latest wins); the older ones wait until it is verified.

        Only a commit the branch contains may overtake the others (supersede_older), so a push of a
        commit from elsewhere can never cancel the deployments queued before it.
        """
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT * FROM deployments WHERE state = ? ORDER BY rowid DESC LIMIT 1", (DeploymentState.QUEUED,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE deployments SET state = ?, started_at = ? WHERE id = ?",
                (DeploymentState.RUNNING, rfc3339(), row["id"]),
            )
        return Claim(
            deployment_id=row["id"], commit=row["commit_sha"], ref=row["ref"], trigger=row["trigger"],
            actor=row["actor"], stacks=tuple(json.loads(row["requested_stacks"] or "[]")), force=bool(row["force"]),
            reason=row["reason"],
        )  # fmt: skip

    def supersede_older(
        self, claim: Claim, *, by: str, told: Callable[[list[tuple[str, str]]], Told]
    ) -> list[tuple[str, str]]:
        """Supersede, by commit `by`, every deployment of the claim's ref queued before it; return (id, commit).
        `told(superseded)` says what that tells, in the same transaction."""
        with self.store.transaction() as db:
            older = db.execute(
                "SELECT id, commit_sha FROM deployments WHERE state = ? AND ref = ? AND trigger IN ('webhook', 'poll')"
                " AND rowid < (SELECT rowid FROM deployments WHERE id = ?) ORDER BY rowid",
                (DeploymentState.QUEUED, claim.ref, claim.deployment_id),
            ).fetchall()
            db.executemany(
                "UPDATE deployments SET state = ?, superseded_by = ?, finished_at = ? WHERE id = ?",
                [(DeploymentState.SUPERSEDED, by, rfc3339(), o["id"]) for o in older],
            )
            overtaken = [(o["id"], o["commit_sha"]) for o in older]
            if overtaken:
                write_told(db, told(overtaken))
        return overtaken

    def latest_attempt(self, ref: str) -> Attempt | None:
        """The newest deployment of `ref` that ran or is in hand, with its transient failures in a row."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT id, commit_sha, state, error_code, finished_at FROM deployments WHERE ref = ? AND state != ?"
                " AND commit_sha IS NOT NULL ORDER BY rowid DESC LIMIT 64",
                (ref, DeploymentState.SUPERSEDED),
            ).fetchall()
        if not rows:
            return None
        newest = rows[0]
        failures = 0
        for row in rows:
            if row["commit_sha"] != newest["commit_sha"] or row["state"] != DeploymentState.FAILED:
                break
            if row["error_code"] not in _TRANSIENT_CODES:
                break
            failures += 1
        reason = Reason(newest["error_code"]) if newest["error_code"] in _REASON_CODES else None
        return Attempt(
            deployment_id=newest["id"], commit=newest["commit_sha"], state=DeploymentState(newest["state"]),
            reason=reason, finished_at=_epoch(newest["finished_at"]), transient_failures=failures,
        )  # fmt: skip

    def requeue_interrupted(self, *, told: Callable[[list[str]], Told] | None = None) -> list[str]:
        """Put deployments left running by a crash back in the queue; return their ids. `told(ids)` says
        what that tells, in the same transaction."""
        with self.store.transaction() as db:
            rows = db.execute("SELECT id FROM deployments WHERE state = ?", (DeploymentState.RUNNING,)).fetchall()
            db.execute(
                "UPDATE deployments SET state = ?, started_at = NULL WHERE state = ?",
                (DeploymentState.QUEUED, DeploymentState.RUNNING),
            )
            db.execute("DELETE FROM deployment_stacks WHERE deployment_id IN (SELECT id FROM deployments"
                       " WHERE state = ?) AND state IN ('pending', 'running')", (DeploymentState.QUEUED,))  # fmt: skip
            resumed = [row["id"] for row in rows]
            if told is not None and resumed:
                write_told(db, told(resumed))
        return resumed

    def status_target(self, deployment_id: str) -> StatusTarget | None:
        with self.store.read() as db:
            row = db.execute(
                "SELECT forge, api_url, repo FROM status_outbox WHERE deployment_id = ? ORDER BY id LIMIT 1",
                (deployment_id,),
            ).fetchone()
        return None if row is None else StatusTarget(row["forge"], row["api_url"], row["repo"])

    def last_target(self, forge: str) -> StatusTarget | None:
        """Where the newest status for `forge` went: the repository a webhook named, for deployments no
        webhook started (polls, retries, people) when DEPLOYER_FORGE_REPO is not set."""
        with self.store.read() as db:
            row = db.execute(
                "SELECT forge, api_url, repo FROM status_outbox WHERE forge = ? ORDER BY id DESC LIMIT 1", (forge,)
            ).fetchone()
        return None if row is None else StatusTarget(row["forge"], row["api_url"], row["repo"])

    def undelivered(self, *, now: float | None = None, limit: int = 50) -> list[Undelivered]:
        """Statuses due now, oldest first, at most one per (sha, context) so that order is kept.

        A status with a newer one of its commit and context waiting behind it is never sent: a forge shows
        the last state of a context, and a burst of pushes leaves hundreds of `pending` and `superseded`
        per commit that would otherwise go out one a round. They are marked done, replaced.
        """
        now = time.time() if now is None else now
        with self.store.read() as db:
            replaced = db.execute(f"SELECT EXISTS (SELECT 1 FROM status_outbox o WHERE {REPLACED_WHERE})").fetchone()[0]  # noqa: S608
        if replaced:  # the write lock only when there is something to mark: the reporter looks every second
            with self.store.transaction() as db:
                db.execute(REPLACED, (rfc3339(), "replaced by a newer status before it was sent"))
        with self.store.read() as db:
            rows = db.execute(UNDELIVERED, (now, limit)).fetchall()
        return [
            Undelivered(
                id=r["id"], deployment_id=r["deployment_id"], target=StatusTarget(r["forge"], r["api_url"], r["repo"]),
                status=CommitStatus(sha=r["sha"], context=r["context"], state=r["state"],
                                    description=r["description"], target_url=r["target_url"]),
                attempts=r["attempts"],
            )
            for r in rows
        ]  # fmt: skip

    def delivered(self, outbox_id: int, *, error: str | None = None) -> None:
        """Mark a status done (sent, or given up on with `error`)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE status_outbox SET done_at = ?, last_error = ? WHERE id = ?", (rfc3339(), error, outbox_id)
            )

    def retry_later(self, outbox_id: int, *, delay: float, error: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE status_outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
                (time.time() + delay, error, outbox_id),
            )

    def set_meta(self, key: str, value: object) -> None:
        self.store.set_meta(key, value)

    def meta(self, key: str) -> object:
        return self.store.meta(key)


def _epoch(stamp: str | None) -> float | None:
    return None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

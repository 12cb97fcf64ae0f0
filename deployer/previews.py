"""The durable queue of plan previews, and the one preview comment each pull request keeps.

A pull / merge request's new head is queued here by a web worker (as a push is in deployer.queue) and
previewed by the deploy worker's preview thread; newest wins per pull request. What a preview says
goes out as a `deployer/plan` commit status (the status outbox) and as the body the pull request's
one comment should show (`pr_comments`): a newer body replaces one not sent yet, so a burst of
pushes to a pull request edits its comment once, to the last word.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from deployer.model import CommitStatus, StatusTarget, Told, new_deployment_id, rfc3339
from deployer.state import StateStore, write_told

__all__ = ["CommentDue", "PreviewClaim", "Previews", "Queued"]

QUEUED, RUNNING, DONE, SUPERSEDED = "queued", "running", "done", "superseded"


@dataclass(frozen=True)
class Queued:
    preview_id: str
    duplicate_of: str | None = None  # set when the delivery was seen before


@dataclass(frozen=True)
class PreviewClaim:
    """A pull request's head the worker took off the queue to preview."""

    id: str
    forge: str
    target: StatusTarget | None
    number: int
    head: str
    head_ref: str
    base_branch: str
    source_branch: str | None
    from_fork: bool
    actor: str | None
    title: str | None


@dataclass(frozen=True)
class CommentDue:
    """A pull request whose comment should say `body` (its `version`) and does not yet."""

    target: StatusTarget
    number: int
    body: str
    version: int
    comment_id: int | None
    attempts: int


class Previews:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def enqueue(
        self,
        *,
        forge: str,
        target: StatusTarget | None,
        number: int,
        head: str,
        head_ref: str,
        base_branch: str,
        source_branch: str | None = None,
        from_fork: bool = False,
        actor: str | None = None,
        title: str | None = None,
        delivery_id: str | None = None,
    ) -> Queued:
        """Queue a preview of `head`; a delivery (forge, id) seen before is a duplicate and writes nothing."""
        preview_id = "pr-" + new_deployment_id()
        with self.store.transaction() as db:
            if delivery_id is not None:
                seen = db.execute(
                    "SELECT deployment_id FROM deliveries WHERE forge = ? AND delivery_id = ?", (forge, delivery_id)
                ).fetchone()
                if seen is not None:
                    return Queued(seen["deployment_id"], duplicate_of=seen["deployment_id"])
                db.execute(
                    "INSERT INTO deliveries (forge, delivery_id, deployment_id, received_at) VALUES (?, ?, ?, ?)",
                    (forge, delivery_id, preview_id, rfc3339()),
                )
            db.execute(
                "INSERT INTO previews (id, forge, api_url, repo, number, head, head_ref, base_branch, source_branch,"
                " from_fork, actor, title, delivery_id, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?)",
                (preview_id, forge, target.api_url if target else None, target.repo if target else None, number,
                 head, head_ref, base_branch, source_branch, int(from_fork), actor, title, delivery_id, QUEUED,
                 rfc3339()),
            )  # fmt: skip
        return Queued(preview_id)

    def claim(self) -> PreviewClaim | None:
        """Take the newest queued preview; older queued ones of the same pull request are superseded by it."""
        with self.store.transaction() as db:
            row = db.execute("SELECT * FROM previews WHERE state = ? ORDER BY rowid DESC LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE previews SET state = ?, finished_at = ? WHERE state = ? AND forge = ? AND number = ?"
                " AND repo IS ? AND rowid < (SELECT rowid FROM previews WHERE id = ?)",
                (SUPERSEDED, rfc3339(), QUEUED, row["forge"], row["number"], row["repo"], row["id"]),
            )
            db.execute("UPDATE previews SET state = ?, started_at = ? WHERE id = ?", (RUNNING, rfc3339(), row["id"]))
        target = None
        if row["api_url"] and row["repo"]:
            target = StatusTarget(row["forge"], row["api_url"], row["repo"])
        return PreviewClaim(
            id=row["id"], forge=row["forge"], target=target, number=row["number"], head=row["head"],
            head_ref=row["head_ref"], base_branch=row["base_branch"], source_branch=row["source_branch"],
            from_fork=bool(row["from_fork"]), actor=row["actor"], title=row["title"],
        )  # fmt: skip

    def requeue_interrupted(self) -> int:
        """Queue again the previews a stopped worker left running; return how many."""
        with self.store.transaction() as db:
            return db.execute("UPDATE previews SET state = ? WHERE state = ?", (QUEUED, RUNNING)).rowcount

    def report(
        self,
        claim: PreviewClaim,
        *,
        summary: dict[str, Any],
        status: CommitStatus | None,
        comment: str | None,
        final: bool,
    ) -> None:
        """Record what the preview says now, in one transaction with its status and its comment's new body."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE previews SET summary = ?, state = ?, finished_at = ? WHERE id = ?",
                (json.dumps(summary), DONE if final else RUNNING, rfc3339() if final else None, claim.id),
            )
            if claim.target is None:
                return
            if status is not None:
                write_told(db, Told(statuses=((claim.target, claim.id, status),)))
            if comment is not None:
                target = claim.target
                db.execute(
                    "INSERT INTO pr_comments (forge, api_url, repo, number, body) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO UPDATE SET body = excluded.body, version = version + 1, attempts = 0,"
                    " next_attempt = 0, last_error = NULL",
                    (target.forge, target.api_url, target.repo, claim.number, comment),
                )

    def superseded(self, claim: PreviewClaim) -> bool:
        """Whether a newer push to the claim's pull request is queued (its preview is then not worth finishing)."""
        with self.store.read() as db:
            row = db.execute(
                "SELECT 1 FROM previews WHERE state = ? AND forge = ? AND number = ? AND repo IS ?"
                " AND rowid > (SELECT rowid FROM previews WHERE id = ?) LIMIT 1",
                (QUEUED, claim.forge, claim.number, claim.target.repo if claim.target else None, claim.id),
            ).fetchone()
        return row is not None

    def comments_due(self, *, now: float | None = None, limit: int = 20) -> list[CommentDue]:
        now = time.time() if now is None else now
        with self.store.read() as db:
            rows = db.execute(
                "SELECT * FROM pr_comments WHERE version > sent_version AND next_attempt <= ? LIMIT ?", (now, limit)
            ).fetchall()
        return [
            CommentDue(StatusTarget(r["forge"], r["api_url"], r["repo"]), r["number"], r["body"], r["version"],
                       r["comment_id"], r["attempts"])
            for r in rows
        ]  # fmt: skip

    def comment_sent(self, due: CommentDue, *, comment_id: int | None, error: str | None = None) -> None:
        """The comment says `due.version` now (or the forge refused it for good, `error`)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE pr_comments SET sent_version = MAX(sent_version, ?), comment_id = COALESCE(?, comment_id),"
                " last_error = ? WHERE forge = ? AND api_url = ? AND repo = ? AND number = ?",
                (due.version, comment_id, error, *_key(due)),
            )

    def comment_later(self, due: CommentDue, *, delay: float, error: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE pr_comments SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
                " WHERE forge = ? AND api_url = ? AND repo = ? AND number = ?",
                (time.time() + delay, error, *_key(due)),
            )


def _key(due: CommentDue) -> tuple[str, str, str, int]:
    return due.target.forge, due.target.api_url, due.target.repo, due.number

"""The SQLite state store: deployments, per-stack results, and each stack's last good commit.

A stack's last good commit moves only in the same transaction that records its success, so a
failed or interrupted stack keeps the commit it last deployed successfully.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.model import Action, DeploymentState, Plan, StackResult, StackState, rfc3339

__all__ = ["StackRecord", "StateStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    commit_sha TEXT,
    ref TEXT NOT NULL,
    trigger TEXT NOT NULL,
    actor TEXT,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    error_code TEXT
);
CREATE TABLE IF NOT EXISTS deployment_stacks (
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    reasons TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    output TEXT,
    PRIMARY KEY (deployment_id, name)
);
CREATE TABLE IF NOT EXISTS stacks (
    name TEXT PRIMARY KEY,
    last_good_commit TEXT NOT NULL,
    deployed_at TEXT NOT NULL,
    deployment_id TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StackRecord:
    name: str
    last_good_commit: str
    deployed_at: str
    deployment_id: str
    last_state: str | None


class StateStore:
    """One SQLite database in the state directory, safe to use from the executor's threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def create_deployment(self, *, ref: str, trigger: str, actor: str | None, commit: str | None = None) -> str:
        deployment_id = uuid.uuid4().hex[:12]
        with self._tx() as db:
            db.execute(
                "INSERT INTO deployments (id, commit_sha, ref, trigger, actor, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (deployment_id, commit, ref, trigger, actor, DeploymentState.QUEUED, rfc3339()),
            )
        return deployment_id

    def start_deployment(self, deployment_id: str, plan: Plan) -> None:
        """Mark the deployment running at the plan's commit, with every planned stack pending."""
        with self._tx() as db:
            db.execute(
                "UPDATE deployments SET state = ?, commit_sha = ?, started_at = ? WHERE id = ?",
                (DeploymentState.RUNNING, plan.target, rfc3339(), deployment_id),
            )
            db.executemany(
                "INSERT INTO deployment_stacks (deployment_id, position, name, action, reasons, state)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (deployment_id, i, s.name, s.action, json.dumps(list(s.reasons)), StackState.PENDING)
                    for i, s in enumerate(plan.stacks)
                ],
            )

    def record_stack(self, deployment_id: str, result: StackResult, *, commit: str) -> None:
        """Record one stack's state; a success moves (or, for a removal, drops) its last good commit."""
        with self._tx() as db:
            db.execute(
                "UPDATE deployment_stacks SET state = ?, reason = ?, started_at = ?, finished_at = ?,"
                " error = ?, output = ? WHERE deployment_id = ? AND name = ?",
                (
                    result.state, result.reason, _stamp(result.started_at), _stamp(result.finished_at),
                    result.error, result.output, deployment_id, result.name,
                ),
            )  # fmt: skip
            if result.state is not StackState.SUCCEEDED:
                return
            if result.action is Action.REMOVE:
                db.execute("DELETE FROM stacks WHERE name = ?", (result.name,))
            else:
                db.execute(
                    "INSERT INTO stacks (name, last_good_commit, deployed_at, deployment_id) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET last_good_commit = excluded.last_good_commit,"
                    " deployed_at = excluded.deployed_at, deployment_id = excluded.deployment_id",
                    (result.name, commit, rfc3339(result.finished_at), deployment_id),
                )

    def finish_deployment(
        self, deployment_id: str, state: DeploymentState, *, error: str | None = None, error_code: str | None = None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deployments SET state = ?, finished_at = ?, error = ?, error_code = ? WHERE id = ?",
                (state, rfc3339(), error, error_code, deployment_id),
            )

    def last_good(self) -> dict[str, str]:
        """Each deployed stack's last successfully deployed commit."""
        with self._lock:
            rows = self._db.execute("SELECT name, last_good_commit FROM stacks").fetchall()
        return {row["name"]: row["last_good_commit"] for row in rows}

    def stacks(self) -> list[StackRecord]:
        query = """
            SELECT s.*, (SELECT ds.state FROM deployment_stacks ds JOIN deployments d ON d.id = ds.deployment_id
                         WHERE ds.name = s.name AND ds.state != 'pending'
                         ORDER BY d.rowid DESC LIMIT 1) AS last_state
            FROM stacks s ORDER BY s.name"""
        with self._lock:
            rows = self._db.execute(query).fetchall()
        return [
            StackRecord(r["name"], r["last_good_commit"], r["deployed_at"], r["deployment_id"], r["last_state"])
            for r in rows
        ]

    def deployments(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest deployments first, each in the contract's shape."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM deployments ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
            return [self._shape(row) for row in rows]

    def deployment(self, deployment_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
            return None if row is None else self._shape(row)

    def _shape(self, row: Mapping[str, Any]) -> dict[str, Any]:
        stacks = self._db.execute(
            "SELECT * FROM deployment_stacks WHERE deployment_id = ? ORDER BY position", (row["id"],)
        ).fetchall()
        return {
            "id": row["id"], "commit": row["commit_sha"], "ref": row["ref"], "trigger": row["trigger"],
            "actor": row["actor"], "state": row["state"], "created_at": row["created_at"],
            "started_at": row["started_at"], "finished_at": row["finished_at"], "error": row["error"],
            "stacks": [
                {
                    "name": s["name"], "action": s["action"], "reasons": json.loads(s["reasons"]),
                    "state": s["state"], "started_at": s["started_at"], "finished_at": s["finished_at"],
                    "error": s["error"],
                }
                for s in stacks
            ],
        }  # fmt: skip


def _stamp(epoch: float | None) -> str | None:
    return None if epoch is None else rfc3339(epoch)

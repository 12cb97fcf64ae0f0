"""The SQLite state store: deployments, per-stack results, and each stack's last good commit.

A stack's last good commit moves only in the same transaction that records its success, so a
failed or interrupted stack keeps the commit it last deployed successfully. The same database holds
the deployment queue, the webhook deliveries seen and the commit-status outbox (deployer.queue).

Every write takes a `Told` (deployer.model): the audit events that tell the change and the commit
statuses it implies go into `audit_events` and `status_outbox` in the change's own transaction, so
nothing is recorded without its events and statuses, or the other way round (the outbox pattern).
An event's line and nanosecond timestamp are fixed here, once: a resend to Loki is the same entry.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from deployer.errors import StateUnavailableError
from deployer.model import (
    NOTHING_TOLD,
    TRANSIENT,
    Action,
    CommitStatus,
    DeploymentState,
    Outcome,
    Placement,
    Plan,
    Reason,
    StackResult,
    StackState,
    StatusTarget,
    Told,
    rfc3339,
)

__all__ = [
    "DURATION_BUCKETS",
    "AuditEvent",
    "DriftSubject",
    "StackRecord",
    "StateStore",
    "duration_bucket",
    "insert_statuses",
    "write_told",
]

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
    error_code TEXT,
    forge_repo TEXT,
    forge_api_url TEXT,
    superseded_by TEXT,
    reason TEXT,
    rewound_from TEXT NOT NULL DEFAULT '[]',
    retry_at TEXT,
    requested_stacks TEXT NOT NULL DEFAULT '[]',
    force INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deployments_by_state ON deployments (state, ref);
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
    depends_on TEXT NOT NULL DEFAULT '[]',
    duration_ms INTEGER,
    duration_bucket INTEGER,
    images TEXT,
    rolled_back_to TEXT,
    PRIMARY KEY (deployment_id, name)
);
-- Each stack's latest result and the history page's stack filter look up by name.
CREATE INDEX IF NOT EXISTS deployment_stacks_by_name ON deployment_stacks (name);
CREATE TABLE IF NOT EXISTS stacks (
    name TEXT PRIMARY KEY,
    last_good_commit TEXT NOT NULL,
    deployed_at TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    depends_on TEXT NOT NULL DEFAULT '[]',
    held_commit TEXT,
    held_actor TEXT,
    held_reason TEXT,
    images TEXT,
    placement TEXT,
    paused_actor TEXT,
    paused_reason TEXT,
    paused_at TEXT,
    baseline TEXT,
    drift TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    forge TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (forge, delivery_id)
);
CREATE TABLE IF NOT EXISTS status_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    forge TEXT NOT NULL,
    api_url TEXT NOT NULL,
    repo TEXT NOT NULL,
    sha TEXT NOT NULL,
    context TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    target_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    done_at TEXT,
    last_error TEXT,
    queued_at REAL
);
CREATE INDEX IF NOT EXISTS status_outbox_pending ON status_outbox (done_at, next_attempt);
-- Statuses of one commit and context go out in order: the reporter looks up an older undelivered one by this.
CREATE INDEX IF NOT EXISTS status_outbox_waiting ON status_outbox (sha, context, repo, id) WHERE done_at IS NULL;
-- The audit trail (contract section 7): one JSON line per event, written with the change it tells;
-- `line` and `ts_ns` never change once written (Loki deduplicates a resend of the same entry).
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns INTEGER NOT NULL,
    event TEXT NOT NULL,
    deployment_id TEXT,
    stack TEXT,
    actor TEXT,
    line TEXT NOT NULL,
    shipped_at REAL,
    ship_error TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_unshipped ON audit_events (id) WHERE shipped_at IS NULL;
CREATE INDEX IF NOT EXISTS audit_events_by_deployment ON audit_events (deployment_id);
CREATE INDEX IF NOT EXISTS audit_events_by_time ON audit_events (ts_ns);
CREATE INDEX IF NOT EXISTS audit_events_set_aside ON audit_events (id) WHERE ship_error IS NOT NULL;
-- Plan previews of pull / merge requests (deployer.previews): queued by the web workers, run by the worker.
CREATE TABLE IF NOT EXISTS previews (
    id TEXT PRIMARY KEY,
    forge TEXT NOT NULL,
    api_url TEXT,
    repo TEXT,
    number INTEGER NOT NULL,
    head TEXT NOT NULL,
    head_ref TEXT NOT NULL,
    base_branch TEXT NOT NULL,
    source_branch TEXT,
    from_fork INTEGER NOT NULL DEFAULT 0,
    actor TEXT,
    title TEXT,
    delivery_id TEXT,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    summary TEXT
);
CREATE INDEX IF NOT EXISTS previews_by_state ON previews (state);
-- The one preview comment of each pull request: the body it should say (version), what was last sent.
CREATE TABLE IF NOT EXISTS pr_comments (
    forge TEXT NOT NULL,
    api_url TEXT NOT NULL,
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    body TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    sent_version INTEGER NOT NULL DEFAULT 0,
    comment_id INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (forge, api_url, repo, number)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


#: columns added since the first schema: an older state.db gains them when opened (with their defaults)
_ADDED_COLUMNS = (
    ("deployments", "forge_repo", "TEXT"),
    ("deployments", "forge_api_url", "TEXT"),
    ("deployments", "superseded_by", "TEXT"),
    ("deployment_stacks", "depends_on", "TEXT NOT NULL DEFAULT '[]'"),
    ("stacks", "depends_on", "TEXT NOT NULL DEFAULT '[]'"),
    ("deployments", "reason", "TEXT"),
    ("deployments", "rewound_from", "TEXT NOT NULL DEFAULT '[]'"),
    ("deployments", "retry_at", "TEXT"),
    ("deployments", "requested_stacks", "TEXT NOT NULL DEFAULT '[]'"),
    ("deployments", "force", "INTEGER NOT NULL DEFAULT 0"),
    ("stacks", "held_commit", "TEXT"),
    ("stacks", "held_actor", "TEXT"),
    ("stacks", "held_reason", "TEXT"),
    ("status_outbox", "queued_at", "REAL"),
    ("deployment_stacks", "duration_ms", "INTEGER"),
    ("deployment_stacks", "duration_bucket", "INTEGER"),
    ("deployment_stacks", "images", "TEXT"),
    ("deployment_stacks", "rolled_back_to", "TEXT"),
    ("stacks", "images", "TEXT"),
    ("stacks", "placement", "TEXT"),
    ("stacks", "paused_actor", "TEXT"),
    ("stacks", "paused_reason", "TEXT"),
    ("stacks", "paused_at", "TEXT"),
    ("stacks", "baseline", "TEXT"),
    ("stacks", "drift", "TEXT"),
)
#: the upper bounds (seconds) of the stack deploy duration histogram /metrics exports: a stack is brought up
#: in a few seconds to several minutes. Each result's bucket (an index into these; len() for above the last)
#: is stored with it, so a scrape counts rows per bucket from an index instead of comparing each duration.
DURATION_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
_BUCKET_SQL = (
    "CASE "
    + " ".join(f"WHEN duration_ms <= {round(b * 1000)} THEN {i}" for i, b in enumerate(DURATION_BUCKETS))
    + f" ELSE {len(DURATION_BUCKETS)} END"
)
#: what /metrics reads at every scrape (each stack's results, durations and last success), from the index alone:
#: the rows themselves carry kilobytes of compose output each
_AFTER_COLUMNS = """
DROP INDEX IF EXISTS deployment_stacks_results;
CREATE INDEX IF NOT EXISTS deployment_stacks_metrics
    ON deployment_stacks (name, state, duration_bucket, duration_ms, finished_at);
CREATE INDEX IF NOT EXISTS deployments_by_state_and_trigger ON deployments (state, trigger);
CREATE INDEX IF NOT EXISTS deployments_by_commit ON deployments (commit_sha, state);
"""


#: SQLite's primary result codes for a store that cannot be written: READONLY, IOERR, FULL, CANTOPEN
_UNWRITABLE = frozenset({8, 10, 13, 14})


@dataclass(frozen=True)
class StackRecord:
    name: str
    last_good_commit: str | None
    deployed_at: str | None
    deployment_id: str | None
    last_state: str | None
    depends_on: tuple[str, ...]
    #: where it was last deployed: engine kind and the other engine's address (None: the deployer's own)
    engine: str = "compose"
    docker_host: str | None = None


@dataclass(frozen=True)
class DriftSubject:
    """A deployed stack as a drift check sees it (StateStore.drift_subjects)."""

    name: str
    commit: str
    #: the deployment that left this baseline: a drift check writes nothing over a newer one's clean slate
    deployment_id: str
    placement: Placement
    baseline: Mapping[str, Any] | None
    paused: bool
    drift: tuple[dict[str, Any], ...]


class StateStore:
    """One SQLite database in the state directory, safe to use from the executor's threads."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()  # re-entrant: a transaction's told() may read
        # Writers of every process (web workers, deploy worker, CLI) take this file lock before
        # BEGIN IMMEDIATE: the kernel wakes the next one at once, where SQLite's busy handler would
        # poll with sleeps of up to 100 ms while this process's other threads wait behind _lock.
        self._write_lock = os.open(path.with_name(path.name + ".write-lock"), os.O_RDWR | os.O_CREAT, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        # Under the write lock: turning a new database to WAL needs it alone, and SQLite answers "database
        # is locked" at once, without its busy handler, to processes that start together on an empty state dir.
        fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL (`durable`): a commit is on the disk when it returns (the WAL is fsynced), so what was recorded
            # survives a power loss or a disk that goes read-only after an I/O error; NORMAL lost the last
            # seconds of events there (tests/e2e/test_state_disk.py). The web workers write with NORMAL: an
            # fsync per delivery made acknowledgements 0.72x as many per second under 50 senders
            # (docs/benchmarks.md). Their commits reach the disk with the deploy worker's next one (its
            # heartbeat: at most 5 s; fsync flushes the whole WAL), and a delivery lost to a power loss in
            # that window is deployed by the reconcile poll all the same.
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
            self._db.executescript(_AFTER_COLUMNS)
        finally:
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    def _add_missing_columns(self) -> None:
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                if (table, column) == ("deployment_stacks", "duration_ms"):  # a store older than the column
                    self._db.execute(
                        "UPDATE deployment_stacks SET duration_ms = CAST(ROUND((julianday(finished_at)"
                        " - julianday(started_at)) * 86400000) AS INTEGER) WHERE started_at IS NOT NULL"
                        " AND finished_at IS NOT NULL"
                    )
                if (table, column) == ("deployment_stacks", "duration_bucket"):
                    self._db.execute(f"UPDATE deployment_stacks SET duration_bucket = {_BUCKET_SQL}"  # noqa: S608
                                     " WHERE duration_ms IS NOT NULL")  # fmt: skip

    def close(self) -> None:
        self._db.close()
        os.close(self._write_lock)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), committed on success, rolled back on error."""
        with self._tx() as db:
            yield db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads, held by this thread until the block ends."""
        with self._lock:
            yield self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the file lock; rolled back on any error. A disk that is full,
        read-only or failing raises StateUnavailableError: the change, its events and statuses are not made."""
        with self._lock:
            fcntl.flock(self._write_lock, fcntl.LOCK_EX)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                finally:
                    if self._db.in_transaction:  # an error in the block, or a COMMIT that could not be written
                        with suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
            except sqlite3.OperationalError as error:
                if getattr(error, "sqlite_errorcode", 0) & 0xFF not in _UNWRITABLE:
                    raise
                raise StateUnavailableError(f"state store {self.path} cannot be written: {error}") from error
            finally:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    def start_deployment(
        self,
        deployment_id: str,
        plan: Plan,
        *,
        depends_on: Mapping[str, tuple[str, ...]] | None = None,
        told: Told = NOTHING_TOLD,
    ) -> None:
        """Mark the deployment running at the plan's commit, with every planned stack pending.

        Orphaned stacks are recorded as such (reported, never run); a rewind is said in the reason. A
        deployment resumed after a crash is planned again: a stack its first run finished and the new plan
        has again (one that failed or was rolled back) starts over; one it deployed keeps its result.
        """
        depends_on = depends_on or {}
        rewound = f"history rewound from {', '.join(c[:12] for c in plan.rewound_from)}" if plan.rewound_from else None
        with self._tx() as db:
            db.execute(
                "UPDATE deployments SET state = ?, commit_sha = ?, started_at = ?, rewound_from = ?,"
                " reason = CASE WHEN ? IS NULL THEN reason WHEN reason IS NULL THEN ? ELSE reason || '; ' || ? END"
                " WHERE id = ?",
                (DeploymentState.RUNNING, plan.target, rfc3339(), json.dumps(list(plan.rewound_from)),
                 rewound, rewound, rewound, deployment_id),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO deployment_stacks (deployment_id, position, name, action, reasons, state, depends_on)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (deployment_id, name) DO UPDATE SET"
                " position = excluded.position, action = excluded.action, reasons = excluded.reasons,"
                " state = excluded.state, depends_on = excluded.depends_on, reason = NULL, started_at = NULL,"
                " finished_at = NULL, error = NULL, output = NULL, duration_ms = NULL, duration_bucket = NULL,"
                " images = NULL, rolled_back_to = NULL",
                [
                    (
                        deployment_id,
                        i,
                        s.name,
                        s.action,
                        json.dumps(list(s.reasons)),
                        StackState.ORPHANED if s.action is Action.ORPHANED else StackState.PENDING,
                        json.dumps(list(depends_on.get(s.name, ()))),
                    )
                    for i, s in enumerate(plan.stacks)
                ],
            )
            write_told(db, told)

    def record_stack(self, deployment_id: str, result: StackResult, *, commit: str, told: Told = NOTHING_TOLD) -> None:
        """Record one stack's state; a success moves (or, for a removal, drops) its last good commit."""
        duration = _duration_ms(result.started_at, result.finished_at)
        images = json.dumps(dict(result.images)) if result.images else None
        baseline = json.dumps(result.baseline) if result.baseline is not None else None
        placed = result.placement or Placement()
        placement = json.dumps({"engine": placed.engine, "docker_host": placed.docker_host})
        with self._tx() as db:
            write_told(db, told)
            db.execute(
                "UPDATE deployment_stacks SET state = ?, reason = ?, started_at = ?, finished_at = ?,"
                " error = ?, output = ?, duration_ms = ?, duration_bucket = ?, images = ?, rolled_back_to = ?"
                " WHERE deployment_id = ? AND name = ?",
                (
                    result.state, result.reason, _stamp(result.started_at), _stamp(result.finished_at),
                    result.error, result.output, duration, duration_bucket(duration), images, result.rolled_back_to,
                    deployment_id, result.name,
                ),
            )  # fmt: skip
            if result.state is not StackState.SUCCEEDED:
                return
            if result.action is Action.REMOVE:
                db.execute("DELETE FROM stacks WHERE name = ?", (result.name,))
            else:
                db.execute(
                    "INSERT INTO stacks (name, last_good_commit, deployed_at, deployment_id, depends_on, images,"
                    " placement, baseline)"
                    " SELECT ?, ?, ?, ?, depends_on, ?, ?, ? FROM deployment_stacks"
                    " WHERE deployment_id = ? AND name = ?"
                    " ON CONFLICT(name) DO UPDATE SET last_good_commit = excluded.last_good_commit,"
                    " deployed_at = excluded.deployed_at, deployment_id = excluded.deployment_id,"
                    " depends_on = excluded.depends_on, images = excluded.images, placement = excluded.placement,"
                    " baseline = excluded.baseline, drift = NULL",
                    (
                        result.name,
                        commit,
                        rfc3339(result.finished_at),
                        deployment_id,
                        images,
                        placement,
                        baseline,
                        deployment_id,
                        result.name,
                    ),
                )

    def finished_stacks(self, deployment_id: str) -> list[StackResult]:
        """The stacks of a deployment recorded as finished, in plan order: for one resumed after a crash, also
        those its first run deployed, which the new plan no longer has."""
        with self.read() as db:
            rows = db.execute(
                "SELECT * FROM deployment_stacks WHERE deployment_id = ? AND state NOT IN (?, ?, ?) ORDER BY position",
                (deployment_id, StackState.PENDING, StackState.RUNNING, StackState.ORPHANED),
            ).fetchall()
        return [
            StackResult(r["name"], Action(r["action"]), StackState(r["state"]),
                        reason=Reason(r["reason"]) if r["reason"] in Reason.__members__.values() else None,
                        error=r["error"], started_at=_epoch(r["started_at"]), finished_at=_epoch(r["finished_at"]),
                        rolled_back_to=r["rolled_back_to"])
            for r in rows
        ]  # fmt: skip

    def finish_deployment(self, deployment_id: str, outcome: Outcome, *, told: Told = NOTHING_TOLD) -> None:
        """Record how a deployment ended: its state, why it failed (a Reason) or what superseded it, with
        its final events and statuses."""
        with self._tx() as db:
            write_told(db, told)
            db.execute(
                "UPDATE deployments SET state = ?, finished_at = ?, error = ?, error_code = ?, superseded_by = ?,"
                " commit_sha = COALESCE(?, commit_sha) WHERE id = ?",
                (outcome.state, rfc3339(), outcome.error, outcome.reason, outcome.superseded_by, outcome.commit,
                 deployment_id),
            )  # fmt: skip

    def set_retry(self, deployment_id: str, retry_at: float | None) -> None:
        """When the reconcile loop will try this failed deployment's commit again (None: it will not)."""
        with self._tx() as db:
            db.execute("UPDATE deployments SET retry_at = ? WHERE id = ?", (_stamp(retry_at), deployment_id))

    def supersede(self, deployment_id: str, *, by: str) -> None:
        """End a deployment that will not run because `by` (a newer commit) is deployed already."""
        with self._tx() as db:
            db.execute(
                "UPDATE deployments SET state = ?, superseded_by = ?, finished_at = ? WHERE id = ?",
                (DeploymentState.SUPERSEDED, by, rfc3339(), deployment_id),
            )

    def succeeded_before(self, commit: str) -> str | None:
        """The newest succeeded deployment of `commit`, if it was ever deployed."""
        with self.read() as db:
            row = db.execute(
                "SELECT id FROM deployments WHERE commit_sha = ? AND state = ? ORDER BY finished_at DESC LIMIT 1",
                (commit, DeploymentState.SUCCEEDED),
            ).fetchone()
        return None if row is None else str(row["id"])

    def latest_deployed(self, ref: str) -> str | None:
        """The commit of the newest succeeded deployment of `ref`."""
        with self._lock:
            row = self._db.execute(
                "SELECT commit_sha FROM deployments WHERE ref = ? AND state = ? ORDER BY rowid DESC LIMIT 1",
                (ref, DeploymentState.SUCCEEDED),
            ).fetchone()
        return None if row is None else str(row["commit_sha"])

    def hold(
        self, names: list[str], *, commit: str, actor: str | None, reason: str | None, told: Told = NOTHING_TOLD
    ) -> None:
        """Hold stacks a person deployed at a commit other than the branch head: the poll leaves them there."""
        with self._tx() as db:
            write_told(db, told)
            db.executemany(
                "UPDATE stacks SET held_commit = ?, held_actor = ?, held_reason = ? WHERE name = ?",
                [(commit, actor, reason, name) for name in names],
            )

    def release(self, names: list[str] | None = None, *, told: Callable[[list[str]], Told] | None = None) -> list[str]:
        """Let held stacks (all of them with None) converge to the branch head again; return those released.
        `told(released)` says what the release tells, in its transaction."""
        with self._tx() as db:
            held = [r["name"] for r in db.execute("SELECT name FROM stacks WHERE held_commit IS NOT NULL")]
            chosen = held if names is None else [n for n in held if n in names]
            db.executemany("UPDATE stacks SET held_commit = NULL, held_actor = NULL, held_reason = NULL"
                           " WHERE name = ?", [(n,) for n in chosen])  # fmt: skip
            if told is not None and chosen:
                write_told(db, told(chosen))
        return chosen

    def pause(self, name: str, *, actor: str | None, reason: str | None, told: Told = NOTHING_TOLD) -> bool:
        """Leave deployed stack `name` alone: no push or poll touches it until it is resumed. False if it is
        not deployed or already paused (then nothing is written)."""
        with self._tx() as db:
            changed = db.execute("UPDATE stacks SET paused_actor = ?, paused_reason = ?, paused_at = ?"
                                 " WHERE name = ? AND paused_at IS NULL",
                                 (actor, reason, rfc3339(time.time()), name)).rowcount  # fmt: skip
            if changed:
                write_told(db, told)
        return bool(changed)

    def resume(self, name: str, *, told: Told = NOTHING_TOLD) -> bool:
        """A paused stack follows the branch again. False if it was not paused."""
        with self._tx() as db:
            changed = db.execute("UPDATE stacks SET paused_actor = NULL, paused_reason = NULL, paused_at = NULL"
                                 " WHERE name = ? AND paused_at IS NOT NULL", (name,)).rowcount  # fmt: skip
            if changed:
                write_told(db, told)
        return bool(changed)

    def paused(self) -> dict[str, dict[str, str | None]]:
        """Each paused stack: {"actor", "reason", "at"}."""
        with self._lock:
            rows = self._db.execute("SELECT name, paused_actor, paused_reason, paused_at FROM stacks"
                                    " WHERE paused_at IS NOT NULL").fetchall()  # fmt: skip
        return {r["name"]: {"actor": r["paused_actor"], "reason": r["paused_reason"], "at": r["paused_at"]}
                for r in rows}  # fmt: skip

    def drift_subjects(self) -> list[DriftSubject]:
        """Every deployed stack drift is checked for, by name: its last good commit, where it runs, the
        baseline its last good deploy left (None: deployed before drift was recorded, or on a swarm), whether
        it is paused, and the drift findings last recorded (as dicts)."""
        with self._lock:
            rows = self._db.execute("SELECT name, last_good_commit, deployment_id, placement, baseline, paused_at,"
                                    " drift FROM stacks ORDER BY name").fetchall()  # fmt: skip
        found = []
        for r in rows:
            placed = json.loads(r["placement"]) if r["placement"] else {}
            found.append(DriftSubject(
                r["name"], r["last_good_commit"], r["deployment_id"],
                Placement(str(placed.get("engine") or "compose"), placed.get("docker_host")),
                json.loads(r["baseline"]) if r["baseline"] else None, r["paused_at"] is not None,
                tuple(json.loads(r["drift"] or "[]")),
            ))  # fmt: skip
        return found

    def record_drift(self, found: Mapping[str, tuple[str, list[dict[str, Any]]]], *, told: Told = NOTHING_TOLD) -> None:
        """Each stack's drift findings now ({name: (the deployment its baseline is from, findings as dicts)}),
        with what tells the changes, in one transaction. A stack deployed since its check began keeps the
        clean slate its new deploy gave it. Rows whose findings did not change are not written."""
        with self._tx() as db:
            db.executemany("UPDATE stacks SET drift = ?1 WHERE name = ?2 AND deployment_id = ?3 AND drift IS NOT ?1",
                           [(json.dumps(f) if f else None, name, by) for name, (by, f) in found.items()])  # fmt: skip
            write_told(db, told)

    def busy(self) -> bool:
        """Whether a deployment is queued or running (its stacks' containers may be coming and going)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deployments WHERE state IN ('queued', 'running') LIMIT 1").fetchone()
        return row is not None

    def drift(self) -> dict[str, list[dict[str, Any]]]:
        """Each deployed stack's drift findings as last checked ([] when none, or not checked yet)."""
        with self._lock:
            rows = self._db.execute("SELECT name, drift FROM stacks").fetchall()
        return {r["name"]: json.loads(r["drift"] or "[]") for r in rows}

    def drift_repairs(self, name: str, *, since: float) -> int:
        """How many drift repairs of `name` were queued since `since` (epoch seconds): the flap guard's count."""
        with self._lock:
            rows = self._db.execute("SELECT requested_stacks FROM deployments WHERE trigger = 'drift'"
                                    " AND created_at >= ?", (rfc3339(since),)).fetchall()  # fmt: skip
        return sum(1 for r in rows if name in json.loads(r["requested_stacks"] or "[]"))

    def meta(self, key: str) -> object:
        """A value the processes share (heartbeats, cursors, how a shipper stands), as JSON; None if unset."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: object) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))  # fmt: skip

    def tell(self, told: Told) -> None:
        """Events and statuses that go with no change of state here (a refused request, a running status)."""
        if told.events or told.statuses:
            with self._tx() as db:
                write_told(db, told)

    def unshipped(self, *, limit: int = 500) -> list[AuditEvent]:
        """The oldest events not yet in Loki and not set aside, at most `limit`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts_ns, line FROM audit_events WHERE shipped_at IS NULL AND ship_error IS NULL"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [AuditEvent(r["id"], r["ts_ns"], r["line"]) for r in rows]

    def shipped(self, ids: Sequence[int], *, error: str | None = None) -> None:
        """Loki took these events (or, with `error`, refused them for good: set aside, kept, visible)."""
        with self._tx() as db:
            if error is None:
                db.executemany("UPDATE audit_events SET shipped_at = ? WHERE id = ?", [(time.time(), i) for i in ids])
            else:
                db.executemany("UPDATE audit_events SET ship_error = ? WHERE id = ?", [(error[:500], i) for i in ids])

    def prune_shipped(self, *, before: float) -> int:
        """Drop events shipped to Loki before `before` (epoch seconds); never one not yet shipped."""
        with self._tx() as db:
            return db.execute("DELETE FROM audit_events WHERE shipped_at IS NOT NULL AND shipped_at < ?",
                              (before,)).rowcount  # fmt: skip

    def shipping(self) -> dict[str, Any]:
        """How shipping stands: events waiting (and the oldest one's age in seconds), events set aside."""
        with self._lock:
            waiting = self._db.execute(
                "SELECT COUNT(*) AS n, MIN(ts_ns) AS oldest FROM audit_events WHERE shipped_at IS NULL"
                " AND ship_error IS NULL"
            ).fetchone()
            aside = self._db.execute("SELECT COUNT(*) AS n FROM audit_events WHERE ship_error IS NOT NULL").fetchone()
        oldest = None if waiting["oldest"] is None else max(0.0, time.time() - waiting["oldest"] / 1e9)
        return {"waiting": waiting["n"], "oldest_age_s": oldest, "set_aside": aside["n"]}

    def events(
        self,
        *,
        deployment: str | None = None,
        stack: str | None = None,
        actor: str | None = None,
        event: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        """Audit events, oldest first, after `after_id`, matching every filter given."""
        where: list[str] = ["id > ?"]
        args: list[object] = [after_id]
        for column, value in (("deployment_id", deployment), ("stack", stack), ("actor", actor), ("event", event)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since_ns is not None:
            where.append("ts_ns >= ?")
            args.append(since_ns)
        if until_ns is not None:
            where.append("ts_ns < ?")
            args.append(until_ns)
        # the WHERE clause is made of the fixed column names above; every value is a parameter
        query = f"SELECT id, ts_ns, line FROM audit_events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [AuditEvent(r["id"], r["ts_ns"], r["line"]) for r in rows]

    def held(self) -> dict[str, dict[str, str | None]]:
        """Each held stack: {"commit", "actor", "reason"}."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, held_commit, held_actor, held_reason FROM stacks WHERE held_commit IS NOT NULL"
            ).fetchall()
        return {r["name"]: {"commit": r["held_commit"], "actor": r["held_actor"], "reason": r["held_reason"]}
                for r in rows}  # fmt: skip

    def placement(self, name: str) -> Placement | None:
        """Where stack `name` was last deployed (engine kind, engine address), or None if it is not deployed."""
        with self._lock:
            row = self._db.execute("SELECT placement FROM stacks WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        found = json.loads(row["placement"]) if row["placement"] else {}
        return Placement(str(found.get("engine") or "compose"), found.get("docker_host"))

    def hosts(self) -> list[str]:
        """The other engines (x-deployer.docker_host) deployed stacks run on, sorted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT json_extract(placement, '$.docker_host') AS host FROM stacks"
                " WHERE json_extract(placement, '$.docker_host') IS NOT NULL ORDER BY host"
            ).fetchall()
        return [str(r["host"]) for r in rows]

    def placements(self) -> dict[str, Placement]:
        """Where each deployed stack runs."""
        with self._lock:
            rows = self._db.execute("SELECT name, placement FROM stacks").fetchall()
        found = {}
        for row in rows:
            placed = json.loads(row["placement"]) if row["placement"] else {}
            found[row["name"]] = Placement(str(placed.get("engine") or "compose"), placed.get("docker_host"))
        return found

    def images(self, name: str) -> dict[str, str]:
        """The image id each service of `name` ran at its last good commit ({} when not recorded)."""
        with self._lock:
            row = self._db.execute("SELECT images FROM stacks WHERE name = ?", (name,)).fetchone()
        found: dict[str, str] = json.loads(row["images"]) if row is not None and row["images"] else {}
        return found

    def last_good(self) -> dict[str, str]:
        """Each deployed stack's last successfully deployed commit."""
        with self._lock:
            rows = self._db.execute("SELECT name, last_good_commit FROM stacks").fetchall()
        return {row["name"]: row["last_good_commit"] for row in rows}

    def stacks(self) -> list[StackRecord]:
        """Every stack deployer has tried to deploy, with its last good commit (None if never).

        Its last state is that of its newest stack row that left `pending` (rows are written when a
        deployment starts, so the newest row is the latest run); one index lookup per stack, however
        long the history.
        """
        query = """
            WITH names AS (SELECT DISTINCT name FROM deployment_stacks UNION SELECT name FROM stacks)
            SELECT n.name, s.last_good_commit, s.deployed_at, s.deployment_id, s.placement,
                   (SELECT ds.state FROM deployment_stacks ds INDEXED BY deployment_stacks_by_name
                    WHERE ds.name = n.name AND ds.state != 'pending' ORDER BY ds.rowid DESC LIMIT 1) AS last_state,
                   COALESCE(s.depends_on, (SELECT ds.depends_on FROM deployment_stacks ds INDEXED BY
                    deployment_stacks_by_name WHERE ds.name = n.name ORDER BY ds.rowid DESC LIMIT 1)) AS depends_on
            FROM names n LEFT JOIN stacks s ON s.name = n.name
            ORDER BY 1"""
        with self._lock:
            rows = self._db.execute(query).fetchall()
        found = []
        for r in rows:
            placed = json.loads(r["placement"]) if r["placement"] else {}
            found.append(StackRecord(
                r["name"], r["last_good_commit"], r["deployed_at"], r["deployment_id"], r["last_state"],
                tuple(json.loads(r["depends_on"] or "[]")), str(placed.get("engine") or "compose"),
                placed.get("docker_host"),
            ))  # fmt: skip
        return found

    def deployments(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest deployments first, each in the contract's shape."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM deployments ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
            return [self._shape(row) for row in rows]

    def deployment(self, deployment_id: str, *, with_output: bool = False) -> dict[str, Any] | None:
        """One deployment in the contract's shape; `with_output` adds each stack's kept compose output."""
        with self._lock:
            row = self._db.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
            return None if row is None else self._shape(row, with_output=with_output)

    def _shape(self, row: Mapping[str, Any], *, with_output: bool = False) -> dict[str, Any]:
        rows = self._db.execute(
            "SELECT * FROM deployment_stacks WHERE deployment_id = ? ORDER BY position", (row["id"],)
        ).fetchall()
        stacks = [s for s in rows if s["state"] != StackState.ORPHANED]
        reason = Reason(row["error_code"]) if row["error_code"] in Reason.__members__.values() else None
        return {
            "id": row["id"], "commit": row["commit_sha"], "ref": row["ref"], "trigger": row["trigger"],
            "actor": row["actor"], "state": row["state"], "created_at": row["created_at"],
            "superseded_by": row["superseded_by"], "reason": row["reason"],
            "started_at": row["started_at"], "finished_at": row["finished_at"], "error": row["error"],
            "error_reason": reason, "transient": None if reason is None else reason in TRANSIENT,
            "retry_at": row["retry_at"], "rewound_from": json.loads(row["rewound_from"] or "[]"),
            "orphaned": [s["name"] for s in rows if s["state"] == StackState.ORPHANED],
            "stacks": [
                {
                    "name": s["name"], "action": s["action"], "reasons": json.loads(s["reasons"]),
                    "state": s["state"], "started_at": s["started_at"], "finished_at": s["finished_at"],
                    "error": s["error"], **({"rolled_back_to": s["rolled_back_to"]} if s["rolled_back_to"] else {}),
                    **({"output": s["output"]} if with_output else {}),
                }
                for s in stacks
            ],
        }  # fmt: skip


@dataclass(frozen=True)
class AuditEvent:
    """One recorded audit event: its id, its timestamp (ns) and its JSON line, as shipped."""

    id: int
    ts_ns: int
    line: str

    @property
    def fields(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.line)
        return found


def write_told(db: sqlite3.Connection, told: Told) -> None:
    """Write `told`'s events and statuses inside the caller's transaction."""
    if told.events:
        now = time.time_ns()
        rows = []
        for i, event in enumerate(told.events):
            ts = now + i  # one distinct timestamp each: Loki keeps entries of a stream apart by it
            f = event.fields
            line: dict[str, Any] = {"event": event.name, "deployment_id": f.get("deployment_id"),
                                    "commit": f.get("commit"), "time": rfc3339(ts / 1e9)}  # fmt: skip
            line.update({key: value for key, value in f.items() if value is not None and key not in line})
            rows.append((ts, event.name, f.get("deployment_id"), f.get("stack"), f.get("actor"),
                         json.dumps(line, separators=(",", ":"), default=str)))  # fmt: skip
        db.executemany(
            "INSERT INTO audit_events (ts_ns, event, deployment_id, stack, actor, line) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
    by_target: dict[StatusTarget, list[tuple[str, CommitStatus]]] = {}
    for target, deployment_id, status in told.statuses:
        by_target.setdefault(target, []).append((deployment_id, status))
    for target, statuses in by_target.items():
        insert_statuses(db, target, statuses)


def insert_statuses(db: sqlite3.Connection, target: StatusTarget, statuses: Sequence[tuple[str, CommitStatus]]) -> None:
    """Queue commit statuses, (deployment id, status) each, in the outbox (deployer.queue delivers them)."""
    now = time.time()
    db.executemany(
        "INSERT INTO status_outbox (deployment_id, forge, api_url, repo, sha, context, state, description,"
        " target_url, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (deployment_id, target.forge, target.api_url, target.repo, s.sha, s.context, s.state, s.description,
             s.target_url, now)
            for deployment_id, s in statuses
        ],
    )  # fmt: skip


def duration_bucket(duration_ms: int | None) -> int | None:
    """The DURATION_BUCKETS index a duration falls in (len(DURATION_BUCKETS): above the last), None without one."""
    if duration_ms is None:
        return None
    return next((i for i, bound in enumerate(DURATION_BUCKETS) if duration_ms <= round(bound * 1000)),
                len(DURATION_BUCKETS))  # fmt: skip


def _duration_ms(started: float | None, finished: float | None) -> int | None:
    return None if started is None or finished is None else round((finished - started) * 1000)


def _stamp(epoch: float | None) -> str | None:
    return None if epoch is None else rfc3339(epoch)


def _epoch(stamp: str | None) -> float | None:
    return None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

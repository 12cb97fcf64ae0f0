"""The SQLite state store on disk: upgrades of an older database, and writers from several processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from deployer.model import Action, Intake, Plan, PlannedStack, StackResult, StackState, Trigger
from deployer.queue import UNDELIVERED, Queue
from deployer.state import StateStore

# The schema of the first release (before the service added columns).
FIRST_SCHEMA = """
CREATE TABLE deployments (id TEXT PRIMARY KEY, commit_sha TEXT, ref TEXT NOT NULL, trigger TEXT NOT NULL,
    actor TEXT, state TEXT NOT NULL, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, error TEXT,
    error_code TEXT);
CREATE TABLE deployment_stacks (deployment_id TEXT NOT NULL REFERENCES deployments(id), position INTEGER NOT NULL,
    name TEXT NOT NULL, action TEXT NOT NULL, reasons TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
    started_at TEXT, finished_at TEXT, error TEXT, output TEXT, PRIMARY KEY (deployment_id, name));
CREATE TABLE stacks (name TEXT PRIMARY KEY, last_good_commit TEXT NOT NULL, deployed_at TEXT NOT NULL,
    deployment_id TEXT NOT NULL);
INSERT INTO stacks VALUES ('web', 'a', '2026-01-01T00:00:00.000Z', 'old');
"""


def test_an_older_state_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_SCHEMA)
    store = StateStore(path)
    assert store.last_good() == {"web": "a"}
    deployment_id = Queue(store).enqueue(Intake(trigger=Trigger.CLI, ref="main", commit=None)).deployment_id
    plan = Plan(target="b" * 40, base=None, stacks=(PlannedStack("web", Action.DEPLOY, ("x",)),), order=(("web",),))
    store.start_deployment(deployment_id, plan, depends_on={"web": ("db",)})
    store.record_stack(deployment_id, StackResult("web", Action.DEPLOY, StackState.SUCCEEDED, started_at=1.0,
                                                  finished_at=2.0), commit="b" * 40)  # fmt: skip
    assert store.last_good() == {"web": "b" * 40}
    assert [s.depends_on for s in store.stacks()] == [("db",)]


WRITER = """
import sys
from deployer.model import Intake, Trigger
from deployer.queue import Queue
from deployer.state import StateStore
queue = Queue(StateStore(__import__("pathlib").Path(sys.argv[1])))
for _ in range(200):
    queue.enqueue(Intake(trigger=Trigger.CLI, ref="main", commit=None, actor=sys.argv[2]))
"""


def test_writers_in_several_processes_all_land(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)]) for n in range(3)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT actor, COUNT(*) FROM deployments GROUP BY actor").fetchall() == [
            ("0", 200), ("1", 200), ("2", 200),
        ]  # fmt: skip


OPENER = """
import pathlib, sys, time
from deployer.model import Intake, Trigger
from deployer.queue import Queue
from deployer.state import StateStore
go = pathlib.Path(sys.argv[2])
pathlib.Path(f"{go}.ready-{sys.argv[3]}").touch()
while not go.exists():
    time.sleep(0.001)
Queue(StateStore(pathlib.Path(sys.argv[1]))).enqueue(Intake(trigger=Trigger.CLI, ref="main", commit=None,
                                                             actor=sys.argv[3]))
"""


def test_processes_that_open_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Web workers and the deploy worker start together on an empty state directory: each sets up the
    database (WAL mode, schema) and none may fail with 'database is locked'."""
    for attempt in range(5):
        path, go = tmp_path / f"state-{attempt}.db", tmp_path / f"go-{attempt}"
        openers = [subprocess.Popen([sys.executable, "-c", OPENER, str(path), str(go), str(n)],
                                    stderr=subprocess.PIPE, text=True) for n in range(6)]  # fmt: skip
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob(f"go-{attempt}.ready-*"))) < len(openers) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        results = [(o.wait(timeout=120), o.stderr.read() if o.stderr else "") for o in openers]
        assert [code for code, _ in results] == [0] * 6, [err for _, err in results if err]
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT COUNT(*) FROM deployments").fetchone() == (6,)


def test_the_status_reporter_finds_older_undelivered_statuses_by_index(tmp_path: Path) -> None:
    """The reporter sends a commit's statuses in order: for each one due it asks whether an older one of the
    same commit and context is still waiting. Without an index that is a scan of the whole outbox per row,
    and a forge that was down for a while left a backlog the reporter could not get through."""
    store = StateStore(tmp_path / "state.db")
    with store.read() as db:
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + UNDELIVERED, (0.0, 50)))
    assert "status_outbox_waiting (sha=? AND context=? AND repo=? AND id<?)" in plan, plan

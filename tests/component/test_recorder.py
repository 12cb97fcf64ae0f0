"""One recorder: a change of state, the audit events that tell it and the statuses it implies are one
SQLite transaction; `deployer audit` reads the trail back. Real SQLite files, the real CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer.model import (
    Action,
    CommitStatus,
    Event,
    Intake,
    Outcome,
    Plan,
    PlannedStack,
    StackResult,
    StackState,
    StatusTarget,
    Told,
    Trigger,
    told,
)
from deployer.queue import Queue
from deployer.state import StateStore
from tests.helpers import audit_trail

SHA = "c" * 40
TARGET = StatusTarget("gitea", "http://127.0.0.1:9/api/v1", "ops/config")


def started(store: StateStore, name: str = "web") -> str:
    deployment_id = Queue(store).enqueue(Intake(trigger=Trigger.WEBHOOK, ref="refs/heads/main", commit=SHA),
                                         told=told("deployment.queued", {"deployment_id": "x", "commit": SHA})
                                         ).deployment_id  # fmt: skip
    plan = Plan(target=SHA, base=None, stacks=(PlannedStack(name, Action.DEPLOY, ("first deploy",)),),
                order=((name,),))  # fmt: skip
    store.start_deployment(deployment_id, plan)
    return deployment_id


def outbox(store: StateStore) -> list[tuple[str, str, str]]:
    with store.read() as db:
        return [(r["deployment_id"], r["context"], r["state"]) for r in db.execute("SELECT * FROM status_outbox")]


def test_a_deployment_ends_with_its_event_and_final_statuses_in_one_transaction(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    deployment_id = started(store)
    finals = Told(
        (Event("deployment.finished", {"deployment_id": deployment_id, "commit": SHA, "result": "succeeded"}),),
        ((TARGET, deployment_id, CommitStatus(SHA, "deployer", "success", "deployed")),),
    )
    store.finish_deployment(deployment_id, Outcome(deployment_id, SHA), told=finals)
    assert store.deployment(deployment_id)["state"] == "succeeded"  # type: ignore[index]
    assert [e["event"] for e in audit_trail(tmp_path)][-1] == "deployment.finished"
    assert outbox(store) == [(deployment_id, "deployer", "success")]


def test_a_change_whose_statuses_cannot_be_written_is_not_recorded_either(tmp_path: Path) -> None:
    """Nothing recorded without its events and statuses, or the other way round: a status row the outbox
    refuses (here a NOT NULL column left empty) rolls the deployment's end and its event back with it."""
    store = StateStore(tmp_path / "state.db")
    deployment_id = started(store)
    events_before = len(audit_trail(tmp_path))
    broken = Told(
        (Event("deployment.finished", {"deployment_id": deployment_id, "commit": SHA}),),
        ((TARGET, deployment_id, CommitStatus(SHA, "deployer", "success", None)),),  # type: ignore[arg-type]
    )
    with pytest.raises(sqlite3.IntegrityError):
        store.finish_deployment(deployment_id, Outcome(deployment_id, SHA), told=broken)
    assert store.deployment(deployment_id)["state"] == "running"  # type: ignore[index]
    assert len(audit_trail(tmp_path)) == events_before
    assert outbox(store) == []


def test_a_stack_success_moves_its_commit_with_its_event(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    deployment_id = started(store)
    result = StackResult("web", Action.DEPLOY, StackState.SUCCEEDED, started_at=1.0, finished_at=2.5)
    event = told("stack.succeeded", {"deployment_id": deployment_id, "commit": SHA, "stack": "web",
                                     "duration_ms": 1500})  # fmt: skip
    store.record_stack(deployment_id, result, commit=SHA, told=event)
    assert store.last_good() == {"web": SHA}
    [recorded] = store.events(stack="web")
    assert (recorded.fields["event"], recorded.fields["duration_ms"]) == ("stack.succeeded", 1500)


def test_an_events_line_and_timestamp_are_fixed_once_and_distinct(tmp_path: Path) -> None:
    """What Loki deduplicates a resend by: the same (timestamp, line) every time it is read."""
    store = StateStore(tmp_path / "state.db")
    store.tell(told("request.refused", *({"deployment_id": None, "commit": None, "peer": f"10.0.0.{i}"}
                                         for i in range(5))))  # fmt: skip
    first = store.events()
    assert len({e.ts_ns for e in first}) == 5  # one distinct timestamp each, even in one transaction
    assert store.events() == first
    assert all(json.loads(e.line)["time"].endswith("Z") for e in first)
    assert [e.fields["peer"] for e in first] == [f"10.0.0.{i}" for i in range(5)]


def test_a_duplicate_delivery_records_no_second_event(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    queue = Queue(store)
    intake = Intake(trigger=Trigger.WEBHOOK, ref="refs/heads/main", commit=SHA, delivery=("gitea", "d-1"))
    for _ in range(2):
        queue.enqueue(intake, told=told("deployment.queued", {"deployment_id": "x", "commit": SHA}))
    assert [e["event"] for e in audit_trail(tmp_path)] == ["deployment.queued"]


# --- deployer audit -------------------------------------------------------------------------------------


def audit(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "DEPLOYER_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "deployer", "audit", *argv], capture_output=True, text=True,
                          env=env, timeout=60, check=False)  # fmt: skip


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """A state dir with two deployments' events, by two actors."""
    store = StateStore(tmp_path / "state.db")
    store.tell(told("deployment.queued", {"deployment_id": "d1", "commit": SHA, "actor": "dora", "trigger": "manual"},
                    {"deployment_id": "d2", "commit": SHA, "actor": "op", "trigger": "webhook"}))  # fmt: skip
    store.tell(told("secrets.decrypted", {"deployment_id": "d1", "commit": SHA, "stack": "auth",
                                          "files": ["secrets/auth.env"]}))  # fmt: skip
    store.tell(told("stack.failed", {"deployment_id": "d2", "commit": SHA, "stack": "web", "reason": "Unhealthy",
                                     "error": "web: unhealthy after 60s"}))  # fmt: skip
    store.close()
    return tmp_path


def test_deployer_audit_prints_the_trail_with_filters(trail: Path) -> None:
    every = audit(trail, "--json")
    assert every.returncode == 0, every.stderr
    lines = [json.loads(line) for line in every.stdout.splitlines()]
    assert [e["event"] for e in lines] == ["deployment.queued", "deployment.queued", "secrets.decrypted",
                                           "stack.failed"]  # fmt: skip
    by_actor = audit(trail, "--actor", "dora", "--json").stdout.splitlines()
    assert [json.loads(line)["deployment_id"] for line in by_actor] == ["d1"]
    assert len(audit(trail, "--deployment", "d2", "--json").stdout.splitlines()) == 2
    assert len(audit(trail, "--stack", "auth", "--json").stdout.splitlines()) == 1
    assert len(audit(trail, "--event", "stack.failed", "--since", "1h", "--json").stdout.splitlines()) == 1
    assert audit(trail, "--until", "2000-01-01T00:00:00Z").stdout == ""
    text = audit(trail, "--stack", "web").stdout
    assert "stack.failed d2 cccccccccccc stack=web reason=Unhealthy error='web: unhealthy after 60s'" in text


def test_deployer_audit_refuses_a_time_it_cannot_read(trail: Path) -> None:
    bad = audit(trail, "--since", "yesterday")
    assert bad.returncode == 2 and "'yesterday': not an RFC 3339 time or an age like 15m" in bad.stderr


def test_deployer_audit_follows_new_events(trail: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DEPLOYER_STATE_DIR": str(trail)}
    follower = subprocess.Popen([sys.executable, "-m", "deployer", "audit", "--follow", "--json"], env=env,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert follower.stdout is not None
        seen = [json.loads(follower.stdout.readline())["event"] for _ in range(4)]
        assert seen[-1] == "stack.failed"
        store = StateStore(trail / "state.db")
        store.tell(told("deployment.finished", {"deployment_id": "d2", "commit": SHA, "result": "failed"}))
        started_at = time.monotonic()
        assert json.loads(follower.stdout.readline())["event"] == "deployment.finished"
        assert time.monotonic() - started_at < 30
    finally:
        follower.kill()
        follower.wait(timeout=10)

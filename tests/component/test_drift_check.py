"""The drift check use case (deployer.pipeline.drift_check) against engines that cannot answer: a socket nothing
listens on (the deployer's own engine down, as after a crash) and another host's that does not exist. Drift is
then "unknown", said once, and never repaired: no repair storm however often it is checked. The state store is
real (SQLite); the stacks' records are written as a good deploy leaves them."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

from deployer.model import rfc3339
from deployer.pipeline import Deps, check_drift
from deployer.settings import Settings

BASELINE = {"main": {"config_hash": "a" * 64, "image": "sha256:" + "b" * 64, "containers": 1, "running": True}}


def deployed(deps: Deps, name: str, *, docker_host: str | None, paused: bool = False) -> None:
    """A stack's record as its last good deploy wrote it (deployer.state.StateStore.record_stack)."""
    placement = json.dumps({"engine": "compose", "docker_host": docker_host})
    with deps.store._tx() as db:
        db.execute("INSERT INTO stacks (name, last_good_commit, deployed_at, deployment_id, placement, baseline,"
                   " paused_at, paused_actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (name, "c" * 40, rfc3339(), f"dep-{name}", placement, json.dumps(BASELINE),
                    rfc3339() if paused else None, "ops" if paused else None))  # fmt: skip


def dead_socket(tmp_path: Path) -> str:
    """A unix socket path that refuses connections (bound once, then closed)."""
    path = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    return f"unix://{path}"


def repairing(deps: Deps, tmp_path: Path) -> Deps:
    settings = replace(deps.settings, drift="repair", docker_env={"DOCKER_HOST": dead_socket(tmp_path)})
    return Deps.from_settings(settings)


def test_an_engine_that_is_down_makes_drift_unknown_and_is_never_repaired(deps: Deps, tmp_path: Path) -> None:
    down = repairing(deps, tmp_path)
    deployed(down, "web", docker_host=None)
    deployed(down, "far", docker_host="ssh://nobody@127.0.0.1:1")
    deployed(down, "held-still", docker_host=None, paused=True)
    for _ in range(5):
        checked = check_drift(down)
        assert checked.repairs == {} and checked.skipped is None
    assert [f.kind for f in checked.found["web"]] == ["unknown"]
    assert "the engine could not be asked what runs" in checked.found["web"][0].detail
    assert [f.kind for f in checked.found["far"]] == ["unknown"]
    assert checked.found["held-still"] == []  # paused: stopped on purpose, never drift
    assert down.store.deployments() == []  # nothing queued, five checks on
    events = down.store.events(event="stack.drifted")
    assert sorted((e.fields["stack"], e.fields["result"]) for e in events) == [("far", "unknown"), ("web", "unknown")]
    assert {e.fields["repair"] for e in events} == {"not repaired: the engine did not answer"}
    assert down.store.drift()["web"][0]["kind"] == "unknown"
    written = down.store._db.total_changes
    check_drift(down)
    assert down.store._db.total_changes == written  # findings unchanged: no row rewritten, no event
    down.store.close()


def test_no_check_runs_while_a_deployment_is_queued(deps: Deps, tmp_path: Path) -> None:
    down = repairing(deps, tmp_path)
    deployed(down, "web", docker_host=None)
    with down.store._tx() as db:
        db.execute("INSERT INTO deployments (id, ref, trigger, state, created_at) VALUES"
                   " ('q1', 'refs/heads/main', 'webhook', 'queued', ?)", (rfc3339(),))  # fmt: skip
    assert check_drift(down).skipped == "a deployment is queued or running"
    assert down.store.drift()["web"] == []
    down.store.close()


def test_drift_settings_default_to_report_every_300_seconds_and_bad_values_name_the_variable() -> None:
    base = {"DEPLOYER_WEBHOOK_SECRET": "x" * 32}
    settings = Settings.from_env(base)
    assert (settings.drift, settings.drift_interval, settings.drift_max_repairs) == ("report", 300, 3)
    changed = Settings.from_env({**base, "DEPLOYER_DRIFT": "Repair", "DEPLOYER_DRIFT_INTERVAL": "0"})
    assert (changed.drift, changed.drift_interval) == ("repair", 0)
    for name, value in (("DEPLOYER_DRIFT", "fix"), ("DEPLOYER_DRIFT_INTERVAL", "-1"),
                        ("DEPLOYER_DRIFT_MAX_REPAIRS", "many")):  # fmt: skip
        try:
            Settings.from_env({**base, name: value})
        except Exception as error:  # noqa: BLE001 -- the message is what is checked
            assert name in str(error), error
        else:
            raise AssertionError(f"{name}={value} was accepted")

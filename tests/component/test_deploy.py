"""The deploy engine end to end against a real Docker engine, real compose, git, sops and age."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from deployer.model import Action, Outcome, Reason, StackResult, StackState
from deployer.pipeline import Deps, Request, SilentProgress, deploy
from tests.conftest import AgeKey
from tests.helpers import ConfigRepo, audit_trail, service

pytestmark = pytest.mark.usefixtures("engine")

SECRET = "s3cret-value-that-must-never-reach-disk"


def containers(prefix: str) -> dict[str, dict[str, str]]:
    """Every container of this test's projects: service name -> id, start time, health."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", "label=com.docker.compose.project", "--format", "{{.ID}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not out:
        return {}
    found = {}
    for item in json.loads(
        subprocess.run(["docker", "inspect", *out], capture_output=True, text=True, check=True).stdout
    ):
        labels = item["Config"]["Labels"]
        if not labels.get("com.docker.compose.project", "").startswith(prefix):
            continue
        key = f"{labels['com.docker.compose.project']}/{labels['com.docker.compose.service']}"
        health = item["State"].get("Health", {}).get("Status", "none")
        found[key] = {"id": item["Id"], "started": item["State"]["StartedAt"], "health": health,
                      "env": item["Config"]["Env"]}  # fmt: skip
    return found


def run(deps: Deps, repo: ConfigRepo, *stacks: str):  # type: ignore[no-untyped-def]
    return deploy(deps, Request(repo_url=repo.url, ref="main", stacks=stacks))


def states(outcome) -> dict[str, StackState]:  # type: ignore[no-untyped-def]
    return {r.name: r.state for r in outcome.results}


def test_first_deploy_orders_stacks_and_prepares_networks_and_directories(
    deps: Deps, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    data = tmp_path / "data" / "db"
    net = f"{prefix}_public"
    repo.stack(f"{prefix}-a", {"web": service(healthy_after=1, networks=[net])},
               deployer={"networks": [net], "directories": [{"path": str(data), "owner": "1000:1000", "mode": "0750"}]},
               networks={net: {"external": True}})  # fmt: skip
    repo.stack(f"{prefix}-b", deployer={"depends_on": [f"{prefix}-a"]})
    repo.stack(f"{prefix}-c", deployer={"depends_on": [f"{prefix}-b"]})
    repo.stack(f"{prefix}-d")
    repo.commit()

    outcome = run(deps, repo)

    assert outcome.exit_code == 0, outcome
    assert set(states(outcome).values()) == {StackState.SUCCEEDED}
    by_name = {r.name: r for r in outcome.results}
    assert by_name[f"{prefix}-b"].started_at >= by_name[f"{prefix}-a"].finished_at  # type: ignore[operator]
    assert by_name[f"{prefix}-c"].started_at >= by_name[f"{prefix}-b"].finished_at  # type: ignore[operator]
    running = containers(prefix)
    assert {c["health"] for c in running.values()} == {"healthy"}
    assert len(running) == 4
    stat = data.stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (1000, 1000, 0o750)
    assert subprocess.run(["docker", "network", "inspect", net], capture_output=True, check=False).returncode == 0
    assert deps.store.last_good() == {f"{prefix}-{n}": outcome.commit for n in "abcd"}


def test_push_that_changes_nothing_under_stacks_recreates_nothing(deps: Deps, repo: ConfigRepo, prefix: str) -> None:
    repo.stack(f"{prefix}-a")
    repo.stack(f"{prefix}-b", deployer={"depends_on": [f"{prefix}-a"]})
    repo.commit()
    assert run(deps, repo).exit_code == 0
    before = containers(prefix)

    repo.write("docs/notes.md", "nothing to deploy\n")
    repo.commit("docs only")
    outcome = run(deps, repo)

    assert outcome.exit_code == 0
    assert outcome.results == ()
    assert containers(prefix) == before


def test_only_the_changed_stack_is_redeployed(deps: Deps, repo: ConfigRepo, prefix: str) -> None:
    repo.stack(f"{prefix}-a")
    repo.stack(f"{prefix}-b", deployer={"depends_on": [f"{prefix}-a"]})
    repo.commit()
    run(deps, repo)
    before = containers(prefix)

    repo.stack(f"{prefix}-b", {"main": service(environment={"VERSION": "2"})}, deployer={"depends_on": [f"{prefix}-a"]})
    outcome = run(deps, repo)  # not committed yet: the working copy is never deployed
    assert outcome.results == ()
    repo.commit("b v2")
    outcome = run(deps, repo)

    assert [(r.name, r.state) for r in outcome.results] == [(f"{prefix}-b", StackState.SUCCEEDED)]
    after = containers(prefix)
    assert after[f"{prefix}-a/main"] == before[f"{prefix}-a/main"]
    assert after[f"{prefix}-b/main"]["id"] != before[f"{prefix}-b/main"]["id"]
    assert "VERSION=2" in after[f"{prefix}-b/main"]["env"]


def test_secrets_reach_compose_but_never_disk_logs_or_state(
    deps: Deps, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    repo.secret("secrets/app.env", {"APP_TOKEN": SECRET})
    repo.secret("secrets/unrelated.env", {"OTHER": "not-decrypted"})
    repo.stack(f"{prefix}-app", {"main": service(environment={"TOKEN": "${APP_TOKEN}"})},
               deployer={"secrets": ["secrets/app.env"]})  # fmt: skip
    repo.commit()
    outcome = run(deps, repo)
    assert outcome.exit_code == 0, outcome
    assert f"TOKEN={SECRET}" in containers(prefix)[f"{prefix}-app/main"]["env"]

    repo.secret("secrets/app.env", {"APP_TOKEN": SECRET + "-rotated"})
    repo.commit("rotate")
    outcome = run(deps, repo)
    assert [r.name for r in outcome.results] == [f"{prefix}-app"]
    assert f"TOKEN={SECRET}-rotated" in containers(prefix)[f"{prefix}-app/main"]["env"]

    journal = audit_trail(deps.settings.state_dir)
    decrypted = [e for e in journal if e["event"] == "secrets.decrypted"]
    assert decrypted and all(e["files"] == ["secrets/app.env"] for e in decrypted)
    assert_nowhere_on_disk(deps.settings.state_dir, SECRET)


def assert_nowhere_on_disk(folder: Path, value: str) -> None:
    deps_files = [p for p in folder.rglob("*") if p.is_file()]
    assert deps_files
    for path in deps_files:
        assert value.encode() not in path.read_bytes(), f"plaintext secret found in {path}"


def test_failure_skips_dependents_lets_unrelated_finish_and_keeps_last_good(
    deps: Deps, repo: ConfigRepo, prefix: str
) -> None:
    a, b, c, d = (f"{prefix}-{n}" for n in "abcd")
    repo.stack(a)
    repo.stack(b, deployer={"depends_on": [a]})
    repo.stack(c, deployer={"depends_on": [b]})
    good = repo.commit()
    assert run(deps, repo).exit_code == 0

    broken = service(healthcheck=False) | {"healthcheck": {"test": ["CMD", "false"], "interval": "1s", "retries": 1}}
    repo.stack(b, {"main": broken}, deployer={"depends_on": [a], "wait_timeout": 20})
    repo.stack(c, {"main": service(environment={"V": "2"})}, deployer={"depends_on": [b]})
    repo.stack(d)
    repo.commit("break b")
    outcome = run(deps, repo)

    assert outcome.exit_code == 1
    results = {r.name: r for r in outcome.results}
    assert results[b].state is StackState.ROLLED_BACK and results[b].rolled_back_to == good  # DEPLOYER_ROLLBACK
    assert results[b].reason is Reason.HEALTH_CHECK_FAILED
    assert results[b].error is not None and results[b].error.startswith(
        f"stacks/{b}/compose.yaml: did not become healthy"
    )
    assert results[b].output and "unhealthy" in results[b].output
    assert results[c].state is StackState.SKIPPED and results[c].reason is Reason.DEPENDENCY_FAILED
    assert results[d].state is StackState.SUCCEEDED
    last_good = deps.store.last_good()
    assert last_good[b] == good and last_good[c] == good and last_good[d] == outcome.commit
    recorded = deps.store.deployment(outcome.deployment_id)
    assert recorded is not None and recorded["state"] == "failed"
    assert {s["name"]: s["state"] for s in recorded["stacks"]} == {b: "rolled_back", c: "skipped", d: "succeeded"}


def test_compose_up_failure_is_reported_with_its_output(deps: Deps, repo: ConfigRepo, prefix: str) -> None:
    repo.stack(f"{prefix}-a", {"main": service(image=f"{prefix}/missing:1")})
    repo.commit()
    outcome = run(deps, repo)
    result = outcome.results[0]
    assert outcome.exit_code == 1
    assert result.state is StackState.FAILED and result.reason is Reason.COMPOSE_FAILED
    assert result.error and result.error.startswith(f"stacks/{prefix}-a/compose.yaml: compose up failed:")
    assert f"{prefix}-a" not in deps.store.last_good()


@pytest.mark.parametrize("bad", ["compose", "wrong-key", "catalog", "commit"])
def test_bad_input_deploys_nothing(deps: Deps, repo: ConfigRepo, prefix: str, other_age_key: AgeKey, bad: str) -> None:
    good, other = f"{prefix}-good", f"{prefix}-other"
    repo.stack(good)
    repo.stack(other)
    if bad == "compose":
        repo.stack(other, {"main": service(ports=["not-a-port"])})
    elif bad == "wrong-key":
        repo.secret("secrets/other.env", {"K": "v"}, recipient=other_age_key.recipient)
        repo.stack(other, deployer={"secrets": ["secrets/other.env"]})
    elif bad == "catalog":
        repo.stack(other, deployer={"depends_on": [f"{prefix}-nowhere"]})
    repo.commit()

    outcome = deploy(deps, Request(repo_url=repo.url, ref="f" * 40 if bad == "commit" else "main"))

    assert outcome.exit_code == 2
    assert outcome.error
    if bad != "commit":
        assert f"stacks/{other}/compose.yaml" in outcome.error or "secrets/other.env" in outcome.error
    assert containers(prefix) == {}
    assert deps.store.last_good() == {}


def test_removed_stack_is_orphaned_unless_pruning(deps: Deps, repo: ConfigRepo, prefix: str, tmp_path: Path) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    repo.stack(a)
    repo.stack(b)
    repo.commit()
    run(deps, repo)
    repo.remove(f"stacks/{b}")
    repo.commit("drop b")

    outcome = run(deps, repo)
    assert outcome.results == ()
    assert f"{b}/main" in containers(prefix)

    pruning = Deps(replace(deps.settings, prune=True), deps.runner, deps.backend, deps.store)
    outcome = run(pruning, repo)
    assert [(r.name, r.action, r.state) for r in outcome.results] == [(b, Action.REMOVE, StackState.SUCCEEDED)]
    assert set(containers(prefix)) == {f"{a}/main"}
    assert set(deps.store.last_good()) == {a}


def test_a_stack_starts_when_its_own_dependencies_are_healthy(deps: Deps, repo: ConfigRepo, prefix: str) -> None:
    slow, fast, after_fast = f"{prefix}-slow", f"{prefix}-fast", f"{prefix}-after"
    repo.stack(slow, {"main": service(healthy_after=6)})
    repo.stack(fast, {"main": service(healthy_after=1)})
    repo.stack(after_fast, deployer={"depends_on": [fast]})
    repo.commit()
    outcome = run(deps, repo)
    results = {r.name: r for r in outcome.results}
    assert outcome.exit_code == 0
    # `after` sits in the same level as nothing slow: it must not wait for `slow` to finish.
    assert results[after_fast].finished_at < results[slow].finished_at  # type: ignore[operator]
    assert results[fast].started_at < results[slow].finished_at  # type: ignore[operator]


def test_explicit_stacks_redeploy_even_when_unchanged(deps: Deps, repo: ConfigRepo, prefix: str) -> None:
    repo.stack(f"{prefix}-a")
    repo.stack(f"{prefix}-b")
    repo.commit()
    run(deps, repo)
    outcome = run(deps, repo, f"{prefix}-a")
    assert [(r.name, r.state) for r in outcome.results] == [(f"{prefix}-a", StackState.SUCCEEDED)]


def test_state_survives_a_new_process(deps: Deps, repo: ConfigRepo, prefix: str) -> None:
    repo.stack(f"{prefix}-a")
    sha = repo.commit()
    run(deps, repo)
    env = {**os.environ, "DEPLOYER_STATE_DIR": str(deps.settings.state_dir)}
    status = subprocess.run(["deployer", "status", "--json"], capture_output=True, text=True, env=env, check=True)
    stacks = json.loads(status.stdout)["stacks"]
    assert [(s["name"], s["last_good_commit"]) for s in stacks] == [(f"{prefix}-a", sha)]


def test_the_deploy_lock_is_held_until_the_last_stack_is_up(deps: Deps, repo: ConfigRepo, prefix: str) -> None:
    repo.stack(f"{prefix}-slow", {"main": service(healthy_after=3)})
    repo.commit()
    running = threading.Event()

    class Watch(SilentProgress):
        def stack(self, result: StackResult) -> None:
            if result.state is StackState.RUNNING:
                running.set()

    first: list[Outcome] = []
    worker = threading.Thread(target=lambda: first.append(deploy(deps, Request(repo.url, "main"), progress=Watch())))
    worker.start()
    assert running.wait(60)
    second = deploy(deps, Request(repo.url, "main"))
    worker.join()

    assert second.exit_code == 1 and second.error and "another deployment is running" in second.error
    assert first[0].exit_code == 0


def test_shared_env_reaches_every_stack_under_its_own_env_and_a_change_redeploys_them_all(
    deps: Deps, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    repo.write("stacks/shared.env", "DOMAIN=home.example.net\n")
    repo.write(f"stacks/{b}/.env", "DOMAIN=b.example.net\n")
    data = tmp_path / "data"
    for name in (a, b):
        repo.stack(name, {"main": service(environment={"D": "${DOMAIN:?set DOMAIN in stacks/shared.env}"})},
                   deployer={"directories": [{"path": f"{data}/${{DOMAIN}}"}]})  # fmt: skip
    repo.commit("shared variables")
    assert run(deps, repo).exit_code == 0
    env = {key: item["env"] for key, item in containers(prefix).items()}
    assert "D=home.example.net" in env[f"{a}/main"] and "D=b.example.net" in env[f"{b}/main"]
    assert (data / "home.example.net").is_dir() and (data / "b.example.net").is_dir()

    repo.write("stacks/shared.env", "DOMAIN=new.example.net\n")
    repo.commit("a new domain")
    outcome = run(deps, repo)
    assert outcome.exit_code == 0
    plan = deps.store.deployment(outcome.deployment_id)
    assert plan is not None
    assert {s["name"]: s["reasons"] for s in plan["stacks"]} == {a: ["stacks/shared.env"], b: ["stacks/shared.env"]}
    assert "D=new.example.net" in containers(prefix)[f"{a}/main"]["env"]

"""What runs is what the branch says, tried the way an operator and an attacker would.

Each test runs a real `deployer serve` (gunicorn web workers and the deploy worker) against a config
repository made with real git, real sops and age, and the real Docker engine; the forge's status API
is tests/servers.py's stand-in, which checks the documented request shapes. The faults are real too:
a remote renamed away, an age key file moved, the deploy lock held by another process, history
rewritten and garbage-collected.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import AgeKey
from tests.deliveries import push_payload, sign
from tests.e2e.conftest import Serve
from tests.e2e.served import BROKEN, SECRET, Served, container_env, http, wait_for
from tests.helpers import ConfigRepo, git, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def version(repo: ConfigRepo, name: str, value: str, **deployer: object) -> str:
    repo.stack(name, {"main": service(environment={"VERSION": value})}, deployer=deployer or None)
    return repo.commit(f"{name} v{value}")


def test_a_push_of_a_commit_not_on_the_branch_is_refused_and_nothing_deploys(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    """A signed push naming main with the sha of a commit that exists only on another branch, or only in a
    fork's pull request (refs/pull/*), deploys nothing: the mirror never even fetches it."""
    name = f"{prefix}-app"
    good = version(repo, name, "1")
    git(repo.path, "checkout", "--quiet", "-b", "feature")
    evil = version(repo, name, "evil")
    git(repo.path, "update-ref", "refs/pull/9/head", evil)
    git(repo.path, "checkout", "--quiet", "main")
    served = serve()
    assert served.finished(served.push(good))["state"] == "succeeded"

    refused = served.finished(served.push(evil, before=good))
    assert refused["state"] == "failed", refused
    assert (refused["commit"], refused["error_reason"], refused["transient"]) == (evil, "NotOnBranch", False)
    assert refused["error"] == f"commit {evil[:12]} is not on main (its head is {good[:12]})"
    assert refused["stacks"] == []
    assert container_env(name)["VERSION"] == "1"
    assert served.deployed(name) == good
    wait_for(lambda: forge.latest(evil).get("deployer") == "error", timeout=30, what="the refusal's status")
    status = [p for p in forge.posted if p.sha == evil and p.context == "deployer"][-1]
    assert status.description == f"not deployed: commit {evil[:12]} is not on main (its head is {good[:12]})"
    [event] = [e for e in served.audit() if e["event"] == "request.refused"]
    assert (event["commit"], event["reason"], event["actor"], event["trigger"]) == (
        evil,
        "NotOnBranch",
        "op",
        "webhook",
    )
    assert f"refused: commit {evil[:12]} is not on main" in served.log()
    refs = git(served.state / "mirror.git", "for-each-ref", "--format=%(refname)").split()
    assert refs == ["refs/heads/main"]
    assert forge.errors == []


def test_a_late_push_of_an_older_commit_is_superseded_by_the_head_not_by_a_commit_gone_from_the_branch(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    name = f"{prefix}-app"
    old = version(repo, name, "1")
    new = version(repo, name, "2")
    served = serve()
    assert served.finished(served.push(new))["state"] == "succeeded"
    late = served.finished(served.push(old))
    assert (late["state"], late["superseded_by"]) == ("superseded", new)
    assert container_env(name)["VERSION"] == "2"


def test_a_late_second_delivery_of_a_deployed_commit_leaves_its_statuses_saying_deployed(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    """A commit deployed, then a newer one, then the first commit's push delivered again (a new delivery id,
    as a forge's redeliver button sends it): superseded, not redeployed, and its statuses end saying what its
    own deployment said (they used to flip from `success` to "superseded: not deployed")."""
    name = f"{prefix}-app"
    old = version(repo, name, "1")
    served = serve()
    assert served.finished(served.push(old))["state"] == "succeeded"
    new = version(repo, name, "2")
    assert served.finished(served.push(new, before=old))["state"] == "succeeded"
    wait_for(lambda: forge.latest(old).get("deployer") == "success", timeout=30, what="the first commit's status")
    told_then = forge.latest(old)
    posts_then = len([p for p in forge.posted if p.sha == old])

    late = served.finished(served.push(old))
    assert (late["state"], late["superseded_by"]) == ("superseded", new)
    wait_for(
        lambda: (
            len([p for p in forge.posted if p.sha == old]) > posts_then
            and forge.latest(old).get("deployer") != "pending"
        ),
        timeout=30,
        what="the late delivery's final status",
    )
    assert forge.latest(old) == told_then
    last = [p for p in forge.posted if p.sha == old and p.context == "deployer"][-1]
    assert last.description.startswith("1 of 1 stacks deployed"), last
    assert container_env(name)["VERSION"] == "2"


def test_a_force_push_that_rewinds_the_branch_deploys_the_rewound_head(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    name = f"{prefix}-app"
    first = version(repo, name, "1")
    second = version(repo, name, "2")
    served = serve()
    assert served.finished(served.push(second))["state"] == "succeeded"
    git(repo.path, "reset", "--quiet", "--hard", first)  # what `git push --force` leaves on the remote

    rewound = served.finished(served.push(first, before=second))
    assert rewound["state"] == "succeeded", rewound
    assert rewound["rewound_from"] == [second]
    assert f"history rewound from {second[:12]}" in rewound["reason"]
    [stack] = rewound["stacks"]
    assert stack["reasons"][0] == f"history rewound from {second[:12]}"
    assert f"stacks/{name}/compose.yaml" in stack["reasons"]
    assert container_env(name)["VERSION"] == "1"
    assert served.deployed(name) == first
    wait_for(lambda: forge.latest(first).get("deployer") == "success", timeout=30, what="the final status")
    final = [p for p in forge.posted if p.sha == first and p.context == "deployer"][-1]
    assert final.description.startswith(f"history rewound from {second[:12]}; ")
    assert f"history rewound: {first[:12]} does not contain {second[:12]}" in served.log()


def test_a_rewind_past_history_that_was_pruned_everywhere_still_converges(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    """The commit the stack last deployed is gone from the remote (rewritten and garbage-collected) and from
    the deployer's mirror (deleted, as after a restore from backup): the stack is affected, and redeployed."""
    name = f"{prefix}-app"
    first = version(repo, name, "1")
    second = version(repo, name, "2")
    served = serve()
    assert served.finished(served.push(second))["state"] == "succeeded"
    (served.state / "stacks" / name / "kept.txt").write_text("untracked data\n")
    git(repo.path, "reset", "--quiet", "--hard", first)
    git(repo.path, "reflog", "expire", "--expire=now", "--all")
    git(repo.path, "gc", "--quiet", "--prune=now")
    shutil.rmtree(served.state / "mirror.git")

    rewound = served.finished(served.push(first, before=second))
    assert rewound["state"] == "succeeded", rewound
    [stack] = rewound["stacks"]
    assert stack["reasons"] == [f"history rewound from {second[:12]}",
                                f"previous commit {second[:12]} is not in the repository"]  # fmt: skip
    assert container_env(name)["VERSION"] == "1"
    assert (served.state / "stacks" / name / "kept.txt").read_text() == "untracked data\n"


def test_the_poll_converges_on_a_rewind_that_no_webhook_announced(serve: Serve, repo: ConfigRepo, prefix: str) -> None:
    name = f"{prefix}-app"
    first = version(repo, name, "1")
    second = version(repo, name, "2")
    served = serve(poll=1)
    wait_for(lambda: served.deployed(name) == second, timeout=60, what="the poll to deploy the head")
    git(repo.path, "reset", "--quiet", "--hard", first)
    wait_for(lambda: served.deployed(name) == first, timeout=60, what="the poll to deploy the rewound head")
    assert container_env(name)["VERSION"] == "1"
    newest = served.deployments()[0]
    assert (newest["trigger"], newest["commit"], newest["rewound_from"]) == ("poll", first, [second])
    time.sleep(3)  # three more polls: converged, so nothing more is queued
    assert served.deployments()[0]["id"] == newest["id"]
    branch = served.get("/api/branch")
    assert (branch["head"], branch["next"]) == (first, "nothing") and branch["why"].startswith("converged")


def test_a_remote_renamed_away_and_restored_is_retried_until_the_head_is_deployed(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    name = f"{prefix}-app"
    first = version(repo, name, "1")
    served = serve(poll=1)
    wait_for(lambda: served.deployed(name) == first, timeout=60, what="the poll to deploy the head")
    home, moved = repo.path, tmp_path / "moved-away"
    home.rename(moved)
    repo.path = moved  # the next commit is made where the service cannot see it
    second = version(repo, name, "2")

    failed = served.finished(served.push(second, before=first))
    assert (failed["state"], failed["error_reason"], failed["transient"]) == ("failed", "FetchFailed", True)
    assert failed["commit"] == second and "cannot fetch" in failed["error"]
    branch = wait_for(lambda: (b := served.get("/api/branch"))["why"].startswith("cannot fetch") and b,
                      timeout=30, what="the reconcile loop to say it cannot fetch")  # fmt: skip
    assert branch["next"] == "unknown"
    moved.rename(home)
    repo.path = home
    wait_for(lambda: served.deployed(name) == second, timeout=90, what="the retry to deploy the head")
    assert container_env(name)["VERSION"] == "2"
    retry = next(d for d in served.deployments() if d["state"] == "succeeded" and d["commit"] == second)
    assert retry["trigger"] == "poll" and retry["reason"] == f"retry 1 of {second[:12]} after FetchFailed"


def test_an_age_key_removed_and_restored_is_retried_with_backoff(
    serve: Serve, repo: ConfigRepo, age_key: AgeKey, prefix: str, tmp_path: Path
) -> None:
    name = f"{prefix}-app"
    key = AgeKey(tmp_path / "key.txt", age_key.recipient)
    repo.secret("secrets/app.env", {"APP_TOKEN": "the-secret-token-value"})
    repo.stack(
        name, {"main": service(environment={"TOKEN": "${APP_TOKEN}"})}, deployer={"secrets": ["secrets/app.env"]}
    )
    sha = repo.commit("with a secret")
    served = serve(poll=1, key=key, DEPLOYER_RETRY_BACKOFF="10")  # the key file is not there yet
    first = served.finished(wait_for(served.deployments, what="the poll to queue the head")[-1]["id"])
    assert (first["state"], first["error_reason"], first["transient"]) == ("failed", "KeyUnavailable", True)
    assert f"SOPS_AGE_KEY_FILE {key.path} cannot be read" in first["error"]
    pending = wait_for(lambda: served.deployment(first["id"])["retry_at"], timeout=30, what="a retry to be scheduled")
    branch = served.get("/api/branch")
    assert (branch["next"], branch["retry_at"]) == ("wait", pending)
    assert branch["why"] == f"retry 1 of {sha[:12]} after KeyUnavailable"
    shutil.copy(age_key.path, key.path)
    wait_for(lambda: served.deployed(name) == sha, timeout=90, what="the retry to deploy the head")
    assert container_env(name)["TOKEN"] == "the-secret-token-value"
    assert served.deployment(first["id"])["retry_at"] is None  # the retry it promised happened
    for text in (served.log(), json.dumps(served.audit()), (served.state / "state.db").read_bytes()):
        assert "the-secret-token-value" not in str(text)


def test_a_terminal_failure_is_not_retried_and_waits_for_a_new_commit(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    name = f"{prefix}-app"
    repo.stack(name, {"main": BROKEN})
    broken = repo.commit("an image that is not there")
    served = serve(poll=1)
    failed = served.finished(wait_for(served.deployments, what="the poll to queue the head")[0]["id"])
    assert (failed["state"], failed["error_reason"], failed["transient"]) == ("failed", "ComposeFailed", False)
    time.sleep(4)  # four polls
    assert [d["id"] for d in served.deployments()] == [failed["id"]]
    branch = served.get("/api/branch")
    assert branch["next"] == "nothing"
    assert branch["why"] == f"{broken[:12]} failed (ComposeFailed): waiting for a new commit, a manual request or force"
    fixed = version(repo, name, "1")
    wait_for(lambda: served.deployed(name) == fixed, timeout=60, what="the fix to deploy")


def test_a_push_that_finds_the_deploy_lock_held_names_its_commit_and_is_retried(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    name = f"{prefix}-app"
    sha = version(repo, name, "1")
    state = tmp_path / "state"  # the service's DEPLOYER_STATE_DIR (tests/conftest.py tool_environ)
    state.mkdir()
    fd = os.open(state / "deploy.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a `deployer deploy` run by hand holds it
        served = serve(poll=1)
        busy = wait_for(lambda: next((d for d in served.deployments() if d["state"] == "failed"), None),
                        timeout=30, what="a deployment to meet the lock")  # fmt: skip
    finally:
        os.close(fd)
    assert (busy["commit"], busy["error_reason"], busy["transient"]) == (sha, "LockHeld", True)
    assert "another deployment is running" in busy["error"]
    wait_for(lambda: served.deployed(name) == sha, timeout=60, what="the retry once the lock is free")


def test_stack_states_say_running_during_up_and_orphaned_once_the_folder_is_gone(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    slow, other = f"{prefix}-slow", f"{prefix}-other"
    repo.stack(slow, {"main": service(healthy_after=4)})
    repo.stack(other, {"main": service()})
    first = repo.commit("two stacks")
    served = serve()
    deployment_id = served.push(first)
    wait_for(lambda: {s["name"]: s["state"] for s in served.deployment(deployment_id)["stacks"]}.get(slow)
             == "running", timeout=60, what=f"{slow} to show running while up waits for health")  # fmt: skip
    assert served.finished(deployment_id)["state"] == "succeeded"

    repo.remove(f"stacks/{other}")
    second = repo.commit("drop a stack")
    after = served.finished(served.push(second, before=first))
    assert after["state"] == "succeeded" and after["orphaned"] == [other] and after["stacks"] == []
    states = {s["name"]: s["state"] for s in served.get("/api/stacks")}
    assert states == {slow: "succeeded", other: "orphaned"}
    assert container_env(other)  # left running: pruning is off


def test_an_engine_that_stops_answering_changes_nothing_and_is_retried(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path
) -> None:
    """The service reaches the engine through a socket link the test removes and puts back, as a
    restarting dockerd would: the deployment touches nothing while the engine is gone, then converges."""
    name = f"{prefix}-app"
    socket = tmp_path / "engine" / "docker.sock"
    socket.parent.mkdir()
    real = Path(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://"))
    if not real.is_socket():
        pytest.fail(f"this test reaches the engine through a link to its unix socket; {real} is not one")
    served = serve(poll=1, DOCKER_HOST=f"unix://{socket}")
    sha = version(repo, name, "1")
    failed = served.finished(served.push(sha))
    assert (failed["state"], failed["error_reason"], failed["transient"]) == ("failed", "EngineUnreachable", True)
    assert [(s["name"], s["state"]) for s in failed["stacks"]] == [(name, "skipped")]
    assert served.deployed(name) is None
    socket.symlink_to(real)
    wait_for(lambda: served.deployed(name) == sha, timeout=90, what="the retry once the engine answers")
    assert container_env(name)["VERSION"] == "1"


MALFORMED = [
    ({"repository": "ops/config"}, "repository is not an object"),
    ({"pusher": ["op"]}, "pusher is not an object"),
    ({"commits": {"id": "x"}}, "commits is not a list"),
    ({"after": "a" * 64}, "after is a SHA-256 id but the repository uses SHA-1"),
]


def test_a_signed_push_with_malformed_fields_is_a_400_naming_the_field_and_queues_nothing(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    """Each case against one running service (a service each took 7 s for the same answer)."""
    sha = version(repo, f"{prefix}-app", "1")
    served = serve()
    assert served.finished(served.push(sha))["state"] == "succeeded"  # the worker has told the web the format
    wait_for(lambda: _object_format_known(served), timeout=30, what="the object format to be known")
    for change, field in MALFORMED:
        delivery = sign("gitea", push_payload("gitea", after=sha) | change, SECRET)
        status, answer = http("POST", f"{served.base}/webhook", body=delivery.body, headers=delivery.headers)
        assert (status, answer["error"]) == (400, "event_invalid"), (change, answer)
        assert field in answer["message"], (change, answer)
    nested = b'{"ref": "refs/heads/main", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep = sign("gitea", nested, SECRET)
    status, answer = http("POST", f"{served.base}/webhook", body=deep.body, headers=deep.headers)
    assert (status, answer["message"]) == (400, "payload is nested too deeply")
    assert len(served.deployments()) == 1
    assert http("GET", f"{served.base}/healthz")[0] == 200


def _object_format_known(served: Served) -> bool:
    with sqlite3.connect(served.state / "state.db") as db:
        return db.execute("SELECT value FROM meta WHERE key = 'object_format'").fetchone() is not None


ODD = "release/2026.12+hotfix_ü-#1"


def test_a_branch_with_odd_characters_deploys_and_its_look_alikes_do_not(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    """DEPLOYER_BRANCH may be any name git allows (slashes, '+', '#', non-ASCII): pushes to it deploy;
    pushes to names that differ by a byte, by case, or by a trailing slash or space are ignored; a manual
    request with no ref (it used to be refused: the branch's name failed the ref check) deploys its head."""
    name = f"{prefix}-app"
    git(repo.path, "branch", "--move", "main", ODD)
    first = version(repo, name, "1")
    served = serve(DEPLOYER_BRANCH=ODD)
    assert served.finished(served.push(first, branch=ODD))["state"] == "succeeded"
    assert container_env(name)["VERSION"] == "1"

    second = version(repo, name, "2")
    for alike in (f"{ODD}x", ODD.upper(), f"{ODD}/", f"{ODD} ", "main", ODD.replace("ü", "u")):
        delivery = sign("gitea", push_payload("gitea", after=second, before=first, branch=alike), SECRET)
        status, answer = http("POST", f"{served.base}/webhook", body=delivery.body, headers=delivery.headers)
        assert status == 200 and "ignored" in answer, (alike, status, answer)
    assert [d["commit"] for d in served.deployments()] == [first]
    assert served.finished(served.push(second, before=first, branch=ODD))["state"] == "succeeded"
    status, answer = http("POST", f"{served.base}/api/deployments", body=b'{"force": true}',
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 202, answer
    assert served.finished(answer["deployment_id"])["commit"] == second
    assert container_env(name)["VERSION"] == "2"
    wait_for(lambda: forge.latest(second).get("deployer") == "success", timeout=30, what="the final status")

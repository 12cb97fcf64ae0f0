"""Automatic rollback through a real `deployer serve`: a stack that fails its health wait is brought
back to its last good commit, with that commit's compose file and secrets and the image that ran
then (its tag moved meanwhile); it is `rolled_back`, its dependents skipped, the commit `failure`
naming the commit rolled back to; the failing commit is not retried in a loop; a rollback that
fails too is said, and never rolled back again; a first deploy has nothing to roll back to.
Real git, sops, age, compose and engine; the forge is tests/servers.py's stand-in."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AgeKey
from tests.e2e.conftest import Serve
from tests.e2e.served import container_env, wait_for
from tests.helpers import TEST_IMAGE, ConfigRepo, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")

NEVER_HEALTHY = {"test": ["CMD", "false"], "interval": "1s", "timeout": "1s", "retries": 2, "start_period": "0s"}


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def moving_tag(prefix: str, tmp_path: Path) -> Iterator[str]:
    """An image tag of this test's own, which the test can move to another image."""
    tag = f"{TEST_IMAGE.rsplit(':', 1)[0]}:{prefix}"
    docker("tag", TEST_IMAGE, tag)
    yield tag
    subprocess.run(["docker", "rmi", "--force", tag], capture_output=True, check=False)


def move(tag: str, tmp_path: Path) -> str:
    """Point `tag` at a new image (the old one with a label): what a registry push of the same tag does."""
    (tmp_path / "moved").mkdir(exist_ok=True)
    (tmp_path / "moved" / "Dockerfile").write_text(f"FROM {tag}\nLABEL io.deployer.test.moved=yes\n")
    docker("build", "--quiet", "--tag", tag, str(tmp_path / "moved"))
    return docker("image", "inspect", "--format", "{{.Id}}", tag)


def running_image(project: str) -> str:
    ids = docker("ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.ID}}").split()
    assert len(ids) == 1, ids
    return docker("inspect", "--format", "{{.Image}}", ids[0])


def stack_of(deployment: dict[str, object], name: str) -> dict[str, object]:
    return next(s for s in deployment["stacks"] if s["name"] == name)  # type: ignore[union-attr,index]


def test_a_stack_that_fails_its_health_wait_is_rolled_back_to_the_last_good_commit_and_image(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, moving_tag: str, tmp_path: Path
) -> None:
    app, web = f"{prefix}-app", f"{prefix}-web"
    repo.secret("secrets/app.env", {"APP_TOKEN": "rollback-secret-value-1"})
    repo.stack(app, {"main": service(image=moving_tag, environment={"VERSION": "1", "TOKEN": "${APP_TOKEN}"})},
               deployer={"secrets": ["secrets/app.env"], "wait_timeout": 20})  # fmt: skip
    repo.stack(web, {"main": service(environment={"VERSION": "1"})}, deployer={"depends_on": [app]})
    good = repo.commit("v1")
    scratch = tmp_path / "tmpdir"  # the service's TMPDIR, scanned below
    scratch.mkdir()
    served = serve(poll=2, TMPDIR=str(scratch))
    assert served.finished(served.push(good))["state"] == "succeeded"
    image_then = running_image(app)

    moved = move(moving_tag, tmp_path)
    assert moved != image_then
    bad_app = service(image=moving_tag, environment={"VERSION": "2", "TOKEN": "${APP_TOKEN}"}, healthcheck=False)
    repo.stack(app, {"main": {**bad_app, "healthcheck": NEVER_HEALTHY}},
               deployer={"secrets": ["secrets/app.env"], "wait_timeout": 8})  # fmt: skip
    repo.stack(web, {"main": service(environment={"VERSION": "2"})}, deployer={"depends_on": [app]})
    bad = repo.commit("v2: app never healthy")
    deployment_id = served.push(bad, before=good)
    done = served.finished(deployment_id, timeout=180)

    assert done["state"] == "failed"
    rolled = stack_of(done, app)
    assert rolled["state"] == "rolled_back", rolled
    assert f"rolled back to {good[:12]}" in str(rolled["error"])
    assert stack_of(done, web)["state"] == "skipped"
    assert container_env(app)["VERSION"] == "1" and container_env(app)["TOKEN"] == "rollback-secret-value-1"
    assert running_image(app) == image_then, "the image that ran at the good commit, not the moved tag's"
    assert container_env(web)["VERSION"] == "1"
    stacks = {s["name"]: s for s in served.get("/api/stacks")}
    assert stacks[app]["state"] == "rolled_back" and stacks[app]["deployed_commit"] == good
    wait_for(lambda: forge.latest(bad).get("deployer") == "failure", timeout=30, what="the final status")
    described = {p.context: p.description for p in forge.posted if p.sha == bad}
    assert forge.latest(bad)[f"deployer/{app}"] == "failure"
    assert f"rolled back to {good[:12]}" in described[f"deployer/{app}"]
    assert f"rolled back to {good[:12]}" in described["deployer"]
    events = [e for e in served.audit() if e["deployment_id"] == deployment_id]
    assert [e["stack"] for e in events if e["event"] == "stack.rolled_back"] == [app]
    decrypted = [e for e in events if e["event"] == "secrets.decrypted"]
    assert {e["commit"] for e in decrypted} == {bad, good}, "the good commit's secrets, decrypted again"

    # The failing commit is not retried by the poll: it waits for a new push, a person or force.
    time.sleep(8)
    assert [d["id"] for d in served.deployments() if d["commit"] == bad] == [deployment_id]
    # Secret hygiene after a success, a failure and a rollback: the state dir, the temp dir, the log, the
    # audit trail, the API and the pages hold no secret value.
    secret = b"rollback-secret-value-1"
    files = [p for root in (served.state, scratch) for p in root.rglob("*") if p.is_file() and not p.is_fifo()]
    assert len(files) > 10, files
    assert not [p for p in files if secret in p.read_bytes()]
    pages = b"".join(urllib.request.urlopen(f"{served.base}{path}", timeout=10).read()  # noqa: S310 -- loopback
                     for path in ("/", f"/deployments/{deployment_id}", "/stacks"))  # fmt: skip
    said = served.log() + json.dumps(served.audit()) + json.dumps(served.deployment(deployment_id))
    assert secret not in pages and secret.decode() not in said


def test_a_rollback_that_fails_is_said_and_a_first_deploy_has_nothing_to_roll_back_to(
    serve: Serve, repo: ConfigRepo, prefix: str, age_key: AgeKey, other_age_key: AgeKey, tmp_path: Path
) -> None:
    app, fresh = f"{prefix}-app", f"{prefix}-fresh"
    repo.secret("secrets/app.env", {"APP_TOKEN": "rollback-secret-value-2"})
    repo.stack(app, {"main": service(environment={"VERSION": "1", "TOKEN": "${APP_TOKEN}"})},
               deployer={"secrets": ["secrets/app.env"]})  # fmt: skip
    good = repo.commit("v1")
    key = AgeKey(tmp_path / "key.txt", age_key.recipient)  # this test's copy: it is rotated below
    key.path.write_text(age_key.path.read_text())
    served = serve(key=key)
    assert served.finished(served.push(good))["state"] == "succeeded"

    # v2 needs no secret and never becomes healthy; the good commit's secret can no longer be decrypted
    # (the key was rotated away), so the rollback fails too: said, and not rolled back again.
    never = {**service(environment={"VERSION": "2"}, healthcheck=False), "healthcheck": NEVER_HEALTHY}
    repo.stack(app, {"main": never}, deployer={"wait_timeout": 8})
    repo.stack(fresh, {"main": never}, deployer={"wait_timeout": 8})
    bad = repo.commit("v2")
    key.path.write_text(other_age_key.path.read_text())
    done = served.finished(served.push(bad, before=good), timeout=180)

    assert done["state"] == "failed"
    failed = stack_of(done, app)
    assert failed["state"] == "failed"
    assert f"rollback to {good[:12]} failed" in str(failed["error"]), failed
    first = stack_of(done, fresh)
    assert first["state"] == "failed" and "first deploy: nothing to roll back to" in str(first["error"]), first
    assert "stack.rolled_back" not in [e["event"] for e in served.audit()]
    assert container_env(app)["VERSION"] == "2", "a failed rollback leaves what compose left, and says so"

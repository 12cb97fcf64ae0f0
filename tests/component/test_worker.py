"""The deploy worker: webhook -> durable queue -> real deploy -> statuses at a forge stand-in.

The forge is tests/servers.py's ForgeServer (real forges cannot run here); git, sops, age, the
Docker engine and compose are real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from deployer.jobs import Worker
from deployer.pipeline import Deps
from deployer.queue import Queue
from deployer.web.app import create_app
from tests.deliveries import push_payload, sign
from tests.helpers import ConfigRepo, audit_trail, service
from tests.servers import ForgeServer

SECRET = "worker-hook-secret"
pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture(params=["github", "gitlab"])
def forge(request: pytest.FixtureRequest) -> Iterator[ForgeServer]:
    server = ForgeServer(request.param)
    yield server
    server.close()


@pytest.fixture
def service_deps(deps: Deps, repo: ConfigRepo, forge: ForgeServer) -> Deps:
    settings = replace(deps.settings, repo_url=repo.url, webhook_secret=SECRET, forge=forge.forge,
                       forge_api_url=forge.api_url, forge_token=forge.token, forge_repo="ops/config",
                       public_url="https://deployer.example", poll_interval=0)  # fmt: skip
    return replace(deps, settings=settings)


@pytest.fixture
def client(service_deps: Deps) -> FlaskClient:
    return create_app(service_deps.settings).test_client()


def webhook(client: FlaskClient, forge: str, sha: str) -> str:
    delivery = sign(forge, push_payload(forge, after=sha), SECRET)
    response = client.post("/webhook", data=delivery.body, headers=delivery.headers)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["deployment_id"])


def drain(worker: Worker, *, later: float = 0) -> None:
    for _ in range(20):
        if worker.deliver_statuses(now=time.time() + later) == 0 and not worker.queue.undelivered(
            now=time.time() + 1e9
        ):
            return
    raise AssertionError("statuses still waiting")


def commit_version(repo: ConfigRepo, name: str, version: str) -> str:
    repo.stack(name, {"main": service(environment={"VERSION": version})})
    return repo.commit(f"{name} v{version}")


def test_latest_wins_and_every_pushed_commit_gets_a_final_status(
    service_deps: Deps, client: FlaskClient, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    name = f"{prefix}-app"
    commits = [commit_version(repo, name, str(n)) for n in range(3)]
    ids = [webhook(client, forge.forge, sha) for sha in commits]
    worker = Worker(service_deps)

    claim = worker.queue.claim()
    assert claim is not None and claim.deployment_id == ids[-1]
    outcome = worker.run_claim(claim)
    drain(worker)

    assert outcome is not None and outcome.exit_code == 0
    assert worker.queue.claim() is None
    final = {"github": "error", "gitlab": "canceled"}[forge.forge]
    for sha, deployment_id in zip(commits[:2], ids[:2], strict=True):
        assert forge.latest(sha) == {"deployer": final}
        record = service_deps.store.deployment(deployment_id)
        assert record is not None and (record["state"], record["superseded_by"]) == ("superseded", commits[-1])
    assert forge.latest(commits[-1]) == {"deployer": "success", f"deployer/{name}": "success"}
    superseded = [p for p in forge.posted if p.sha == commits[0] and p.context == "deployer"][-1]
    assert f"superseded by {commits[-1][:12]}" in superseded.description
    for sha, deployment_id in zip(commits[:2], ids[:2], strict=True):
        final_status = [p for p in forge.posted if p.sha == sha and p.context == "deployer"][-1]
        assert final_status.target_url and final_status.target_url.endswith(f"/api/deployments/{deployment_id}")
    audit = audit_trail(service_deps.settings.state_dir)
    assert sorted((e["deployment_id"], e["commit"], e["superseded_by"]) for e in audit
                  if e["event"] == "deployment.superseded") == sorted(
        (deployment_id, sha, commits[-1]) for sha, deployment_id in zip(commits[:2], ids[:2], strict=True)
    )  # fmt: skip
    assert all(p.target_url and p.target_url.startswith("https://deployer.example/api/deployments/")
               for p in forge.posted)  # fmt: skip
    assert forge.errors == []


def test_a_forge_that_is_down_changes_nothing_and_gets_its_statuses_later(
    service_deps: Deps, client: FlaskClient, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    sha = commit_version(repo, f"{prefix}-app", "1")
    webhook(client, forge.forge, sha)
    forge.fail_next = 10_000
    worker = Worker(service_deps)
    claim = worker.queue.claim()
    assert claim is not None
    outcome = worker.run_claim(claim)
    assert worker.deliver_statuses() > 0
    assert outcome is not None and outcome.exit_code == 0
    assert service_deps.store.deployment(claim.deployment_id)["state"] == "succeeded"  # type: ignore[index]

    forge.fail_next = 0
    drain(worker, later=MAX_WAIT)
    assert forge.latest(sha) == {"deployer": "success", f"deployer/{prefix}-app": "success"}
    assert forge.errors == []


MAX_WAIT = 3600.0


def test_reconcile_queues_what_a_lost_webhook_missed(
    service_deps: Deps, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    sha = commit_version(repo, f"{prefix}-app", "1")
    worker = Worker(service_deps)
    deployment_id = worker.reconcile()
    assert deployment_id is not None
    assert worker.reconcile() is None  # already queued
    claim = worker.queue.claim()
    assert claim is not None and (claim.commit, claim.trigger) == (sha, "poll")
    worker.run_claim(claim)
    assert worker.reconcile() is None  # deployed
    drain(worker)
    assert forge.latest(sha)["deployer"] == "success"


def test_a_late_webhook_for_an_older_commit_does_not_roll_back(
    service_deps: Deps, client: FlaskClient, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    old = commit_version(repo, f"{prefix}-app", "1")
    new = commit_version(repo, f"{prefix}-app", "2")
    worker = Worker(service_deps)
    webhook(client, forge.forge, new)
    worker.run_claim(worker.queue.claim())  # type: ignore[arg-type]
    late = webhook(client, forge.forge, old)
    outcome = worker.run_claim(worker.queue.claim())  # type: ignore[arg-type]
    assert (outcome.state, outcome.superseded_by, outcome.results) == ("superseded", new, ())
    record = service_deps.store.deployment(late)
    assert record is not None and (record["state"], record["superseded_by"]) == ("superseded", new)
    assert service_deps.store.last_good()[f"{prefix}-app"] == new


def test_a_deployment_interrupted_by_a_crash_is_picked_up_again(
    service_deps: Deps, client: FlaskClient, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    sha = commit_version(repo, f"{prefix}-app", "1")
    deployment_id = webhook(client, forge.forge, sha)
    queue = Queue(service_deps.store)
    assert queue.claim() is not None  # the crashed worker had claimed it
    assert queue.claim() is None
    assert queue.requeue_interrupted() == [deployment_id]
    claim = queue.claim()
    assert claim is not None and claim.deployment_id == deployment_id


def test_the_worker_loop_drains_the_queue_and_reports_ready(
    service_deps: Deps, client: FlaskClient, repo: ConfigRepo, forge: ForgeServer, prefix: str, tmp_path: Path
) -> None:
    sha = commit_version(repo, f"{prefix}-app", "1")
    deployment_id = webhook(client, forge.forge, sha)
    stop = threading.Event()
    loop = threading.Thread(target=Worker(service_deps, idle_wait=0.1).run, args=(stop,))
    loop.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = client.get(f"/api/deployments/{deployment_id}").get_json()["state"]
            if state in ("succeeded", "failed") and forge.latest(sha).get("deployer") == "success":
                break
            time.sleep(0.2)
        assert state == "succeeded"
        assert client.get("/readyz").get_json() == {"status": "ready", "warnings": []}
        stacks = client.get("/api/stacks").get_json()
        assert stacks == [{"name": f"{prefix}-app", "deployed_commit": sha, "state": "succeeded", "depends_on": [],
                           "held": None, "paused": False, "drift": [], "engine": "compose", "docker_host": None,
                           "host": None}]  # fmt: skip
    finally:
        stop.set()
        loop.join(timeout=30)
    assert forge.latest(sha)["deployer"] == "success"


def test_a_delivery_rings_the_worker_which_starts_it_at_once_not_at_its_next_look(
    service_deps: Deps, client: FlaskClient, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    """The worker looks at the queue every 60 s here; a queued deployment starts within a few seconds
    only because the web worker's submit rang its doorbell (deployer/wake.py)."""
    sha = commit_version(repo, f"{prefix}-app", "1")
    stop = threading.Event()
    worker = Worker(service_deps, idle_wait=60.0)
    loop = threading.Thread(target=worker.run, args=(stop,))
    loop.start()
    try:
        time.sleep(1.0)  # the worker has looked once, found nothing, and waits
        deployment_id = webhook(client, forge.forge, sha)
        deadline = time.monotonic() + 10
        state = "queued"
        while time.monotonic() < deadline and state == "queued":
            state = client.get(f"/api/deployments/{deployment_id}").get_json()["state"]
            time.sleep(0.05)
        assert state != "queued", "not started within 10 s: the doorbell was not heard"
    finally:
        stop.set()
        worker.doorbell.ring()  # wakes it to see stop
        loop.join(timeout=120)


def test_a_polled_deployment_of_the_head_fetches_the_branch_once(
    service_deps: Deps, repo: ConfigRepo, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconcile step fetched the branch to find the head it queues; the deployment does not fetch again.
    A webhook's deployment, which nothing fetched for, fetches once."""
    from deployer.fetch import Mirror

    fetches: list[str] = []
    real_sync = Mirror.sync

    def counting_sync(self: Mirror) -> str:
        fetches.append("sync")
        return real_sync(self)

    monkeypatch.setattr(Mirror, "sync", counting_sync)
    commit_version(repo, f"{prefix}-app", "1")
    worker = Worker(service_deps)
    queued = worker.reconcile()
    assert queued is not None and fetches == ["sync"]
    claim = Queue(service_deps.store).claim()
    assert claim is not None and claim.deployment_id == queued
    assert worker.run_claim(claim).state == "succeeded"
    assert fetches == ["sync"], "the poll's deployment fetched the branch again"

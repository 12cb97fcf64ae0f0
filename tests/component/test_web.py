"""POST /webhook and the read-only API through Flask's test client, with the real state store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from deployer.model import Outcome, Reason
from deployer.queue import Queue
from deployer.settings import Settings
from deployer.state import StateStore
from deployer.web.app import create_app
from tests.deliveries import FORGES, ZERO, Delivery, push_payload, sign
from tests.helpers import audit_trail

SECRET = "hook-secret-value"
SHA = "a" * 40


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(repo_url=str(tmp_path / "repo"), webhook_secret=SECRET, state_dir=tmp_path / "state",
                    max_body=64 * 1024, insecure_open_api=True)  # fmt: skip  # /api without identity here


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def post(client: FlaskClient, delivery: Delivery):  # type: ignore[no-untyped-def]
    return client.post("/webhook", data=delivery.body, headers=delivery.headers)


def queued(settings: Settings) -> list[dict[str, object]]:
    return StateStore(settings.state_dir / "state.db").deployments(limit=100)


@pytest.mark.parametrize(
    ("forge", "form"),
    [(forge, False) for forge in FORGES] + [("github", True), ("gitea", True), ("forgejo", True)],
    ids=[*FORGES, "github-form", "gitea-form", "forgejo-form"],  # GitLab sends JSON only
)
def test_a_signed_push_is_queued_at_once(client: FlaskClient, settings: Settings, forge: str, form: bool) -> None:
    if form and forge == "gitlab":
        pytest.skip("GitLab sends JSON only")
    response = post(client, sign(forge, push_payload(forge, after=SHA), SECRET, form=form))
    assert response.status_code == 202, response.get_json()
    deployment_id = response.get_json()["deployment_id"]
    [deployment] = queued(settings)
    assert (deployment["id"], deployment["commit"], deployment["state"]) == (deployment_id, SHA, "queued")
    assert (deployment["ref"], deployment["trigger"], deployment["actor"]) == ("refs/heads/main", "webhook", "op")
    journal = audit_trail(settings.state_dir)
    assert journal[-1]["event"] == "deployment.queued" and journal[-1]["deployment_id"] == deployment_id


@pytest.mark.parametrize("forge", FORGES)
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tag", "refs/tags/v1 is not a branch"),
        ("other branch", "branch dev does not deploy (only main)"),
        ("deletion", "branch deletion"),
        ("test delivery", "test delivery (before == after)"),
        ("other event", "event"),
    ],
)
def test_ignored_deliveries_are_200_with_the_reason(
    client: FlaskClient, settings: Settings, forge: str, case: str, reason: str
) -> None:
    payload = {
        "tag": lambda: push_payload(forge, after=SHA, branch="refs/tags/v1"),
        "other branch": lambda: push_payload(forge, after=SHA, branch="dev"),
        "deletion": lambda: push_payload(forge, after=ZERO),
        "test delivery": lambda: push_payload(forge, after=ZERO, before=ZERO),
        "other event": lambda: push_payload(forge, after=SHA),
    }[case]()
    event = {"github": "ping", "gitlab": "Tag Push Hook"}.get(forge, "create") if case == "other event" else None
    response = post(client, sign(forge, payload, SECRET, event=event))
    assert response.status_code == 200
    assert reason in response.get_json()["ignored"]
    assert queued(settings) == []


def bad_delivery(forge: str, case: str) -> Delivery:
    good = sign(forge, push_payload(forge, after=SHA), SECRET)
    if case == "unsigned":
        names = {"X-Hub-Signature-256", "X-Gitea-Signature", "X-Forgejo-Signature", "X-Gogs-Signature",
                 "X-Gitlab-Token"}  # fmt: skip
        return Delivery({k: v for k, v in good.headers.items() if k not in names}, good.body)
    if case == "wrong secret":
        return sign(forge, push_payload(forge, after=SHA), "wrong-secret")
    if case == "tampered":
        return Delivery(good.headers, good.body.replace(SHA.encode(), b"b" * 40))
    if case == "truncated":
        return Delivery(good.headers, good.body[: len(good.body) // 2])
    if case == "wrong content type":
        return Delivery({**good.headers, "Content-Type": "text/plain"}, good.body)
    if case == "not json":
        return sign(forge, b"{not json", SECRET)
    if case == "not an object":
        return sign(forge, b"[1, 2]", SECRET)
    if case == "oversized":
        return sign(forge, push_payload(forge, after="x" * 2 * 64 * 1024), SECRET)
    raise ValueError(case)


# GitLab's token does not sign the body: a tampered GitLab body cannot be told apart (protocols.md 1.4),
# and a truncated one is caught as invalid JSON instead.
BAD = [
    *((forge, case, 401) for forge in FORGES for case in ("unsigned", "wrong secret")),
    *((forge, case, 401) for forge in ("github", "gitea", "forgejo") for case in ("tampered", "truncated")),
    ("gitlab", "truncated", 400),
    *((forge, case, 400) for forge in FORGES for case in ("wrong content type", "not json", "not an object")),
    *((forge, "oversized", 413) for forge in FORGES),
]


@pytest.mark.parametrize(("forge", "case", "status"), BAD, ids=[f"{f}-{c}" for f, c, _ in BAD])
def test_bad_deliveries_get_their_status_and_queue_nothing(
    client: FlaskClient, settings: Settings, forge: str, case: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="deployer.web"):
        response = post(client, bad_delivery(forge, case))
    assert response.status_code == status, response.get_data(as_text=True)
    assert queued(settings) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "deployer.web"]
    assert len(lines) == 1 and f"-> {status}" in lines[0]
    assert SECRET not in lines[0] and SHA not in lines[0]
    [refused] = audit_trail(settings.state_dir)  # the attempt is an audit event, with nothing of its body
    assert (refused["event"], refused["status"], refused["path"]) == ("request.refused", status, "/webhook")
    assert refused["reason"].split(":")[0] == response.get_json()["error"]
    assert SECRET not in json.dumps(refused) and SHA not in json.dumps(refused)


def test_unknown_forge_is_401(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/webhook", data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert queued(settings) == []


def test_a_redelivery_while_in_hand_is_a_duplicate_but_after_a_failure_it_deploys_again(
    client: FlaskClient, settings: Settings
) -> None:
    delivery = sign("github", push_payload("github", after=SHA), SECRET, delivery_id="guid-1")
    first = post(client, delivery).get_json()["deployment_id"]
    again = post(client, delivery)
    assert again.status_code == 200
    assert again.get_json() == {"ignored": "duplicate delivery guid-1", "deployment_id": first}
    store = StateStore(settings.state_dir / "state.db")
    store.finish_deployment(first, Outcome(first, SHA, error="boom", reason=Reason.COMPOSE_FAILED))
    redelivered = post(client, delivery)
    assert redelivered.status_code == 202
    assert redelivered.get_json()["deployment_id"] != first
    assert len(queued(settings)) == 2


def test_gitlab_retries_share_the_idempotency_key(client: FlaskClient, settings: Settings) -> None:
    first = sign("gitlab", push_payload("gitlab", after=SHA), SECRET, delivery_id="idem-1")
    retry = sign("gitlab", push_payload("gitlab", after=SHA), SECRET, delivery_id="idem-1")
    assert post(client, first).status_code == 202
    assert post(client, retry).status_code == 200
    assert len(queued(settings)) == 1


def test_pending_status_is_queued_with_the_deployment(tmp_path: Path) -> None:
    settings = Settings(webhook_secret=SECRET, state_dir=tmp_path / "state", forge="gitea",
                        public_url="https://deployer.example")  # fmt: skip
    client = create_app(settings).test_client()
    deployment_id = post(client, sign("gitea", push_payload("gitea", after=SHA), SECRET)).get_json()["deployment_id"]
    [status] = Queue(StateStore(settings.state_dir / "state.db")).undelivered()
    assert status.target.api_url == "https://git.example/api/v1" and status.target.repo == "ops/config"
    assert (status.status.sha, status.status.context, status.status.state) == (SHA, "deployer", "pending")
    assert status.status.target_url == f"https://deployer.example/api/deployments/{deployment_id}"


def test_read_only_api(client: FlaskClient) -> None:
    deployment_id = post(client, sign("github", push_payload("github", after=SHA), SECRET)).get_json()["deployment_id"]
    listed = client.get("/api/deployments?limit=5").get_json()
    assert [d["id"] for d in listed] == [deployment_id]
    one = client.get(f"/api/deployments/{deployment_id}").get_json()
    assert set(one) >= {"id", "commit", "ref", "trigger", "actor", "state", "created_at", "started_at",
                        "finished_at", "stacks"}  # fmt: skip
    assert client.get("/api/deployments/nope").status_code == 404
    assert client.get("/api/stacks").get_json() == []
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "deploy worker not running" in ready.get_json()["problems"]

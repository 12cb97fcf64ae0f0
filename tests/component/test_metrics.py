"""GET /metrics in one process: the state store's view read at scrape time, the webhook counter, the
exposition parsed back with prometheus_client's own parser. (Several gunicorn workers and a real
Prometheus: tests/e2e/test_metrics.py.)"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from deployer.model import (
    Action,
    CommitStatus,
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
from deployer.report.metrics import DURATION_BUCKETS
from deployer.settings import Settings
from deployer.state import StateStore
from deployer.web.app import create_app
from deployer.web.context import Service
from tests.deliveries import push_payload, sign

SECRET = "metrics-test-hook-secret"
SHA = "d" * 40
TARGET = StatusTarget("gitea", "http://127.0.0.1:9/api/v1", "ops/config")


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain; version=0.0.4")
    found = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def app(tmp_path: Path, **extra: object) -> FlaskClient:
    settings = Settings(state_dir=tmp_path, webhook_secret=SECRET, repo_url=str(tmp_path / "repo"),
                        **extra)  # type: ignore[arg-type]  # fmt: skip
    return create_app(settings).test_client()


def deploy(store: StateStore, *stacks: tuple[str, StackState, float], trigger: Trigger = Trigger.WEBHOOK) -> str:
    """Record one deployment through the recorder: queued, started, each stack's result, finished."""
    queued = Queue(store).enqueue(Intake(trigger=trigger, ref="refs/heads/main", commit=SHA),
                                  told=told("deployment.queued", {"deployment_id": None, "commit": SHA}))  # fmt: skip
    planned = tuple(PlannedStack(n, Action.DEPLOY, ("first deploy",)) for n, _, _ in stacks)
    plan = Plan(target=SHA, base=None, stacks=planned, order=(tuple(s.name for s in planned),))
    store.start_deployment(
        queued.deployment_id, plan, told=told("deployment.started", {"deployment_id": queued.deployment_id})
    )
    now = time.time()
    results = []
    for name, state, seconds in stacks:
        result = StackResult(name, Action.DEPLOY, state, started_at=now - seconds, finished_at=now)
        store.record_stack(queued.deployment_id, result, commit=SHA, told=told(f"stack.{state}", {"stack": name}))
        results.append(result)
    store.finish_deployment(queued.deployment_id, Outcome(queued.deployment_id, SHA, results=tuple(results)),
                            told=told("deployment.finished", {"deployment_id": queued.deployment_id}))  # fmt: skip
    return queued.deployment_id


def test_deployments_stack_durations_and_last_success_come_from_the_state_store(tmp_path: Path) -> None:
    client = app(tmp_path)
    store = StateStore(tmp_path / "state.db")
    deploy(store, ("traefik", StackState.SUCCEEDED, 3.0), ("auth", StackState.FAILED, 42.0))
    deploy(store, ("traefik", StackState.SUCCEEDED, 0.5), trigger=Trigger.MANUAL)
    found = scrape(client)
    assert found["deployer_deployments_total", (("result", "failed"), ("trigger", "webhook"))] == 1
    assert found["deployer_deployments_total", (("result", "succeeded"), ("trigger", "manual"))] == 1
    assert found["deployer_stack_deployments_total", (("result", "succeeded"), ("stack", "traefik"))] == 2
    assert found["deployer_stack_deployments_total", (("result", "failed"), ("stack", "auth"))] == 1
    traefik = (("stack", "traefik"),)
    assert found["deployer_stack_deploy_duration_seconds_count", traefik] == 2
    assert abs(found["deployer_stack_deploy_duration_seconds_sum", traefik] - 3.5) < 0.01
    assert found["deployer_stack_deploy_duration_seconds_bucket", (("le", "1.0"), *traefik)] == 1
    assert found["deployer_stack_deploy_duration_seconds_bucket", (("le", "5.0"), *traefik)] == 2
    assert found["deployer_stack_deploy_duration_seconds_bucket", (("le", "30.0"), ("stack", "auth"))] == 0
    assert found["deployer_stack_deploy_duration_seconds_bucket", (("le", "60.0"), ("stack", "auth"))] == 1
    assert found["deployer_stack_deploy_duration_seconds_bucket", (("le", "+Inf"), ("stack", "auth"))] == 1
    assert (
        len({k for k in found if k[0].endswith("_bucket") and dict(k[1])["stack"] == "auth"})
        == len(DURATION_BUCKETS) + 1
    )
    assert abs(found["deployer_stack_last_success_timestamp_seconds", traefik] - time.time()) < 60
    assert ("deployer_stack_last_success_timestamp_seconds", (("stack", "auth"),)) not in found, "never succeeded"
    assert found["deployer_build_info", (("version", "0.1.0"),)] == 1
    assert found["deployer_state_store_up", ()] == 1


def test_a_scrape_sees_what_was_recorded_since_the_last_one(tmp_path: Path) -> None:
    """The history is read again whenever an event was recorded (every change is recorded with one)."""
    client = app(tmp_path)
    store = StateStore(tmp_path / "state.db")
    deploy(store, ("web", StackState.SUCCEEDED, 1.0))
    assert scrape(client)["deployer_stack_deployments_total", (("result", "succeeded"), ("stack", "web"))] == 1
    deploy(store, ("web", StackState.SUCCEEDED, 1.0), ("db", StackState.ROLLED_BACK, 2.0))
    found = scrape(client)
    assert found["deployer_stack_deployments_total", (("result", "succeeded"), ("stack", "web"))] == 2
    assert found["deployer_stack_deployments_total", (("result", "rolled_back"), ("stack", "db"))] == 1
    assert found["deployer_stack_deploy_duration_seconds_count", (("stack", "db"),)] == 1


def test_queue_outboxes_and_the_worker_heartbeat(tmp_path: Path) -> None:
    client = app(tmp_path, loki_url="http://127.0.0.1:9")
    store = StateStore(tmp_path / "state.db")
    queue = Queue(store)
    pending = Told(statuses=((TARGET, "x", CommitStatus(SHA, "deployer", "pending", "queued")),))
    intake = Intake(trigger=Trigger.POLL, ref="refs/heads/main", commit=SHA)
    queue.enqueue(intake, told=told("deployment.queued", {"commit": SHA}) + pending)
    queue.set_meta("worker", {"pid": 1, "at": time.time() - 12})
    queue.set_meta("loki", {"ok": False, "error": "HTTP 503", "at": time.time()})
    time.sleep(0.05)
    found = scrape(client)
    assert found["deployer_queue_depth", ()] == 1
    assert found["deployer_deployments_running", ()] == 0
    assert found["deployer_statuses_waiting", ()] == 1
    assert 0.04 < found["deployer_statuses_oldest_waiting_seconds", ()] < 60
    assert found["deployer_audit_events_waiting", ()] >= 1
    assert found["deployer_audit_events_oldest_waiting_seconds", ()] > 0.04
    assert found["deployer_audit_events_set_aside", ()] == 0
    assert found["deployer_audit_shipping_ok", ()] == 0, "a failing Loki shows in /metrics"
    assert 11 < found["deployer_worker_heartbeat_age_seconds", ()] < 60
    with store.read() as db:
        oldest = db.execute("SELECT MIN(id) FROM audit_events").fetchone()[0]
    store.shipped([oldest], error="HTTP 400: entry too far behind")
    assert scrape(client)["deployer_audit_events_set_aside", ()] == 1


def test_without_loki_no_audit_shipping_metrics_are_exported(tmp_path: Path) -> None:
    """Events wait for nobody when Loki is not configured: a growing 'waiting' would be a false alarm."""
    found = scrape(app(tmp_path))
    assert not [k for k in found if k[0].startswith("deployer_audit_")]


def test_webhook_deliveries_by_forge_outcome_and_reason(tmp_path: Path) -> None:
    client = app(tmp_path)
    before = scrape(client)  # the counter lives in this process: other tests' deliveries are in it too
    sent = [
        sign("github", push_payload("github", after="a" * 40), SECRET),
        sign("github", push_payload("github", after="b" * 40, branch="feature"), SECRET),
        sign("gitea", push_payload("gitea", after="c" * 40), "not-the-secret"),
    ]
    for delivery in sent:
        client.post("/webhook", data=delivery.body, headers=delivery.headers)
    client.post("/webhook", data=sent[0].body, headers=sent[0].headers)  # the same delivery again
    client.post("/webhook", data=b"{}", headers={"X-Gitlab-Event": "Push Hook"})  # no token
    found = scrape(client)

    def count(forge: str, outcome: str, reason: str) -> float:
        key = ("deployer_webhook_deliveries_total", (("forge", forge), ("outcome", outcome), ("reason", reason)))
        return found.get(key, 0.0) - before.get(key, 0.0)

    assert count("github", "accepted", "queued") == 1
    assert count("github", "ignored", "other_branch") == 1
    assert count("github", "ignored", "duplicate") == 1
    assert count("gitea", "rejected", "signature") == 1
    assert count("gitlab", "rejected", "signature") == 1


def test_metrics_need_no_identity_and_say_when_the_state_store_is_unreadable(tmp_path: Path) -> None:
    """/metrics is outside Authentik (contract section 5); a store that cannot answer is a value, not a 500."""
    client = app(tmp_path, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),), deploy_groups=("ops",))
    assert client.get("/api/stacks").status_code == 401
    assert scrape(client)["deployer_state_store_up", ()] == 1
    Service.current(client.application).store.close()  # every query now raises sqlite3.ProgrammingError
    found = scrape(client)
    assert found["deployer_state_store_up", ()] == 0
    assert found["deployer_build_info", (("version", "0.1.0"),)] == 1
    assert not [k for k in found if k[0].startswith("deployer_queue")]


def test_failing_notifications_show_in_readyz_and_metrics(tmp_path: Path) -> None:
    client = app(tmp_path, notify_urls=("json://127.0.0.1:9/hook",))
    Queue(StateStore(tmp_path / "state.db")).set_meta("notify", {"ok": False, "error": "json: HTTP 500", "at": 1.0})
    answer = client.get("/readyz").get_json()
    assert "notifications not sent: json: HTTP 500" in answer["warnings"]
    assert scrape(client)["deployer_notifications_ok", ()] == 0

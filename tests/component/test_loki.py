"""Shipping the audit trail to a Loki stand-in (tests/loki.py; Loki cannot run here) that checks the
push API's request shape: batches marked shipped only after Loki's 2xx, retried on 5xx/429/transport
errors, a 400 batch set aside with Loki's message, events past Loki's window reported, resends
deduplicated by Loki itself because an event's timestamp and line never change."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.model import told
from deployer.report.forges import Retry
from deployer.report.loki import MAX_AGE_NS, LokiClient, ship_batch
from deployer.state import StateStore
from tests.loki import LokiServer


@pytest.fixture
def loki() -> Iterator[LokiServer]:
    server = LokiServer(tenant="ops", token="loki-token-value")
    yield server
    server.close()


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    found = StateStore(tmp_path / "state.db")
    found.tell(told("deployment.queued", *({"deployment_id": f"d{i}", "commit": "c" * 40} for i in range(7))))
    return found


def client(loki: LokiServer) -> LokiClient:
    return LokiClient(loki.url, tenant="ops", token="loki-token-value")


def test_events_are_pushed_in_the_documented_shape_and_marked_shipped(loki: LokiServer, store: StateStore) -> None:
    assert ship_batch(store, client(loki), now_ns=time.time_ns(), limit=5) == 5
    assert ship_batch(store, client(loki), now_ns=time.time_ns(), limit=5) == 2
    assert ship_batch(store, client(loki), now_ns=time.time_ns()) == 0
    assert loki.errors == [] and loki.requests == 2
    assert [e["deployment_id"] for e in loki.lines()] == [f"d{i}" for i in range(7)]
    assert store.shipping() == {"waiting": 0, "oldest_age_s": None, "set_aside": 0}


@pytest.mark.parametrize("answer", [503, 429])
def test_a_loki_that_cannot_take_it_now_keeps_the_events_waiting(
    loki: LokiServer, store: StateStore, answer: int
) -> None:
    loki.script = [answer]
    with pytest.raises(Retry, match=str(answer)):
        ship_batch(store, client(loki), now_ns=time.time_ns())
    assert store.shipping()["waiting"] == 7
    assert ship_batch(store, client(loki), now_ns=time.time_ns()) == 7


@pytest.mark.parametrize(
    ("url", "tenant", "token", "said"),
    [("/wrong-prefix", "ops", "loki-token-value", "HTTP 404"), ("", "other", "loki-token-value", "HTTP 401"),
     ("", "ops", "not-the-token", "HTTP 401"), ("", None, "loki-token-value", "no org id")],
)  # fmt: skip
def test_a_wrong_url_tenant_or_token_is_retried_until_the_operator_fixes_it(
    loki: LokiServer, store: StateStore, url: str, tenant: str | None, token: str, said: str
) -> None:
    """The batch is fine, the configuration is not: nothing is set aside, and once fixed everything ships."""
    wrong = LokiClient(loki.url + url, tenant=tenant, token=token)
    for _ in range(3):
        with pytest.raises(Retry, match=said):
            ship_batch(store, wrong, now_ns=time.time_ns())
    assert store.shipping()["waiting"] == 7 and store.shipping()["set_aside"] == 0
    assert len(loki.refused) == 3 and loki.lines() == []
    assert ship_batch(store, client(loki), now_ns=time.time_ns()) == 7
    assert len(loki.lines()) == 7


def test_an_unreachable_loki_is_a_retry(store: StateStore, loki: LokiServer) -> None:
    loki.close()
    with pytest.raises(Retry, match="ConnectionError"):
        ship_batch(store, LokiClient(loki.url), now_ns=time.time_ns())
    assert store.shipping()["waiting"] == 7


def test_a_400_sets_the_batch_aside_with_lokis_message_and_the_rest_goes_on(
    loki: LokiServer, store: StateStore
) -> None:
    loki.script = [400]
    assert ship_batch(store, client(loki), now_ns=time.time_ns(), limit=3) == 0
    assert store.shipping()["set_aside"] == 3
    assert ship_batch(store, client(loki), now_ns=time.time_ns()) == 4  # not blocked behind the refused batch
    with store.read() as db:
        errors = {
            r["ship_error"] for r in db.execute("SELECT ship_error FROM audit_events WHERE ship_error IS NOT NULL")
        }
    assert errors == {"HTTP 400: entry too far behind"}
    assert len(store.events()) == 7  # nothing recorded is lost: `deployer audit` still has all of them


def test_events_past_lokis_window_are_reported_not_pushed(
    loki: LokiServer, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    later = time.time_ns() + MAX_AGE_NS  # as if Loki had been down for a week
    assert ship_batch(store, client(loki), now_ns=later) == 0
    assert loki.requests == 0 and store.shipping()["set_aside"] == 7
    assert "older than Loki accepts" in caplog.text


def test_a_resend_after_a_crash_is_the_same_entry(loki: LokiServer, store: StateStore) -> None:
    """A crash between Loki's 204 and marking the batch shipped: the batch goes again, identical."""
    batch = store.unshipped()
    client(loki).push(batch)  # Loki has it; the deployer died before recording that
    assert ship_batch(store, client(loki), now_ns=time.time_ns()) == 7
    assert loki.duplicates() == 7 and len(loki.lines()) == 7  # Loki keeps one of each


def test_credentials_never_reach_the_trail_or_the_repr(loki: LokiServer, store: StateStore) -> None:
    used = client(loki)
    assert "loki-token-value" not in repr(used)
    ship_batch(store, used, now_ns=time.time_ns())
    assert all("loki-token-value" not in e.line for e in store.events())
    basic = LokiClient(loki.url, user="deployer", password="pw-value").headers()
    assert basic["Authorization"] == "Basic ZGVwbG95ZXI6cHctdmFsdWU="


def test_only_shipped_events_are_pruned_after_the_retention(loki: LokiServer, store: StateStore) -> None:
    ship_batch(store, client(loki), now_ns=time.time_ns(), limit=4)
    assert store.prune_shipped(before=time.time() - 86400) == 0  # shipped just now: kept
    assert store.prune_shipped(before=time.time() + 1) == 4
    assert [e.fields["deployment_id"] for e in store.events()] == ["d4", "d5", "d6"]  # never shipped: kept

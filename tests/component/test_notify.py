"""Notifications through real Apprise to a JSON webhook stand-in (tests/notify_server.py; ntfy, Slack and
the rest cannot run here), from events the real recorder writes to a real SQLite state store: what is
told, what is not told twice, retries with backoff, a cursor that survives restarts, nothing secret."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import ConfigError, FetchError
from deployer.jobs import Worker
from deployer.model import Action, Outcome, Plan, PlannedStack, Reason, StackResult, StackState
from deployer.pipeline import Deps, Request, deploy
from deployer.pipeline.record import Recorder
from deployer.queue import Queue
from deployer.report.notices import SUPPRESS_FOR, Memory, judge
from deployer.report.notify import Notifier
from deployer.settings import Settings
from deployer.state import StateStore
from tests.notify_server import NotifyServer

SHA = "0123456789abcdef" * 2 + "01234567"
#: values that must never be posted: a forge token, a notification URL's password
FORGE_TOKEN = "ghp_forge-token-value-5f3a9c"
URL_PASSWORD = "n0tify-pass-7d1e"


class Clock:
    """The notifier's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hook() -> Iterator[NotifyServer]:
    server = NotifyServer()
    yield server
    server.close()


@pytest.fixture
def notify_deps(tmp_path: Path, hook: NotifyServer) -> Iterator[Deps]:
    url = hook.url.replace("json://", f"json://notify:{URL_PASSWORD}@")
    settings = Settings(state_dir=tmp_path / "state", public_url="https://deployer.example/", forge_token=FORGE_TOKEN,
                        notify_urls=(url,))  # fmt: skip
    built = Deps.from_settings(settings)
    yield built
    built.store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def notifier(deps: Deps, clock: Clock, **changes: Any) -> Notifier:
    """The notifier `deps.settings` ask for, with `changes` to them."""
    return Notifier.from_settings(deps.store, replace(deps.settings, **changes), clock=clock)


def deployment(deps: Deps, results: Mapping[str, StackState | tuple[StackState, str]], *, actor: str = "alice") -> str:
    """One deployment recorded as the pipeline records it: queued, started, each stack's result, finished.
    A result may carry its error text."""
    record = Recorder.queued(deps, Request(repo_url="https://git.example/ops/config.git", ref=SHA, trigger="webhook",
                                           actor=actor))  # fmt: skip
    plan = Plan(target=SHA, base=None, stacks=tuple(PlannedStack(n, Action.DEPLOY, ("changed",)) for n in results),
                order=(tuple(results),))  # fmt: skip
    record.started(plan, depends_on={})
    done = []
    for name, result in results.items():
        state, error = result if isinstance(result, tuple) else (result, "compose up failed")
        bad = state is not StackState.SUCCEEDED
        done.append(StackResult(name, Action.DEPLOY, state, reason=Reason.COMPOSE_FAILED if bad else None,
                                error=error if bad else None, started_at=time.time(),
                                finished_at=time.time()))  # fmt: skip
        record.stack(done[-1], commit=SHA)
    record.finish(Outcome(record.deployment_id, SHA, tuple(done)))
    return record.deployment_id


def test_a_failure_is_posted_with_commit_deployment_trigger_error_and_link(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    told = notifier(notify_deps, clock)
    deployment_id = deployment(notify_deps, {"traefik": (StackState.FAILED, "port 443\nalready in use")})
    assert told.deliver() > 0
    assert hook.errors == []
    assert hook.posts == [{
        "version": "1.0", "title": "deployer: stack traefik failed", "attachments": [], "type": "failure",
        "message": f"commit: {SHA[:12]}\ndeployment: {deployment_id}\ntrigger: webhook by alice\n"
                   f"error: ComposeFailed: port 443 already in use\n"
                   f"https://deployer.example/deployments/{deployment_id}",
    }]  # fmt: skip
    assert told.deliver() == 0 and len(hook.posts) == 1


def test_the_same_failure_within_an_hour_is_told_once_and_another_error_is_told(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    told = notifier(notify_deps, clock)
    deployment(notify_deps, {"traefik": (StackState.FAILED, "port 443 already in use")})
    deployment(notify_deps, {"traefik": (StackState.FAILED, "port 443 already in use")})
    deployment(notify_deps, {"auth": (StackState.FAILED, "port 443 already in use")})  # another stack
    deployment(notify_deps, {"traefik": (StackState.FAILED, "image not found")})
    told.deliver()
    assert hook.titles() == ["deployer: stack traefik failed", "deployer: stack auth failed",
                             "deployer: stack traefik failed"]  # fmt: skip
    assert "image not found" in hook.posts[-1]["message"]


@pytest.mark.parametrize(("later", "again"), [(SUPPRESS_FOR - 1, False), (SUPPRESS_FOR + 1, True)])
def test_a_repeat_is_judged_by_the_events_own_times(later: float, again: bool) -> None:
    failed = {"event": "stack.failed", "stack": "web", "error": "boom", "deployment_id": "d1", "commit": SHA}
    first, memory = judge(failed, Memory(), on={"failure"}, at=1000.0)
    repeat, _ = judge(failed, memory, on={"failure"}, at=1000.0 + later)
    assert first is not None and (repeat is not None) is again


def test_a_success_after_a_failure_is_told_once_as_a_recovery(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    told = notifier(notify_deps, clock)
    deployment(notify_deps, {"web": StackState.SUCCEEDED})  # never failed: no news
    deployment(notify_deps, {"web": StackState.FAILED})
    recovered = deployment(notify_deps, {"web": StackState.SUCCEEDED})
    deployment(notify_deps, {"web": StackState.SUCCEEDED})
    deployment(notify_deps, {"web": StackState.FAILED})  # broken again after recovering: told again
    told.deliver()
    assert hook.titles() == ["deployer: stack web failed", "deployer: stack web recovered",
                             "deployer: stack web failed"]  # fmt: skip
    assert hook.posts[1]["type"] == "success" and f"deployment: {recovered}" in hook.posts[1]["message"]
    assert "error" not in hook.posts[1]["message"]


def test_notify_on_success_tells_every_success_and_nothing_else(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    on = Settings.from_env({"DEPLOYER_NOTIFY_ON": "Success"}).notify_on
    told = notifier(notify_deps, clock, notify_on=on)
    deployment(notify_deps, {"web": StackState.SUCCEEDED, "db": StackState.SUCCEEDED})
    deployment(notify_deps, {"web": StackState.FAILED})
    deployment(notify_deps, {"web": StackState.SUCCEEDED})  # a recovery, told as the success it is
    told.deliver()
    assert hook.titles() == ["deployer: stack web deployed", "deployer: stack db deployed",
                             "deployer: stack web deployed"]  # fmt: skip


def test_a_rollback_is_told_and_the_next_success_is_a_recovery(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    told = notifier(notify_deps, clock, notify_on=frozenset({"rollback", "recovery"}))
    deployment(notify_deps, {"web": (StackState.ROLLED_BACK, "health check failed; back at the last good commit")})
    deployment(notify_deps, {"web": StackState.SUCCEEDED})
    told.deliver()
    assert hook.titles() == ["deployer: stack web rolled back", "deployer: stack web recovered"]
    assert hook.posts[0]["type"] == "warning"


def test_a_deployment_that_cannot_fetch_is_told_as_a_failure_with_no_secret_in_it(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    """Through the real pipeline: a clone URL with a token that git cannot reach (nothing listens on
    port 9); then errors carrying the forge token and the notification URL's password."""
    told = notifier(notify_deps, clock)
    request = Request(repo_url=f"http://deployer:{FORGE_TOKEN}@127.0.0.1:9/ops/config.git", ref="main", trigger="cli")
    outcome = deploy(notify_deps, request)
    assert outcome.reason is Reason.FETCH_FAILED
    deployment(notify_deps, {"web": (StackState.FAILED, f"login with {FORGE_TOKEN} refused; {URL_PASSWORD} too")})
    told.deliver()
    assert hook.titles() == ["deployer: deployment failed", "deployer: stack web failed"]
    assert "error: FetchFailed: cannot fetch http://***@127.0.0.1:9/ops/config.git" in hook.posts[0]["message"]
    assert "error: ComposeFailed: login with *** refused; *** too" in hook.posts[1]["message"]
    for post in hook.posts:
        assert FORGE_TOKEN not in str(post) and URL_PASSWORD not in str(post)


def test_a_deployment_that_failed_on_a_stack_is_told_once_for_that_stack(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    told = notifier(notify_deps, clock)
    deployment(notify_deps, {"web": StackState.FAILED, "db": StackState.SUCCEEDED})
    record = Recorder.queued(notify_deps, Request(repo_url="x", ref=SHA, trigger="poll"))  # could not plan
    record.finish(record.not_started(FetchError("cannot fetch from the forge"), commit=SHA))
    deployment(notify_deps, {"web": StackState.SUCCEEDED})
    told.deliver()
    assert hook.titles() == ["deployer: stack web failed", "deployer: deployment failed",
                             "deployer: stack web recovered", "deployer: deployment recovered"]  # fmt: skip
    assert "trigger: poll\n" in hook.posts[1]["message"]


def test_a_service_answering_500_gets_the_notification_once_it_answers_200(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    told = notifier(notify_deps, clock)
    deployment(notify_deps, {"web": StackState.FAILED})
    hook.script = [500, 500, 500]
    stop, waits = threading.Event(), []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if hook.posts or len(waits) > 10:
            stop.set()
        return stop.is_set()

    told.run(stop, wait=wait)
    assert waits[:4] == [1.0, 2.0, 4.0, 1.0]  # backing off, then idle once it was sent
    assert hook.titles() == ["deployer: stack web failed"] and hook.requests == 4
    health = Queue(notify_deps.store).meta("notify")
    assert health == {"ok": True, "error": None, "at": pytest.approx(time.time(), abs=5)}


def test_backoff_stops_at_a_minute_and_says_why_in_meta(notify_deps: Deps, hook: NotifyServer, clock: Clock) -> None:
    told = notifier(notify_deps, clock)
    deployment(notify_deps, {"web": StackState.FAILED})
    hook.script = [503] * 9
    stop, waits = threading.Event(), []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 8:
            stop.set()
        return stop.is_set()

    told.run(stop, wait=wait)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    health = Queue(notify_deps.store).meta("notify")
    assert isinstance(health, dict) and health["ok"] is False and health["error"].startswith("json: ")
    assert URL_PASSWORD not in str(health)


def test_nothing_is_lost_across_a_restart(notify_deps: Deps, hook: NotifyServer, clock: Clock, tmp_path: Path) -> None:
    deployment(notify_deps, {"old": StackState.FAILED})  # before notifications were on: not told
    notifier(notify_deps, clock).deliver()
    deployment(notify_deps, {"web": StackState.FAILED})
    hook.script = [500]
    with pytest.raises(Exception, match="json: "):
        notifier(notify_deps, clock).deliver()  # stopped by a restart while its first try failed
    deployment(notify_deps, {"db": StackState.FAILED})
    deployment(notify_deps, {"old": StackState.SUCCEEDED})  # it was failing at the first start: a recovery
    second = StateStore(notify_deps.settings.state_dir / "state.db")  # another process, later
    try:
        Notifier.from_settings(second, notify_deps.settings, clock=clock).deliver()
    finally:
        second.close()
    assert hook.titles() == ["deployer: stack web failed", "deployer: stack db failed", "deployer: stack old recovered"]
    notifier(notify_deps, clock).deliver()
    assert len(hook.posts) == 3


def test_a_url_failing_for_an_hour_is_given_up_and_holds_nothing_back(
    notify_deps: Deps, hook: NotifyServer, clock: Clock
) -> None:
    dead = NotifyServer(path="/dead")
    dead.close()  # refuses connections from now on
    told = notifier(notify_deps, clock, notify_urls=(*notify_deps.settings.notify_urls, dead.url))
    deployment(notify_deps, {"web": StackState.FAILED})
    with pytest.raises(Exception, match="json: "):
        told.deliver()
    clock.now += 1800
    with pytest.raises(Exception, match="json: "):
        told.deliver()
    clock.now += 1801
    assert told.deliver() > 0  # an hour of failures: given up on that URL
    assert told.problem == "1 notification URL(s) failing for over an hour: json"
    deployment(notify_deps, {"db": StackState.FAILED})
    assert told.deliver() > 0  # the dead URL is tried once, and holds nothing back
    assert hook.titles() == ["deployer: stack web failed", "deployer: stack db failed"]  # never twice


def test_the_worker_thread_notifies_and_a_url_apprise_refuses_stops_only_notifications(
    notify_deps: Deps, hook: NotifyServer
) -> None:
    worker, stop = Worker(notify_deps), threading.Event()
    thread = threading.Thread(target=worker._notify_forever, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while Queue(notify_deps.store).meta("notifier") is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the notifier starts from the newest event at its first start
        deployment(notify_deps, {"web": StackState.FAILED})
        while not hook.posts and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert hook.titles() == ["deployer: stack web failed"]
    broken = Worker(replace(notify_deps, settings=replace(notify_deps.settings, notify_urls=("nosuch://x-token",))))
    broken._notify_forever(threading.Event())
    health = Queue(notify_deps.store).meta("notify")
    assert isinstance(health, dict) and health["ok"] is False
    assert health["error"] == "DEPLOYER_NOTIFY_URLS: entry 1 (nosuch://...) is not a URL Apprise can send to"


def test_settings_read_urls_from_the_file_twin_and_name_a_bad_word(tmp_path: Path) -> None:
    secret = tmp_path / "notify-urls"
    secret.write_text(
        f"ntfy://ntfy.example/deploys\njson://notify:{URL_PASSWORD}@127.0.0.1:1/hook,mailto://u:p@mx?to=a@x,b@y\n"
    )
    settings = Settings.from_env({"DEPLOYER_NOTIFY_URLS": "json://ignored", "DEPLOYER_NOTIFY_URLS_FILE": str(secret)})
    assert settings.notify_urls == ("ntfy://ntfy.example/deploys", f"json://notify:{URL_PASSWORD}@127.0.0.1:1/hook",
                                    "mailto://u:p@mx?to=a@x,b@y")  # fmt: skip
    assert settings.notify_on == {"failure", "rollback", "recovery"}
    assert URL_PASSWORD not in repr(settings)
    assert Settings.from_env({"DEPLOYER_NOTIFY_ON": "failure, success"}).notify_on == {"failure", "success"}
    with pytest.raises(ConfigError, match=r"^DEPLOYER_NOTIFY_ON: unknown event 'sucess': expected a comma list of"):
        Settings.from_env({"DEPLOYER_NOTIFY_ON": "failure,sucess"})
    with pytest.raises(ConfigError, match=r"^DEPLOYER_NOTIFY_URLS: entry 1 is not a URL") as caught:
        Settings.from_env({"DEPLOYER_NOTIFY_URLS": f"json://h/p {URL_PASSWORD}"})
    assert URL_PASSWORD not in caught.value.message
    with pytest.raises(ConfigError, match=r"^DEPLOYER_NOTIFY_URLS_FILE: cannot read"):
        Settings.from_env({"DEPLOYER_NOTIFY_URLS_FILE": str(tmp_path / "missing")})


def test_only_schemes_of_the_urls_are_logged(notify_deps: Deps, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="deployer.notify")
    notifier(notify_deps, clock)
    assert "notifying of failure, recovery, rollback through 1 URL(s): json" in caplog.text
    assert URL_PASSWORD not in caplog.text and "127.0.0.1" not in caplog.text

"""run_stacks with plain Python work functions: order, eager starts, skips, the parallel bound.

Nothing here sleeps to make a point: threads meet on Events and Barriers, and every wait has a generous
timeout that only a broken scheduler ever reaches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from deployer.apply.executor import run_stacks
from deployer.errors import ComposeError, HealthCheckError, SecretError
from deployer.model import Action, PlannedStack, Reason, StackResult, StackState

#: how long a thread waits for another before the test counts the wait as a failure
PATIENCE = 10.0


def planned(name: str, *depends_on: str, action: Action = Action.DEPLOY) -> PlannedStack:
    return PlannedStack(name=name, action=action, reasons=("first deploy",), depends_on=depends_on)


class Recorder:
    """A work function that logs starts and ends, and runs a per-stack behaviour in between."""

    def __init__(self, behaviour: dict[str, Callable[[], str]] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, stack: PlannedStack) -> str:
        with self.lock:
            self.events.append(("start", stack.name))
        try:
            return self.behaviour.get(stack.name, lambda: f"{stack.name} up")()
        finally:
            with self.lock:
                self.events.append(("end", stack.name))

    def started(self) -> list[str]:
        return [name for kind, name in self.events if kind == "start"]

    def index(self, kind: str, name: str) -> int:
        return self.events.index((kind, name))


def states(results: tuple[StackResult, ...]) -> dict[str, StackState]:
    return {r.name: r.state for r in results}


def fail(error: Exception) -> Callable[[], str]:
    def raiser() -> str:
        raise error

    return raiser


def test_dependencies_finish_before_dependents_start() -> None:
    stacks = [planned("app", "db", "cache"), planned("db"), planned("cache", "db"), planned("web", "app")]
    work = Recorder()
    results = run_stacks(stacks, work, max_parallel=4)
    assert [r.name for r in results] == ["app", "db", "cache", "web"]  # the input order
    assert all(r.state is StackState.SUCCEEDED for r in results)
    assert results[0].output == "app up"
    assert all(r.started_at is not None and r.finished_at is not None for r in results)
    for stack in stacks:
        for dependency in stack.depends_on:
            assert work.index("end", dependency) < work.index("start", stack.name), work.events
    assert sorted(work.started()) == ["app", "cache", "db", "web"]


def test_a_stack_starts_when_its_own_dependencies_are_done_not_its_level() -> None:
    """a is slow and b fast; c needs only b, so c must start while a is still running."""
    c_started = threading.Event()
    seen_by_a: list[bool] = []

    def slow_a() -> str:
        seen_by_a.append(c_started.wait(PATIENCE))
        return ""

    def c() -> str:
        c_started.set()
        return ""

    work = Recorder({"a": slow_a, "c": c})
    results = run_stacks([planned("a"), planned("b"), planned("c", "b")], work, max_parallel=4)
    assert seen_by_a == [True], "c did not start until a (same level as b, unrelated to c) finished"
    assert work.index("start", "c") < work.index("end", "a")
    assert states(results) == dict.fromkeys("abc", StackState.SUCCEEDED)


def test_failure_skips_transitive_dependents_and_spares_the_rest() -> None:
    stacks = [
        planned("db"),
        planned("api", "db"),
        planned("front", "api"),
        planned("worker", "db", "queue"),
        planned("queue"),
        planned("other"),
        planned("other2", "other"),
    ]
    work = Recorder({"db": fail(ComposeError("stack db: up failed", output="boom\nlast line"))})
    results = run_stacks(stacks, work, max_parallel=2)
    assert states(results) == {
        "db": StackState.FAILED,
        "api": StackState.SKIPPED,
        "front": StackState.SKIPPED,
        "worker": StackState.SKIPPED,
        "queue": StackState.SUCCEEDED,
        "other": StackState.SUCCEEDED,
        "other2": StackState.SUCCEEDED,
    }
    by_name = {r.name: r for r in results}
    assert by_name["db"].reason is Reason.COMPOSE_FAILED
    assert by_name["db"].error == "stack db: up failed"
    assert by_name["db"].output == "boom\nlast line"
    for name in ("api", "front", "worker"):
        assert by_name[name].reason is Reason.DEPENDENCY_FAILED
    assert "db" in (by_name["api"].error or "")
    assert "api" in (by_name["front"].error or "")
    assert "queue" not in (by_name["worker"].error or "")  # only the dependency that failed is named
    assert sorted(work.started()) == ["db", "other", "other2", "queue"]  # skipped stacks never ran


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ComposeError("x"), Reason.COMPOSE_FAILED),
        (HealthCheckError("x"), Reason.HEALTH_CHECK_FAILED),
        (SecretError("x"), Reason.SECRET_DECRYPT_FAILED),
    ],
)
def test_failure_reason_follows_the_error(error: Exception, reason: Reason) -> None:
    (result,) = run_stacks([planned("a")], Recorder({"a": fail(error)}), max_parallel=1)
    assert (result.state, result.reason) == (StackState.FAILED, reason)


def test_an_unexpected_exception_fails_only_its_stack() -> None:
    work = Recorder({"b": fail(ValueError("bad value"))})
    stacks = [planned("a"), planned("b"), planned("c", "a"), planned("d", "b")]
    results = run_stacks(stacks, work, max_parallel=1)
    by_name = {r.name: r for r in results}
    assert states(results) == {
        "a": StackState.SUCCEEDED,
        "b": StackState.FAILED,
        "c": StackState.SUCCEEDED,
        "d": StackState.SKIPPED,
    }
    assert by_name["b"].reason is Reason.COMPOSE_FAILED
    assert "ValueError" in (by_name["b"].error or "")
    assert "bad value" in (by_name["b"].error or "")


@pytest.mark.parametrize(("max_parallel", "count"), [(1, 5), (2, 6), (3, 9)])
def test_max_parallel_is_a_bound_and_is_reached(max_parallel: int, count: int) -> None:
    # Each call waits at a barrier for max_parallel - 1 others: that proves the bound is reached.
    barrier = threading.Barrier(max_parallel, timeout=PATIENCE)
    lock = threading.Lock()
    active = 0
    peak = 0
    # What the scheduler itself has started and not yet finished, seen synchronously through on_change.
    in_flight: set[str] = set()
    peak_in_flight = 0

    def one() -> str:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            barrier.wait()
        finally:
            with lock:
                active -= 1
        return ""

    def on_change(result: StackResult) -> None:
        nonlocal peak_in_flight
        if result.state is StackState.RUNNING:
            in_flight.add(result.name)
        else:
            in_flight.discard(result.name)
        peak_in_flight = max(peak_in_flight, len(in_flight))

    names = [f"s{i}" for i in range(count)]
    work = Recorder(dict.fromkeys(names, one))
    results = run_stacks([planned(n) for n in names], work, max_parallel=max_parallel, on_change=on_change)
    assert states(results) == dict.fromkeys(names, StackState.SUCCEEDED)
    assert peak == max_parallel
    assert peak_in_flight == max_parallel


def test_on_change_sees_running_then_one_final_state() -> None:
    changes: list[StackResult] = []
    stacks = [planned("a"), planned("b", "a"), planned("c"), planned("d", action=Action.REMOVE)]
    results = run_stacks(stacks, Recorder({"a": fail(ComposeError("no"))}), max_parallel=2, on_change=changes.append)
    seen = {s.name: [(r.state, r.action) for r in changes if r.name == s.name] for s in stacks}
    assert seen == {
        "a": [(StackState.RUNNING, Action.DEPLOY), (StackState.FAILED, Action.DEPLOY)],
        "b": [(StackState.SKIPPED, Action.DEPLOY)],  # never started, so never RUNNING
        "c": [(StackState.RUNNING, Action.DEPLOY), (StackState.SUCCEEDED, Action.DEPLOY)],
        "d": [(StackState.RUNNING, Action.REMOVE), (StackState.SUCCEEDED, Action.REMOVE)],
    }
    finals = {r.name: r for r in changes if r.state is not StackState.RUNNING}
    assert finals == {r.name: r for r in results}


def test_nothing_to_run() -> None:
    assert run_stacks([], Recorder(), max_parallel=4) == ()


def test_at_most_per_group_run_at_once_and_a_full_group_holds_no_worker() -> None:
    """Three stacks of host a (one at a time there), one of host b, two local, four workers: the first
    four to start must be a1, b1, l1, l2 together (a2 and a3 wait without taking a worker), then a2, a3."""
    hosts = {"a1": "ssh://a", "a2": "ssh://a", "a3": "ssh://a", "b1": "ssh://b", "l1": None, "l2": None}
    first_wave = threading.Barrier(4, timeout=PATIENCE)
    running: dict[str | None, int] = {}
    most: dict[str | None, int] = {}
    lock = threading.Lock()
    started: list[str] = []

    def work(stack: PlannedStack) -> str:
        host = hosts[stack.name]
        with lock:
            started.append(stack.name)
            running[host] = running.get(host, 0) + 1
            most[host] = max(most.get(host, 0), running[host])
            wave = len(started) <= 4
        if wave:
            first_wave.wait()  # broken (an error) unless four run at once
        with lock:
            running[host] -= 1
        return "up"

    stacks = [planned(name) for name in hosts]
    results = run_stacks(stacks, work, max_parallel=4, group=lambda s: hosts[s.name], per_group=1)
    assert set(states(results).values()) == {StackState.SUCCEEDED}
    assert set(started[:4]) == {"a1", "b1", "l1", "l2"} and started[4:] == ["a2", "a3"]
    assert most["ssh://a"] == most["ssh://b"] == 1

"""The reconcile loop's decisions and the closed set of reasons, as tables.

One closed set of reasons decides what is transient (retried with backoff) and what is terminal
(the commit waits for a new one): every Reason is on exactly one side, and every error deployer
raises maps to one Reason.
"""

from __future__ import annotations

import errno

import pytest

from deployer.errors import (
    BusyError,
    CatalogError,
    ComposeError,
    ComposeInvalidError,
    DeployerError,
    EngineError,
    FetchError,
    HealthCheckError,
    KeyUnavailableError,
    KnownSecretError,
    NotOnBranchError,
    PlanError,
    RefNotFoundError,
    SecretError,
)
from deployer.model import TRANSIENT, Attempt, DeploymentState, Reason
from deployer.plan.retry import MAX_RETRY, Step, backoff, next_step
from deployer.reasons import REASON_OF, reason_for

HEAD = "a" * 40
OLD = "b" * 40
NOW = 1_000_000.0

TERMINAL = {
    Reason.NOT_ON_BRANCH, Reason.UNSIGNED, Reason.REF_NOT_FOUND, Reason.PLAN_INVALID, Reason.SECRET_DECRYPT_FAILED,
    Reason.KNOWN_SECRET,
    Reason.COMPOSE_INVALID, Reason.COMPOSE_FAILED, Reason.HEALTH_CHECK_FAILED, Reason.DEPENDENCY_FAILED,
}  # fmt: skip


def test_every_reason_is_either_transient_or_terminal() -> None:
    assert set(Reason) == TRANSIENT | TERMINAL
    assert not TRANSIENT & TERMINAL
    assert {Reason.FETCH_FAILED, Reason.ENGINE_UNREACHABLE, Reason.LOCK_HELD, Reason.KEY_UNAVAILABLE,
                         Reason.DISK_FULL, Reason.INTERRUPTED} == TRANSIENT  # fmt: skip


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (KeyUnavailableError("secrets/a.env: cannot decrypt: SOPS_AGE_KEY_FILE /k cannot be read"),
         Reason.KEY_UNAVAILABLE),
        (SecretError("secrets/a.env: cannot decrypt: no age identity can decrypt it"), Reason.SECRET_DECRYPT_FAILED),
        (KnownSecretError("secrets/a.env: A: still the committed placeholder"), Reason.KNOWN_SECRET),
        (RefNotFoundError("commit 'dead' does not exist"), Reason.REF_NOT_FOUND),
        (FetchError("cannot fetch https://git.example/x: Connection refused"), Reason.FETCH_FAILED),
        (BusyError("another deployment is running"), Reason.LOCK_HELD),
        (EngineError("docker engine not reachable"), Reason.ENGINE_UNREACHABLE),
        (NotOnBranchError("commit x is not on main"), Reason.NOT_ON_BRANCH),
        (HealthCheckError("did not become healthy"), Reason.HEALTH_CHECK_FAILED),
        (ComposeError("compose up failed"), Reason.COMPOSE_FAILED),
        (ComposeInvalidError("config rejected it"), Reason.COMPOSE_INVALID),
        (CatalogError("x-deployer.depends_on[0]: unknown stack"), Reason.PLAN_INVALID),
        (PlanError("cycle"), Reason.PLAN_INVALID),
        # failures
        (FetchError("cannot check out abc into /s: error: unable to write file: No space left on device"),
         Reason.DISK_FULL),
        (ComposeError("compose up failed", output="write /var/lib/docker/x: no space left on device"),
         Reason.DISK_FULL),
        (OSError(errno.ENOSPC, "No space left on device"), Reason.DISK_FULL),
        (DeployerError("unexpected"), Reason.COMPOSE_FAILED),
        (RuntimeError("a bug"), Reason.COMPOSE_FAILED),
    ],
)  # fmt: skip
def test_reason_for(error: BaseException, reason: Reason) -> None:
    assert reason_for(error) is reason


def test_every_error_class_of_the_table_is_reachable() -> None:
    """Most specific first: no entry is shadowed by an earlier, broader one."""
    for index, (kind, reason) in enumerate(REASON_OF):
        assert not any(issubclass(kind, earlier) for earlier, _ in REASON_OF[:index]), kind
        assert reason_for(kind("x")) is reason


@pytest.mark.parametrize(("failures", "seconds"), [(0, 10), (1, 10), (2, 20), (3, 40), (6, 320), (7, 600), (50, 600)])
def test_backoff_doubles_from_ten_seconds_to_ten_minutes(failures: int, seconds: float) -> None:
    assert backoff(failures) == seconds <= MAX_RETRY


def attempt(commit: str, state: DeploymentState, reason: Reason | None = None, *, ago: float = 0,
            failures: int = 0) -> Attempt:  # fmt: skip
    return Attempt("d1", commit, state, reason, finished_at=NOW - ago, transient_failures=failures)


F, S, Q, R = DeploymentState.FAILED, DeploymentState.SUCCEEDED, DeploymentState.QUEUED, DeploymentState.RUNNING


@pytest.mark.parametrize(
    ("converged", "latest", "step", "why", "retry_in"),
    [
        (True, None, Step.NOTHING, "converged", None),
        (True, attempt(HEAD, F, Reason.FETCH_FAILED, failures=1), Step.NOTHING, "converged", None),
        (False, None, Step.DEPLOY, f"{HEAD[:12]} is not deployed yet", None),
        (False, attempt(HEAD, Q), Step.NOTHING, "is in hand", None),
        (False, attempt(OLD, R), Step.NOTHING, "is in hand", None),
        # a rewind, a refused push, a lost webhook: the newest attempt was of another commit
        (False, attempt(OLD, S), Step.DEPLOY, f"the last deployment was of {OLD[:12]}", None),
        (False, attempt(OLD, F, Reason.NOT_ON_BRANCH), Step.DEPLOY, "is not deployed", None),
        (False, attempt(HEAD, S), Step.DEPLOY, "deployed only in part", None),
        # terminal failures of the head wait for a new commit
        *[(False, attempt(HEAD, F, reason, ago=10_000), Step.NOTHING, "waiting for a new commit", None)
          for reason in sorted(TERMINAL - {Reason.DEPENDENCY_FAILED})],
        # transient failures of the head: retried once the backoff has passed
        (False, attempt(HEAD, F, Reason.KEY_UNAVAILABLE, ago=3, failures=1), Step.WAIT, "retry 1", 7),
        (False, attempt(HEAD, F, Reason.KEY_UNAVAILABLE, ago=10, failures=1), Step.DEPLOY, "retry 1", None),
        (False, attempt(HEAD, F, Reason.FETCH_FAILED, ago=15, failures=2), Step.WAIT, "retry 2", 5),
        (False, attempt(HEAD, F, Reason.LOCK_HELD, ago=599, failures=9), Step.WAIT, "retry 9", 1),
        (False, attempt(HEAD, F, Reason.DISK_FULL, ago=600, failures=9), Step.DEPLOY, "after DiskFull", None),
        (False, attempt(HEAD, F, None, ago=10_000), Step.NOTHING, "waiting for a new commit", None),
    ],
)  # fmt: skip
def test_next_step(converged: bool, latest: Attempt | None, step: Step, why: str, retry_in: float | None) -> None:
    decided = next_step(head=HEAD, converged=converged, latest=latest, now=NOW)
    assert decided.step is step
    assert why in decided.why
    assert decided.retry_at == (None if retry_in is None else NOW + retry_in)

"""Commit statuses as tables: what each phase of a deployment says, and how each forge spells its state.

See ../shared/spec/contract.md section 6 and ../shared/reference/protocols.md section 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from deployer.model import Action, CommitStatus, Outcome, Reason, StackResult, StackState, StatusState
from deployer.report.forges import POSTERS, gitea, github, gitlab
from deployer.report.statuses import (
    MAX_DESCRIPTION,
    describe_final,
    describe_queued,
    describe_running,
    describe_superseded,
    one_line,
)

SHA = "c" * 40
NEWER = "0123456789abcdef0123456789abcdef01234567"
URL = "https://deployer.example/deployments/d1"
LONG_ERROR = "\n".join(f"line {i}: compose said something\twith  spaces" for i in range(60))[:2000].ljust(2000, "x")


def assert_one_line(description: str) -> None:
    assert 0 < len(description) <= MAX_DESCRIPTION
    assert description == description.strip()
    assert not any(c in description for c in "\n\r\t\v\f")


# one_line ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("deployed in 1.2s", "deployed in 1.2s", id="short"),
        pytest.param("a\nb\r\nc\td   e", "a b c d e", id="newlines-and-tabs"),
        pytest.param("  padded\n", "padded", id="leading-and-trailing"),
        pytest.param("x" * MAX_DESCRIPTION, "x" * MAX_DESCRIPTION, id="exactly-140-kept"),
        pytest.param("x" * 130 + "\n\n\n" + "y" * 9, "x" * 130 + " " + "y" * 9, id="140-after-collapsing"),
        pytest.param("", "", id="empty"),
        # failures: cut, and the cut marked with an ellipsis
        pytest.param("x" * (MAX_DESCRIPTION + 1), "x" * (MAX_DESCRIPTION - 1) + "…", id="141-cut"),
        pytest.param("word\n" * 100, ("word " * 28)[: MAX_DESCRIPTION - 1] + "…", id="multiline-cut"),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected
    assert len(one_line(text)) <= MAX_DESCRIPTION


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("abcdef", 6, "abcdef", id="fits"),
        # failures
        pytest.param("abcdef", 5, "abcd…", id="cut"),
        pytest.param("a b\nc d", 4, "a b…", id="cut-after-collapsing"),
    ],
)
def test_one_line_limit(text: str, limit: int, expected: str) -> None:
    assert one_line(text, limit) == expected


# queued, running, superseded ----------------------------------------------------------------------------------


def test_describe_queued() -> None:
    status = describe_queued(SHA, "d1e2f3a4b5c6", target_url=URL)
    assert (status.sha, status.context, status.state, status.target_url) == (SHA, "deployer", "pending", URL)
    assert "d1e2f3a4b5c6" in status.description
    assert_one_line(status.description)


def test_describe_running() -> None:
    status = describe_running(SHA, ["db", "web"], target_url=None)
    assert (status.sha, status.context, status.state, status.target_url) == (SHA, "deployer", "running", None)
    assert "db" in status.description
    assert "web" in status.description
    assert_one_line(status.description)


def test_describe_running_many_stacks_stays_one_line() -> None:
    status = describe_running(SHA, [f"stack-number-{i}" for i in range(40)], target_url=URL)
    assert status.state == StatusState.RUNNING
    assert_one_line(status.description)


def test_describe_superseded() -> None:
    status = describe_superseded(SHA, NEWER, target_url=URL)
    assert (status.sha, status.context, status.state, status.target_url) == (SHA, "deployer", "superseded", URL)
    assert NEWER[:12] in status.description
    assert "superseded" in status.description
    assert_one_line(status.description)


# describe_final ----------------------------------------------------------------------------------------------


def ok(name: str, action: Action = Action.DEPLOY) -> StackResult:
    return StackResult(name, action, StackState.SUCCEEDED, started_at=100.0, finished_at=103.5)


def failed(name: str, reason: Reason, error: str = "it broke") -> StackResult:
    return StackResult(name, Action.DEPLOY, StackState.FAILED, reason=reason, error=error,
                       started_at=100.0, finished_at=101.0)  # fmt: skip


def skipped(name: str, reason: Reason, error: str = "not started") -> StackResult:
    return StackResult(name, Action.DEPLOY, StackState.SKIPPED, reason=reason, error=error)


def outcome(*results: StackResult, error: str | None = None) -> Outcome:
    return Outcome("d1e2f3a4b5c6", SHA, results=results, error=error)


S, F, E = StatusState.SUCCESS, StatusState.FAILURE, StatusState.ERROR


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(
            outcome(ok("db"), ok("web")), [("deployer/db", S), ("deployer/web", S), ("deployer", S)], id="all-deployed"
        ),
        pytest.param(outcome(ok("old", Action.REMOVE)), [("deployer/old", S), ("deployer", S)], id="removed"),
        pytest.param(outcome(), [("deployer", S)], id="empty-plan"),
        # failures: a stack that ran and failed
        pytest.param(
            outcome(ok("db"), failed("web", Reason.COMPOSE_FAILED)),
            [("deployer/db", S), ("deployer/web", F), ("deployer", F)],
            id="compose-failed",
        ),
        pytest.param(
            outcome(failed("web", Reason.HEALTH_CHECK_FAILED)),
            [("deployer/web", F), ("deployer", F)],
            id="health-check-failed",
        ),
        pytest.param(
            outcome(failed("db", Reason.COMPOSE_FAILED), skipped("web", Reason.DEPENDENCY_FAILED)),
            [("deployer/db", F), ("deployer/web", E), ("deployer", F)],
            id="dependency-of-a-failed-stack",
        ),
        # errors: a stack that was never tried, or a deployment that could not start
        pytest.param(
            outcome(failed("web", Reason.SECRET_DECRYPT_FAILED), skipped("db", Reason.PLAN_INVALID)),
            [("deployer/web", E), ("deployer/db", E), ("deployer", E)],
            id="secret-decrypt-failed",
        ),
        pytest.param(
            outcome(failed("web", Reason.COMPOSE_INVALID)), [("deployer/web", E), ("deployer", E)], id="compose-invalid"
        ),
        pytest.param(
            outcome(skipped("web", Reason.PLAN_INVALID)), [("deployer/web", E), ("deployer", E)], id="plan-invalid"
        ),
        pytest.param(
            outcome(ok("db"), skipped("web", Reason.DEPENDENCY_FAILED)),
            [("deployer/db", S), ("deployer/web", E), ("deployer", E)],
            id="dependency-failed-alone",
        ),
        pytest.param(
            outcome(error="could not fetch https://git.example/ops/config: timed out"),
            [("deployer", E)],
            id="fetch-failed",
        ),
        pytest.param(outcome(error="cycle: a -> b -> a"), [("deployer", E)], id="plan-failed"),
        pytest.param(
            outcome(ok("db"), error="could not record the deployment"),
            [("deployer/db", S), ("deployer", E)],
            id="error-beats-success",
        ),
    ],
)
def test_describe_final_states(result: Outcome, expected: list[tuple[str, StatusState]]) -> None:
    statuses = describe_final(result, SHA, target_url=URL)
    assert [(s.context, s.state) for s in statuses] == expected
    assert all(s.sha == SHA and s.target_url == URL for s in statuses)
    for status in statuses:
        assert_one_line(status.description)


def test_describe_final_empty_plan_says_nothing_to_deploy() -> None:
    (status,) = describe_final(outcome(), SHA, target_url=None)
    assert status == CommitStatus(SHA, "deployer", "success", status.description, None)
    assert "nothing to deploy" in status.description


def test_describe_final_names_the_reason_and_the_failed_stack() -> None:
    *stacks, overall = describe_final(outcome(ok("db"), failed("web", Reason.HEALTH_CHECK_FAILED)), SHA, target_url=URL)
    assert "HealthCheckFailed" in stacks[1].description
    assert "web" in overall.description


def test_describe_final_error_says_why() -> None:
    (status,) = describe_final(outcome(error="could not fetch: timed out"), SHA, target_url=URL)
    assert "could not fetch: timed out" in status.description


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(outcome(failed("web", Reason.COMPOSE_FAILED, LONG_ERROR)), id="stack-error"),
        pytest.param(outcome(skipped("web", Reason.PLAN_INVALID, LONG_ERROR)), id="skipped-error"),
        pytest.param(outcome(error=LONG_ERROR), id="deployment-error"),
        pytest.param(
            outcome(*(failed(f"stack-with-a-long-name-{i}", Reason.COMPOSE_FAILED) for i in range(30))),
            id="many-failed-stacks",
        ),
        pytest.param(outcome(failed("x" * 200, Reason.COMPOSE_FAILED)), id="long-stack-name"),
    ],
)
def test_describe_final_descriptions_fit_one_line(result: Outcome) -> None:
    assert len(LONG_ERROR) == 2000
    assert LONG_ERROR.count("\n") > 10
    for status in describe_final(result, SHA, target_url=URL):
        assert_one_line(status.description)


# forge state mappings ----------------------------------------------------------------------------------------

GITHUB = {"pending": "pending", "running": "pending", "success": "success", "failure": "failure", "error": "error",
          "superseded": "error"}  # fmt: skip
GITLAB = {"pending": "pending", "running": "running", "success": "success", "failure": "failed", "error": "failed",
          "superseded": "canceled"}  # fmt: skip


@pytest.mark.parametrize(
    ("states", "expected", "allowed"),
    [
        pytest.param(github.STATES, GITHUB, {"pending", "success", "failure", "error"}, id="github"),
        pytest.param(gitea.STATES, GITHUB, {"pending", "success", "failure", "error"}, id="gitea-forgejo"),
        pytest.param(gitlab.STATES, GITLAB, {"pending", "running", "success", "failed", "canceled"}, id="gitlab"),
    ],
)
def test_forge_states(states: Mapping[StatusState, str], expected: dict[str, str], allowed: set[str]) -> None:
    assert {str(k): v for k, v in states.items()} == expected
    assert set(states) == set(StatusState)
    assert set(states.values()) <= allowed


class _Response:
    status_code = 201
    ok = True
    text = "{}"


class _Session:
    """Records what a poster would send; answers 201."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def post(self, url: str, *, json: dict[str, Any], headers: dict[str, str], timeout: object) -> _Response:
        self.bodies.append(json)
        return _Response()


@pytest.mark.parametrize(
    ("forge", "state", "expected"),
    [
        pytest.param("github", StatusState.RUNNING, "pending", id="github-running"),
        pytest.param("github", StatusState.SUPERSEDED, "error", id="github-superseded"),
        pytest.param("gitea", StatusState.RUNNING, "pending", id="gitea-running"),
        pytest.param("forgejo", StatusState.SUPERSEDED, "error", id="forgejo-superseded"),
        pytest.param("gitlab", StatusState.RUNNING, "running", id="gitlab-running"),
        pytest.param("gitlab", StatusState.ERROR, "failed", id="gitlab-error"),
        pytest.param("gitlab", StatusState.FAILURE, "failed", id="gitlab-failure"),
        pytest.param("gitlab", StatusState.SUPERSEDED, "canceled", id="gitlab-superseded"),
    ],
)
def test_posters_send_the_mapped_state(forge: str, state: StatusState, expected: str) -> None:
    session = _Session()
    status = CommitStatus(SHA, "deployer/web", state, "d", None)
    POSTERS[forge](session, "https://api.example", "ops/config", "t", status)  # type: ignore[arg-type]
    assert session.bodies[0]["state"] == expected

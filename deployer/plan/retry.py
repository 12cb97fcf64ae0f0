"""What the reconcile loop does next: deploy the branch head, retry it later, or leave it. Pure.

The loop asks one question: is what runs what the branch head says? If not, the newest attempt
decides. A transient failure of the head (model.TRANSIENT) is retried with backoff; a terminal one
waits for a new commit, a manual request or `force`, because the same commit would fail the same way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from deployer.model import TRANSIENT, Attempt, DeploymentState

__all__ = ["FIRST_RETRY", "MAX_RETRY", "Next", "Step", "backoff", "next_step"]

#: seconds before the first retry of a transient failure; doubled for each further one in a row
FIRST_RETRY = 10.0
#: the longest wait between two retries of the same commit
MAX_RETRY = 600.0


class Step(enum.StrEnum):
    NOTHING = "nothing"  # converged, in hand, or waiting for a new commit
    DEPLOY = "deploy"  # queue the head now
    WAIT = "wait"  # a retry is due at `retry_at`


@dataclass(frozen=True)
class Next:
    step: Step
    why: str
    retry_at: float | None = None
    attempt: int = 0  # the retry this would be (1 = the first retry)


def backoff(failures: int, first: float = FIRST_RETRY) -> float:
    """Seconds to wait after `failures` transient failures in a row: 10, 20, 40 ... (from `first`), at most 600."""
    return min(first * 2.0 ** max(failures - 1, 0), MAX_RETRY)


def next_step(*, head: str, converged: bool, latest: Attempt | None, now: float,  # noqa: PLR0911 -- one return per rule
              first_retry: float = FIRST_RETRY) -> Next:  # fmt: skip
    """Decide what to do about the branch head `head`, given the newest attempt on the branch (a transient
    failure is retried `first_retry` seconds after it, then after twice as long each time)."""
    if converged:
        return Next(Step.NOTHING, f"converged: what runs is what {head[:12]} says")
    if latest is None:
        return Next(Step.DEPLOY, f"{head[:12]} is not deployed yet")
    if latest.state in (DeploymentState.QUEUED, DeploymentState.RUNNING):
        return Next(Step.NOTHING, f"deployment {latest.deployment_id} of {latest.commit[:12]} is in hand")
    if latest.commit != head:
        return Next(Step.DEPLOY, f"{head[:12]} is not deployed (the last deployment was of {latest.commit[:12]})")
    if latest.state is DeploymentState.SUCCEEDED:  # of part of the stacks (a person named some)
        return Next(Step.DEPLOY, f"{head[:12]} is deployed only in part")
    if latest.reason not in TRANSIENT:
        return Next(Step.NOTHING, f"{head[:12]} failed ({latest.reason}): waiting for a new commit, a manual"
                                  " request or force")  # fmt: skip
    failures = max(latest.transient_failures, 1)
    due = (latest.finished_at or now) + backoff(failures, first_retry)
    why = f"retry {failures} of {head[:12]} after {latest.reason}"
    if now >= due:
        return Next(Step.DEPLOY, why, attempt=failures)
    return Next(Step.WAIT, why, retry_at=due, attempt=failures)

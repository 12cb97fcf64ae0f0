"""What each commit status says: pure functions from deployments to CommitStatus values.

`deployer` is the whole deployment's context; `deployer/<stack>` each affected stack's. A status
never says more than one line of 140 characters, and never a secret (errors are redacted upstream).
"""

from __future__ import annotations

from deployer.model import CommitStatus, Outcome, Reason, StackResult, StackState, StatusState

__all__ = ["MAX_DESCRIPTION", "describe_final", "describe_queued", "describe_running", "describe_superseded",
           "one_line"]  # fmt: skip

MAX_DESCRIPTION = 140
CONTEXT = "deployer"


def one_line(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """Collapse whitespace and cut to `limit` characters, marking the cut with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_queued(sha: str, deployment_id: str, *, target_url: str | None) -> CommitStatus:
    return CommitStatus(sha, CONTEXT, StatusState.PENDING, f"queued as deployment {deployment_id}", target_url)


def describe_running(
    sha: str, stacks: list[str], *, target_url: str | None, rewound_from: tuple[str, ...] = ()
) -> CommitStatus:
    what = ", ".join(stacks) if stacks else "no stack changed"
    return CommitStatus(sha, CONTEXT, StatusState.RUNNING, one_line(_rewound(rewound_from) + f"deploying: {what}"),
                        target_url)  # fmt: skip


def describe_superseded(sha: str, by: str, *, target_url: str | None) -> CommitStatus:
    return CommitStatus(sha, CONTEXT, StatusState.SUPERSEDED, f"superseded by {by[:12]}: not deployed", target_url)


def describe_final(outcome: Outcome, sha: str, *, target_url: str | None) -> list[CommitStatus]:
    """One status per affected stack, then the deployment's own.

    `error` when deployer could not fetch, plan or prepare (nothing was started), `failure` when a
    stack was started and failed, `success` otherwise.
    """
    statuses = [
        CommitStatus(sha, f"{CONTEXT}/{r.name}", stack_state(r), one_line(_stack_text(r)), target_url)
        for r in outcome.results
    ]
    if outcome.error:
        overall = CommitStatus(sha, CONTEXT, StatusState.ERROR, one_line(f"not deployed: {outcome.error}"), target_url)
    else:
        overall = CommitStatus(sha, CONTEXT, _overall_state(outcome), one_line(_overall_text(outcome)), target_url)
    return [*statuses, overall]


def stack_state(result: StackResult) -> StatusState:
    """`error` if the stack was never tried (bad input, or a dependency failed), `failure` if it ran and failed."""
    if result.state is StackState.SUCCEEDED:
        return StatusState.SUCCESS
    if result.state is StackState.ROLLED_BACK:
        return StatusState.FAILURE
    if result.state is StackState.FAILED and result.reason in (Reason.COMPOSE_FAILED, Reason.HEALTH_CHECK_FAILED):
        return StatusState.FAILURE
    return StatusState.ERROR


def _overall_state(outcome: Outcome) -> StatusState:
    states = {stack_state(r) for r in outcome.results}
    if StatusState.FAILURE in states:
        return StatusState.FAILURE
    if StatusState.ERROR in states:
        return StatusState.ERROR
    return StatusState.SUCCESS


def _rewound(commits: tuple[str, ...]) -> str:
    return f"history rewound from {', '.join(c[:12] for c in commits)}; " if commits else ""


def _overall_text(outcome: Outcome) -> str:
    return _rewound(outcome.rewound_from) + _results_text(outcome)


def _results_text(outcome: Outcome) -> str:
    if not outcome.results:
        return "nothing to deploy: no stack changed"
    done = sum(r.state is StackState.SUCCEEDED for r in outcome.results)
    failed = [r.name for r in outcome.results if r.state is StackState.FAILED]
    rolled = [f"{r.name} rolled back to {r.rolled_back_to[:12]}" for r in outcome.results if r.rolled_back_to]
    text = f"{done} of {len(outcome.results)} stacks deployed"
    text += f"; {', '.join(rolled)}" if rolled else ""
    return f"{text}; failed: {', '.join(failed)}" if failed else text


def _stack_text(result: StackResult) -> str:
    took = f" in {result.duration:.1f}s" if result.duration is not None else ""
    if result.state is StackState.SUCCEEDED:
        return f"deployed{took}" if result.action == "deploy" else f"removed{took}"
    if result.rolled_back_to:  # first, so that the cut at 140 characters never hides it
        return f"rolled back to {result.rolled_back_to[:12]} after {result.reason}: {result.error}"
    return f"{result.reason}: {result.error}" if result.reason else str(result.error or result.state)

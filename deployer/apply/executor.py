"""Run planned stacks in dependency order, each as soon as its own dependencies have succeeded.

This knows nothing of compose or git: it schedules a `work` function over a graph, at most
`max_parallel` at a time and at most `per_group` of one group (the stacks of one other Docker host)
at a time, a stack whose group is full waiting without holding a worker. It turns exceptions into
FAILED results (ROLLED_BACK when the work brought the stack back: RolledBackError), and marks the
dependents of a stack that did not succeed SKIPPED (not failed) while unrelated stacks carry on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from graphlib import TopologicalSorter

from deployer.errors import DeployerError, RolledBackError
from deployer.model import PlannedStack, Reason, StackName, StackResult, StackState
from deployer.reasons import reason_for

__all__ = ["Work", "run_stacks"]

#: deploy or remove one stack; raise DeployerError on failure, return compose's output on success
Work = Callable[[PlannedStack], str]


def run_stacks(
    stacks: Sequence[PlannedStack],
    work: Work,
    *,
    max_parallel: int,
    on_change: Callable[[StackResult], None] = lambda result: None,
    group: Callable[[PlannedStack], str | None] = lambda planned: None,
    per_group: int | None = None,
) -> tuple[StackResult, ...]:
    """Run `work` over `stacks` honouring their in-plan `depends_on`; never raises.

    `on_change` sees each stack start (RUNNING) and end (SUCCEEDED, FAILED or SKIPPED). A stack whose
    `group` is not None runs only while fewer than `per_group` of that group run.
    """
    by_name = {s.name: s for s in stacks}
    sorter: TopologicalSorter[StackName] = TopologicalSorter({s.name: set(s.depends_on) for s in stacks})
    sorter.prepare()
    results: dict[StackName, StackResult] = {}
    queue: list[StackName] = []
    running: dict[Future[StackResult], StackName] = {}
    busy: dict[str, int] = {}  # stacks running per group

    def fits(name: StackName) -> bool:
        key = group(by_name[name])
        return key is None or per_group is None or busy.get(key, 0) < per_group

    def finish(result: StackResult) -> None:
        results[result.name] = result
        on_change(result)
        sorter.done(result.name)

    with ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="stack") as pool:
        while sorter.is_active():
            for name in sorted(sorter.get_ready()):
                blocked = [d for d in by_name[name].depends_on if results[d].state is not StackState.SUCCEEDED]
                if blocked:
                    finish(_skipped(by_name[name], blocked))
                else:
                    queue.append(name)
            while len(running) < max_parallel and (pick := next((n for n in queue if fits(n)), None)):
                queue.remove(pick)
                planned = by_name[pick]
                if (key := group(planned)) is not None:
                    busy[key] = busy.get(key, 0) + 1
                started = StackResult(planned.name, planned.action, StackState.RUNNING, started_at=time.time())
                on_change(started)
                running[pool.submit(_attempt, work, planned, started)] = planned.name
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    if (key := group(by_name[running.pop(future)])) is not None:
                        busy[key] -= 1
                    finish(future.result())
    return tuple(results[s.name] for s in stacks)


def _attempt(work: Work, planned: PlannedStack, started: StackResult) -> StackResult:
    try:
        output = work(planned)
    except RolledBackError as error:  # failed, and brought back to its last good commit
        return replace(
            started,
            state=StackState.ROLLED_BACK,
            reason=reason_for(error.cause),
            error=error.message,
            output=error.output or None,
            finished_at=time.time(),
            rolled_back_to=error.commit or None,
        )
    except DeployerError as error:
        return replace(
            started,
            state=StackState.FAILED,
            reason=reason_for(error),
            error=error.message,
            output=getattr(error, "output", None) or None,
            finished_at=time.time(),
        )
    except Exception as error:  # noqa: BLE001 -- one stack's bug must not stop the others
        message = f"stack {planned.name}: unexpected error: {type(error).__name__}: {error}"
        return replace(
            started, state=StackState.FAILED, reason=reason_for(error), error=message, finished_at=time.time()
        )
    return replace(started, state=StackState.SUCCEEDED, output=output or None, finished_at=time.time())


def _skipped(planned: PlannedStack, blocked: list[StackName]) -> StackResult:
    now = time.time()
    return StackResult(
        planned.name,
        planned.action,
        StackState.SKIPPED,
        reason=Reason.DEPENDENCY_FAILED,
        error=f"skipped: dependency {', '.join(blocked)} did not succeed",
        started_at=now,
        finished_at=now,
    )

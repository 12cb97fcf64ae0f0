"""The recorder: every state change of one deployment, written with what it tells in one transaction.

Each method makes one state-store write whose `Told` carries the audit event that tells the change
and the commit statuses it implies (deployer.state: the outbox pattern), so the record, the audit
trail and the forge's statuses never tell different stories, and a crash between two of them cannot
happen: the deployment's final state and its final statuses are one commit. No step of the use
case writes events or statuses on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace

from deployer.errors import DeployerError
from deployer.intake import submit
from deployer.model import (
    Action,
    CommitStatus,
    Event,
    Intake,
    Outcome,
    Plan,
    StackResult,
    StackState,
    StatusTarget,
    Told,
    Trigger,
    told,
)
from deployer.pipeline.wiring import Deps, Request
from deployer.queue import Queue
from deployer.reasons import reason_for
from deployer.report.statuses import describe_final, describe_superseded
from deployer.report.targets import target_url

__all__ = ["Recorder", "superseded_statuses"]

log = logging.getLogger("deployer.pipeline")


class Recorder:
    """Records one deployment, from queued (or started) to finished, with its statuses to `target`."""

    def __init__(self, deps: Deps, deployment_id: str, request: Request, *, target: StatusTarget | None = None) -> None:
        self.deps, self.deployment_id, self.request, self.target = deps, deployment_id, request, target
        self.began = time.monotonic()
        self._refusal: Event | None = None

    @classmethod
    def queued(cls, deps: Deps, request: Request) -> Recorder:
        """A deployment run at once by its caller (the CLI), recorded through the one intake."""
        intake = Intake(trigger=Trigger(request.trigger), ref=request.ref, commit=None, actor=request.actor,
                        reason=request.reason, stacks=request.stacks, force=request.force)  # fmt: skip
        enqueued = submit(Queue(deps.store), deps.settings, intake, running=True)
        return cls(deps, enqueued.deployment_id, request)

    def _event(self, name: str, commit: str | None, **fields: object) -> Told:
        return told(name, {"deployment_id": self.deployment_id, "commit": commit, **fields})

    def started(self, plan: Plan, *, depends_on: Mapping[str, tuple[str, ...]]) -> None:
        if plan.rewound_from:
            log.warning("deployment %s: history rewound: %s does not contain %s (deployed before)",
                        self.deployment_id, plan.target[:12], ", ".join(c[:12] for c in plan.rewound_from))  # fmt: skip
        orphaned = [s.name for s in plan.stacks if s.action is Action.ORPHANED]
        planned = {s.name: list(s.reasons) for s in plan.runnable}
        event = self._event("deployment.started", plan.target, trigger=self.request.trigger, actor=self.request.actor,
                            stacks=list(planned), planned=planned or None, orphaned=orphaned or None,
                            rewound_from=list(plan.rewound_from) or None)  # fmt: skip
        self.deps.store.start_deployment(self.deployment_id, plan, depends_on=depends_on, told=event)

    def stack(self, result: StackResult, *, commit: str) -> None:
        """A stack started or finished; a success moves its last good commit in the same transaction."""
        if result.state is StackState.RUNNING:
            event = self._event("stack.started", commit, stack=result.name, action=result.action)
        else:
            duration = None if result.duration is None else round(result.duration * 1000)
            event = self._event(f"stack.{result.state}", commit, stack=result.name, action=result.action,
                                result=str(result.state), duration_ms=duration, reason=result.reason,
                                error=result.error, rolled_back_to=result.rolled_back_to)  # fmt: skip
        self.deps.store.record_stack(self.deployment_id, result, commit=commit, told=event)

    def release_held(self, *, commit: str) -> list[str]:
        """A push releases every stack a person held at another commit."""

        def tell(names: list[str]) -> Told:
            return Told(tuple(Event("stack.released", {
                "deployment_id": self.deployment_id, "commit": commit, "stack": name,
                "trigger": self.request.trigger, "actor": self.request.actor,
            }) for name in names))  # fmt: skip

        return self.deps.store.release(told=tell)

    def hold_or_release(self, names: list[str], *, commit: str, hold: bool) -> None:
        """A person's deployment at a commit other than the head holds what it deployed; one at the head
        releases it."""
        if not names:
            return
        if hold:
            event = self._event("stack.held", commit, stacks=names, actor=self.request.actor,
                                reason=self.request.reason)  # fmt: skip
            self.deps.store.hold(names, commit=commit, actor=self.request.actor, reason=self.request.reason,
                                 told=event)  # fmt: skip
            return

        def tell(released: list[str]) -> Told:
            return self._event("stack.released", commit, stacks=released, actor=self.request.actor)

        self.deps.store.release(names, told=tell)

    def secrets_decrypted(self, *, commit: str, stack: str, files: list[str]) -> None:
        self.deps.store.tell(self._event("secrets.decrypted", commit, stack=stack, files=files))

    def not_started(self, error: DeployerError, *, commit: str | None) -> Outcome:
        """The deployment stopped before any stack changed."""
        return Outcome(self.deployment_id, commit, error=error.message, reason=reason_for(error),
                       exit_code=error.exit_code)  # fmt: skip

    def refused(self, error: DeployerError, *, commit: str) -> Outcome:
        """A push or poll turned away (nothing deployed): said in the log, and in the audit trail with
        the deployment's end."""
        log.warning("deployment %s refused: %s", self.deployment_id, error.message)
        self._refusal = Event("request.refused", {
            "deployment_id": self.deployment_id, "commit": commit, "ref": self.request.ref,
            "trigger": self.request.trigger, "actor": self.request.actor, "reason": str(reason_for(error)),
            "error": error.message,
        })  # fmt: skip
        return self.not_started(error, commit=commit)

    def unsigned(self, error: DeployerError, *, commit: str) -> Outcome:
        """A commit DEPLOYER_REQUIRE_SIGNED turns away (nothing deployed): `commit.unsigned` with the end."""
        log.warning("deployment %s refused: %s", self.deployment_id, error.message)
        self._refusal = Event("commit.unsigned", {
            "deployment_id": self.deployment_id, "commit": commit, "ref": self.request.ref,
            "trigger": self.request.trigger, "actor": self.request.actor, "error": error.message,
        })  # fmt: skip
        return self.not_started(error, commit=commit)

    def finish(self, outcome: Outcome) -> Outcome:
        """The deployment's end, its `deployment.finished` event and its final statuses: one transaction."""
        said = Told((self._refusal,)) if self._refusal else Told()
        said += self._event("deployment.finished", outcome.commit, result=str(outcome.state),
                            trigger=self.request.trigger, actor=self.request.actor,
                            duration_ms=round((time.monotonic() - self.began) * 1000), reason=outcome.reason,
                            error=outcome.error, superseded_by=outcome.superseded_by,
                            transient=outcome.transient or None)  # fmt: skip
        sha = self.request.ref  # the commit the worker was asked to deploy (its statuses' commit)
        url = target_url(self.deps.settings, self.deployment_id)
        if outcome.superseded_by is not None:
            said += self._event("deployment.superseded", sha, superseded_by=outcome.superseded_by)
            if self.target is not None:
                finals = superseded_statuses(self.deps, sha, by=outcome.superseded_by, deployment_id=self.deployment_id)
                said += Told(statuses=tuple((self.target, self.deployment_id, s) for s in finals))
        elif self.target is not None:
            finals = describe_final(self._with_earlier_run(outcome), sha, target_url=url)
            said += Told(statuses=tuple((self.target, self.deployment_id, s) for s in finals))
        self.deps.store.finish_deployment(self.deployment_id, outcome, told=said)
        return outcome

    def _with_earlier_run(self, outcome: Outcome) -> Outcome:
        """`outcome` with the stacks a first run of this deployment deployed before a crash: resumed, it
        plans again and no longer has them, but the commit's statuses name every stack it deployed."""
        again = {r.name for r in outcome.results}
        earlier = tuple(r for r in self.deps.store.finished_stacks(self.deployment_id) if r.name not in again)
        return replace(outcome, results=earlier + outcome.results) if earlier else outcome


def superseded_statuses(deps: Deps, sha: str, *, by: str, deployment_id: str) -> list[CommitStatus]:
    """A superseded commit's final statuses: "superseded by", unless it was deployed before (a second
    delivery of it arrived late): then what that deployment said, again, which this one's `pending` hid."""
    earlier = deps.store.succeeded_before(sha)
    if earlier is None:
        return [describe_superseded(sha, by, target_url=target_url(deps.settings, deployment_id))]
    then = Outcome(earlier, sha, tuple(deps.store.finished_stacks(earlier)))
    return describe_final(then, sha, target_url=target_url(deps.settings, earlier))

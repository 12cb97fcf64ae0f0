"""The recorder: every state change of one deployment, written with the audit event that tells it.

Each method writes the state store and then the journal, so the two never tell different stories
and no step of the use case writes either on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from deployer.errors import DeployerError
from deployer.intake import submit
from deployer.model import Action, Intake, Outcome, Plan, StackResult, StackState, Trigger
from deployer.pipeline.wiring import Deps, Request
from deployer.queue import Queue
from deployer.reasons import reason_for

__all__ = ["Recorder"]

log = logging.getLogger("deployer.pipeline")


class Recorder:
    """Records one deployment, from queued (or started) to finished."""

    def __init__(self, deps: Deps, deployment_id: str, request: Request) -> None:
        self.deps, self.deployment_id, self.request = deps, deployment_id, request
        self.began = time.monotonic()

    @classmethod
    def queued(cls, deps: Deps, request: Request) -> Recorder:
        """A deployment run at once by its caller (the CLI), recorded through the one intake."""
        intake = Intake(trigger=Trigger(request.trigger), ref=request.ref, commit=None, actor=request.actor,
                        reason=request.reason, stacks=request.stacks, force=request.force)  # fmt: skip
        enqueued = submit(Queue(deps.store), deps.journal, deps.settings, intake, running=True)
        return cls(deps, enqueued.deployment_id, request)

    def started(self, plan: Plan, *, depends_on: Mapping[str, tuple[str, ...]]) -> None:
        self.deps.store.start_deployment(self.deployment_id, plan, depends_on=depends_on)
        if plan.rewound_from:
            log.warning("deployment %s: history rewound: %s does not contain %s (deployed before)",
                        self.deployment_id, plan.target[:12], ", ".join(c[:12] for c in plan.rewound_from))  # fmt: skip
        self.deps.journal.record("deployment.started", deployment_id=self.deployment_id, commit=plan.target,
                                 trigger=self.request.trigger, actor=self.request.actor,
                                 stacks=[s.name for s in plan.runnable], orphaned=[s.name for s in plan.stacks
                                                                                   if s.action is Action.ORPHANED],
                                 rewound_from=list(plan.rewound_from) or None)  # fmt: skip

    def stack(self, result: StackResult, *, commit: str) -> None:
        """A stack started or finished; a success moves its last good commit in the same transaction."""
        self.deps.store.record_stack(self.deployment_id, result, commit=commit)
        if result.state is StackState.RUNNING:
            self.deps.journal.record("stack.started", deployment_id=self.deployment_id, commit=commit,
                                     stack=result.name, action=result.action)  # fmt: skip
            return
        duration = None if result.duration is None else round(result.duration * 1000)
        self.deps.journal.record(f"stack.{result.state}", deployment_id=self.deployment_id, commit=commit,
                                 stack=result.name, action=result.action, result=str(result.state),
                                 duration_ms=duration, reason=result.reason, error=result.error)  # fmt: skip

    def released(self, names: list[str], *, commit: str) -> None:
        """A push released stacks a person had held at another commit."""
        for name in names:
            self.deps.journal.record("stack.released", deployment_id=self.deployment_id, commit=commit, stack=name,
                                     trigger=self.request.trigger, actor=self.request.actor)  # fmt: skip

    def secrets_decrypted(self, *, commit: str, stack: str, files: list[str]) -> None:
        self.deps.journal.record("secrets.decrypted", deployment_id=self.deployment_id, commit=commit, stack=stack,
                                 files=files)  # fmt: skip

    def not_started(self, error: DeployerError, *, commit: str | None) -> Outcome:
        """The deployment stopped before any stack changed."""
        return Outcome(self.deployment_id, commit, error=error.message, reason=reason_for(error),
                       exit_code=error.exit_code)  # fmt: skip

    def refused(self, error: DeployerError, *, commit: str) -> Outcome:
        """A push or poll turned away (nothing deployed): said in the log and the audit trail."""
        log.warning("deployment %s refused: %s", self.deployment_id, error.message)
        self.deps.journal.record("request.refused", deployment_id=self.deployment_id, commit=commit,
                                 ref=self.request.ref, trigger=self.request.trigger, actor=self.request.actor,
                                 reason=str(reason_for(error)), error=error.message)  # fmt: skip
        return self.not_started(error, commit=commit)

    def finish(self, outcome: Outcome) -> Outcome:
        self.deps.store.finish_deployment(self.deployment_id, outcome)
        self.deps.journal.record("deployment.finished", deployment_id=self.deployment_id, commit=outcome.commit,
                                 result=str(outcome.state), duration_ms=round((time.monotonic() - self.began) * 1000),
                                 reason=outcome.reason, error=outcome.error, superseded_by=outcome.superseded_by,
                                 transient=outcome.transient or None)  # fmt: skip
        return outcome

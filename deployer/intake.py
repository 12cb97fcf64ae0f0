"""The one way in: every deployment (a push, a poll, a person's request, the CLI) is recorded here.

`submit` writes the deployment with everything it was asked (trigger, actor, reason, ref and commit,
the stacks named, `force`), its webhook delivery and its `pending` commit status in one transaction,
then the `deployment.queued` audit event. Web workers use it too: it does no git or docker work.
"""

from __future__ import annotations

from deployer.model import Intake, StatusTarget, new_deployment_id
from deployer.queue import Enqueued, Queue
from deployer.report import Journal
from deployer.report.statuses import describe_queued
from deployer.report.targets import target_url
from deployer.settings import Settings

__all__ = ["submit"]


def submit(
    queue: Queue,
    journal: Journal,
    settings: Settings,
    intake: Intake,
    *,
    target: StatusTarget | None = None,
    running: bool = False,
) -> Enqueued:
    """Record a deployment as `intake` asks; `running` when the caller runs it at once (no worker claims it).

    A webhook delivery seen before comes back as a duplicate, and nothing is written.
    """
    deployment_id = new_deployment_id()
    pending = None
    if target is not None and intake.commit is not None:
        pending = describe_queued(intake.commit, deployment_id, target_url=target_url(settings, deployment_id))
    enqueued = queue.enqueue(intake, target=target, pending=pending, deployment_id=deployment_id, running=running)
    if enqueued.duplicate_of is None:
        forge, delivery_id = intake.delivery or (None, None)
        journal.record("deployment.queued", deployment_id=enqueued.deployment_id, commit=intake.commit,
                       ref=intake.ref, trigger=str(intake.trigger), actor=intake.actor, reason=intake.reason,
                       stacks=list(intake.stacks) or None, force=intake.force or None, forge=forge,
                       delivery_id=delivery_id)  # fmt: skip
    return enqueued

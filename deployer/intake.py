"""The one way in: every deployment (a push, a poll, a person's request, the CLI) is recorded here.

`submit` writes the deployment with everything it was asked (trigger, actor, reason, ref and commit,
the stacks named, `force`), its webhook delivery, its `deployment.queued` audit event and its
`pending` commit status in one transaction. Web workers use it too: it does no git or docker work.
"""

from __future__ import annotations

from deployer.model import CommitStatus, Event, Intake, StatusTarget, Told, new_deployment_id
from deployer.queue import Enqueued, Queue
from deployer.report.statuses import describe_queued
from deployer.report.targets import target_url
from deployer.settings import Settings
from deployer.wake import Doorbell

__all__ = ["submit"]


def submit(
    queue: Queue,
    settings: Settings,
    intake: Intake,
    *,
    target: StatusTarget | None = None,
    running: bool = False,
) -> Enqueued:
    """Record a deployment as `intake` asks; `running` when the caller runs it at once (no worker claims it).

    A webhook delivery seen before comes back as a duplicate, and nothing is written. Without a `target`
    (DEPLOYER_FORGE_REPO unset, no webhook behind it), statuses go where the last webhook's went.
    """
    deployment_id = new_deployment_id()
    forge, delivery_id = intake.delivery or (None, None)
    queued = Event("deployment.queued", {
        "deployment_id": deployment_id, "commit": intake.commit, "ref": intake.ref, "trigger": str(intake.trigger),
        "actor": intake.actor, "reason": intake.reason, "stacks": list(intake.stacks) or None,
        "force": intake.force or None, "forge": forge, "delivery_id": delivery_id,
    })  # fmt: skip
    if target is None and settings.forge is not None:
        target = queue.last_target(settings.forge)  # a poll, a retry, a person: the repository a webhook named
    statuses: tuple[tuple[StatusTarget, str, CommitStatus], ...] = ()
    if target is not None and intake.commit is not None:
        pending = describe_queued(intake.commit, deployment_id, target_url=target_url(settings, deployment_id))
        statuses = ((target, deployment_id, pending),)
    enqueued = queue.enqueue(intake, target=target, deployment_id=deployment_id, running=running,
                             told=Told((queued,), statuses))  # fmt: skip
    if not running and enqueued.duplicate_of is None:
        Doorbell(settings.state_dir).ring()  # the deploy worker starts it now, not at its next look
    return enqueued

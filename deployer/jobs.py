"""The deploy worker: the only place that knows about the queue-draining loop and its threads.

One worker process drains the durable queue, one deployment at a time (the deploy lock makes that
true even against a stray second worker or a `deployer deploy` by hand). Latest wins: claiming the
newest queued deployment supersedes every older queued one of the same branch. A reporter thread
delivers commit statuses from the outbox with backoff, so a forge that is down never delays or
changes a deployment, and statuses arrive once it is back. A reconcile step asks git for the branch
head every `poll_interval` seconds and queues what a lost webhook missed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from functools import partial

import requests

from deployer.errors import DeployerError
from deployer.model import Outcome, Plan, StatusTarget, new_deployment_id
from deployer.pipeline import Deps, Request, SilentProgress, branch_head, deploy, is_ancestor
from deployer.queue import Claim, Queue, Undelivered
from deployer.report.forges import POSTERS, GiveUp, Retry
from deployer.report.statuses import describe_final, describe_queued, describe_running, describe_superseded
from deployer.report.targets import status_target, target_url

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: seconds between a worker's heartbeats (read by /readyz)
HEARTBEAT = 5.0
#: backoff for a status the forge did not take: 2, 4, 8 ... seconds, at most this
MAX_BACKOFF = 300.0


class Worker:
    def __init__(self, deps: Deps, *, idle_wait: float = 0.5) -> None:
        self.deps = deps
        self.queue = Queue(deps.store)
        self.idle_wait = idle_wait
        self.session = requests.Session()

    def run(self, stop: threading.Event) -> None:
        """Drain the queue until `stop` is set; a deployment under way is finished first."""
        resumed = self.queue.requeue_interrupted()
        if resumed:
            log.warning("resuming deployments interrupted by a restart: %s", ", ".join(resumed))
        reporter = threading.Thread(target=self._report_forever, args=(stop,), name="statuses", daemon=True)
        reporter.start()
        interval = self.deps.settings.poll_interval
        next_poll = time.monotonic() if interval else float("inf")
        next_beat = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self.heartbeat()
                next_beat = now + HEARTBEAT
            if now >= next_poll:
                self.reconcile()
                next_poll = now + interval
            claim = self.queue.claim()
            if claim is None:
                stop.wait(self.idle_wait)
                continue
            self.run_claim(claim)
        reporter.join(timeout=5)

    def heartbeat(self) -> None:
        """Tell readiness checks that this worker lives and whether the engine answers."""
        problem = self.deps.backend.ping()
        self.queue.set_meta("engine", {"ok": problem is None, "error": problem, "at": time.time()})
        self.queue.set_meta("worker", {"pid": os.getpid(), "at": time.time()})

    def run_claim(self, claim: Claim) -> Outcome | None:
        """Deploy one claimed deployment and queue its statuses; the superseded ones get theirs first."""
        target = self.queue.status_target(claim.deployment_id) or status_target(self.deps.settings)
        self._superseded(claim.superseded, by=claim.commit, target=target)
        repo_url = str(self.deps.settings.repo_url)
        newer = self._newer_deployed(claim)
        if newer is not None:
            self.deps.store.supersede(claim.deployment_id, by=newer)
            self._superseded([(claim.deployment_id, claim.commit)], by=newer, target=target)
            return None
        progress = _RunningStatus(self, claim, target)
        request = Request(repo_url=repo_url, ref=claim.commit, trigger=claim.trigger, actor=claim.actor)
        outcome = deploy(self.deps, request, deployment_id=claim.deployment_id, progress=progress)
        log.info("deployment %s of %s: %s", claim.deployment_id, claim.commit[:12], outcome.state)
        if target is not None:
            url = target_url(self.deps.settings, claim.deployment_id)
            self.queue.add_statuses(claim.deployment_id, target, describe_final(outcome, claim.commit, target_url=url))
        return outcome

    def reconcile(self) -> str | None:
        """Queue the branch head if no deployment of it exists yet (a webhook was lost); return its id."""
        settings = self.deps.settings
        ref = f"refs/heads/{settings.branch}"
        try:
            head = branch_head(self.deps, repo_url=str(settings.repo_url), branch=settings.branch)
        except DeployerError as error:
            log.warning("reconcile: %s", error.message)
            return None
        if self.queue.has_deployment_of(head, ref):
            return None
        target = status_target(self.deps.settings)
        deployment_id = new_deployment_id()
        pending = describe_queued(head, deployment_id, target_url=target_url(self.deps.settings, deployment_id))
        enqueued = self.queue.enqueue(commit=head, ref=ref, trigger="poll", actor=None, target=target,
                                      pending=pending, deployment_id=deployment_id)  # fmt: skip
        self.deps.journal.record("deployment.queued", deployment_id=enqueued.deployment_id, commit=head,
                                 trigger="poll", ref=ref)  # fmt: skip
        log.info("reconcile: %s is not deployed yet, queued as %s", head[:12], enqueued.deployment_id)
        return enqueued.deployment_id

    def deliver_statuses(self, *, now: float | None = None) -> int:
        """Send every status that is due (at `now`); return how many are still waiting."""
        waiting = 0
        for item in self.queue.undelivered(now=now):
            if not self._deliver(item):
                waiting += 1
        return waiting

    def _deliver(self, item: Undelivered) -> bool:
        post = POSTERS[item.target.forge]
        try:
            post(self.session, item.target.api_url, item.target.repo, self.deps.settings.forge_token, item.status)
        except Retry as error:
            delay = min(2.0 ** (item.attempts + 1), MAX_BACKOFF)
            log.warning("status %s for %s not delivered (%s); retrying in %.0fs", item.status.context,
                        item.status.sha[:12], error, delay)  # fmt: skip
            self.queue.retry_later(item.id, delay=delay, error=str(error))
            return False
        except GiveUp as error:
            log.error("status %s for %s refused by the forge: %s", item.status.context, item.status.sha[:12], error)
            self.queue.delivered(item.id, error=str(error))
            return True
        self.queue.delivered(item.id)
        return True

    def _report_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.deliver_statuses()
            except Exception:  # the reporter must outlive any one bad status
                log.exception("status delivery failed")
            stop.wait(1.0)

    def _superseded(self, overtaken: Sequence[tuple[str, str]], *, by: str, target: StatusTarget | None) -> None:
        """Record deployments (id, commit) overtaken by commit `by`, and queue their final statuses: one
        journal write and one transaction, however many a burst of pushes left behind."""
        events = [{"deployment_id": id_, "commit": commit, "superseded_by": by} for id_, commit in overtaken]
        self.deps.journal.record_many("deployment.superseded", events)
        if target is not None and overtaken:
            url = partial(target_url, self.deps.settings)
            statuses = [(id_, describe_superseded(commit, by, target_url=url(id_))) for id_, commit in overtaken]
            self.queue.add_statuses_of(target, statuses)

    def _newer_deployed(self, claim: Claim) -> str | None:
        """A commit already deployed on this branch that `claim` is an ancestor of (a late webhook)."""
        latest = self.deps.store.latest_deployed(claim.ref)
        if latest is None or latest == claim.commit:
            return None
        try:
            behind = is_ancestor(self.deps, repo_url=str(self.deps.settings.repo_url), commit=claim.commit, of=latest)
        except DeployerError:
            return None
        return latest if behind else None


class _RunningStatus(SilentProgress):
    """Posts `running` once the plan exists (GitLab shows it; GitHub and Gitea show pending)."""

    def __init__(self, worker: Worker, claim: Claim, target: StatusTarget | None) -> None:
        self.worker, self.claim, self.target = worker, claim, target

    def planned(self, plan: Plan) -> None:
        if self.target is None:
            return
        url = target_url(self.worker.deps.settings, self.claim.deployment_id)
        status = describe_running(self.claim.commit, [s.name for s in plan.runnable], target_url=url)
        self.worker.queue.add_statuses(self.claim.deployment_id, self.target, [status])

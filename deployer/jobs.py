"""The deploy worker: the only place that knows about the queue-draining loop and its threads.

One worker process drains the durable queue, one deployment at a time (the deploy lock makes that
true even against a stray second worker or a `deployer deploy` by hand). Latest wins: the newest
queued deployment runs, and once its commit is proven to be the branch head every older queued one
of the branch is superseded. A reporter thread delivers commit statuses from the outbox with
backoff, so a forge that is down never delays or changes a deployment, and statuses arrive once it
is back. A reconcile step fetches the branch every `poll_interval` seconds and makes what runs
converge on its head: it queues what a lost webhook, a rewind or a refused push left undeployed,
retries a transient failure with backoff (plan/retry.py), and leaves a terminal one alone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from contextlib import suppress

import git
import requests

from deployer.errors import BusyError, ConfigError, DeployerError, FetchError, StateUnavailableError
from deployer.intake import submit
from deployer.lock import deploy_lock, worker_lock
from deployer.model import (
    DeploymentState,
    Event,
    Intake,
    Outcome,
    Placement,
    Plan,
    Reason,
    StatusTarget,
    Told,
    Trigger,
    rfc3339,
)
from deployer.pipeline import (
    BRANCH_TRIGGERS,
    Deps,
    Request,
    SilentProgress,
    branch_head,
    check_drift,
    converged,
    deploy,
    preview,
    superseded_statuses,
)
from deployer.plan.retry import Step, next_step
from deployer.previews import PreviewClaim, Previews
from deployer.queue import Claim, Queue, Undelivered
from deployer.report.forges import POSTERS, GiveUp, Retry
from deployer.report.forges.comments import upsert_comment
from deployer.report.loki import LokiClient, ship_batch
from deployer.report.notify import Notifier
from deployer.report.preview import PreviewFindings, comment_body, plan_status
from deployer.report.statuses import describe_running
from deployer.report.targets import status_target, target_url
from deployer.state import StateStore
from deployer.wake import Doorbell

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: seconds between a worker's heartbeats (read by /readyz)
HEARTBEAT = 5.0
#: backoff for a status the forge did not take: 2, 4, 8 ... seconds, at most this
MAX_BACKOFF = 300.0
#: seconds between looks at the queue when nobody rings (the doorbell starts a queued deployment at once)
IDLE_WAIT = 2.0
#: seconds for which a fetch of the branch counts as now, for a deployment of the head it found
FRESH_FETCH = 10.0
#: seconds between tries while the state store cannot be written (disk full, read-only)
STATE_RETRY = 5.0
#: seconds between looks for a queued pull request preview
PREVIEW_WAIT = 0.2
#: backoff while Loki cannot take the audit trail: 1, 2, 4 ... seconds, at most this
MAX_SHIP_BACKOFF = 60.0


class Worker:
    def __init__(self, deps: Deps, *, idle_wait: float = IDLE_WAIT) -> None:
        self.deps = deps
        self.queue = Queue(deps.store)
        self.idle_wait = idle_wait
        self.doorbell = Doorbell(deps.settings.state_dir)
        self.session = requests.Session()
        #: (head, last good commits) last found converged, so an unchanged world is not planned again
        self._converged: tuple[object, ...] | None = None
        #: when the reconcile loop must look again before its next poll (a retry falls due)
        self.retry_due: float | None = None
        self._object_format: str | None = None
        #: the branch head this worker last fetched, and when (monotonic)
        self._fetched: tuple[str, float] | None = None
        #: forge API URL -> the time (epoch) before which it is sent nothing: it failed, or asked (Retry-After)
        self._forge_quiet: dict[str, float] = {}
        #: set when a preview has something to say: the reporter sends it now, not at its next look
        self._report_now = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Drain the queue until `stop` is set; a deployment under way is finished first.

        With polling on, the branch is reconciled at start and every `poll_interval` seconds; with it
        on or off, whenever a retry of a transient failure falls due. One worker per state directory:
        another one (a second `deployer serve` on it) waits for the worker lock, doing nothing.
        """
        with worker_lock(self.deps.settings.state_dir, stop=stop) as mine:
            if mine:
                self._drain(stop)

    def _drain(self, stop: threading.Event) -> None:
        self.doorbell.listen()
        reporter = threading.Thread(target=self._report_forever, args=(stop,), name="statuses", daemon=True)
        reporter.start()
        if self.deps.settings.loki_url:
            threading.Thread(target=self._ship_forever, args=(stop,), name="loki", daemon=True).start()
        if self.deps.settings.notify_urls:
            threading.Thread(target=self._notify_forever, args=(stop,), name="notify", daemon=True).start()
        threading.Thread(target=self._watch_hosts, args=(stop,), name="hosts", daemon=True).start()
        threading.Thread(target=self._preview_forever, args=(stop,), name="previews", daemon=True).start()
        if self.deps.settings.drift_interval:
            threading.Thread(target=self._drift_forever, args=(stop,), name="drift", daemon=True).start()
        interval = self.deps.settings.poll_interval
        next_poll = time.monotonic() if interval else float("inf")
        next_beat = 0.0
        resume: str | None = "interrupted by a restart"  # why deployments left running are queued again
        stuck = False  # the state store could not be written at the last try
        while not stop.is_set():
            try:
                if resume is not None and self._resume(resume):
                    resume = None
                if stuck:
                    log.info("the state store can be written again: deploying")
                    stuck = False
                now = time.monotonic()
                if now >= next_beat:
                    self.heartbeat()
                    next_beat = now + HEARTBEAT
                due = self.retry_due is not None and time.time() >= self.retry_due
                if now >= next_poll or due:  # a retry a failed push scheduled is kept with polling off too
                    self.reconcile()
                    next_poll = now + interval if interval else float("inf")
                claim = self.queue.claim()
                if claim is None:
                    self.doorbell.wait(self.idle_wait)  # rung by whoever queues one (deployer.intake)
                    continue
                self.run_claim(claim)
            except StateUnavailableError as error:
                # Nothing may start that could not be recorded: wait; what was under way is resumed after.
                if not stuck:
                    log.error("no deployment starts until the state store can be written again: %s", error.message)
                stuck, resume = True, "interrupted: the state store could not be written"
                stop.wait(STATE_RETRY)

        reporter.join(timeout=5)
        self.doorbell.close()

    def _resume(self, why: str) -> bool:
        """Queue again the deployments left running (a restart, a store that could not be written); False
        when the deploy lock is held: what runs then is not interrupted (a `deployer deploy` by hand), look later."""

        def told(ids: list[str]) -> Told:
            return Told(tuple(Event("deployment.resumed", {"deployment_id": id_, "commit": None, "reason": why})
                              for id_ in ids))  # fmt: skip

        try:
            with deploy_lock(self.deps.settings.state_dir):
                resumed = self.queue.requeue_interrupted(told=told)
        except BusyError:
            return False
        if resumed:
            log.warning("resuming deployments (%s): %s", why, ", ".join(resumed))
        return True

    def heartbeat(self) -> None:
        """Tell readiness checks that this worker lives and whether the engine answers."""
        problem = self.deps.backend.ping()
        self.queue.set_meta("engine", {"ok": problem is None, "error": problem, "at": time.time()})
        self.queue.set_meta("worker", {"pid": os.getpid(), "at": time.time()})
        if self._object_format is None and (self.deps.settings.state_dir / "mirror.git" / "HEAD").exists():
            # the web workers refuse a push whose `after` is of the other kind (SHA-1 vs SHA-256)
            try:
                self._object_format = self.deps.mirror(str(self.deps.settings.repo_url)).object_format()
            except git.GitCommandError as error:
                log.warning("cannot read the mirror's object format: %s", error)
                return
            self.queue.set_meta("object_format", self._object_format)

    def run_claim(self, claim: Claim) -> Outcome:
        """Deploy one claimed deployment; its final statuses are recorded with its end (the recorder).

        Once its commit is proven to be the branch head, every deployment of the branch queued before
        it is superseded (latest wins). A late delivery (an older commit of the branch) is superseded
        by the head, which the reconcile step then makes sure is deployed.
        """
        target = self.queue.status_target(claim.deployment_id) or status_target(self.deps.settings)
        progress = _RunningStatus(self, claim, target)
        # one fetch per deployment: a poll that fetched the branch a moment ago and queued its head is not fetched again
        fetched = self._fetched
        fresh = fetched is not None and fetched[0] == claim.commit and time.monotonic() - fetched[1] < FRESH_FETCH
        request = Request(repo_url=str(self.deps.settings.repo_url), ref=claim.commit, trigger=claim.trigger,
                          actor=claim.actor, stacks=claim.stacks, force=claim.force, reason=claim.reason,
                          fetch=not fresh)  # fmt: skip
        outcome = deploy(self.deps, request, deployment_id=claim.deployment_id, progress=progress, target=target)
        if request.fetch and outcome.reason is Reason.FETCH_FAILED:
            self._say_fetched(outcome.error)
        elif request.fetch and (outcome.results or outcome.state is not DeploymentState.FAILED):
            self._say_fetched(None)  # it got past the fetch
        log.info("deployment %s of %s: %s%s", claim.deployment_id, claim.commit[:12], outcome.state,
                 f" ({outcome.reason}: {outcome.error})" if outcome.error else "")  # fmt: skip
        if request.follows_branch and outcome.state is not DeploymentState.SUCCEEDED:
            self.reconcile(fetch=False)  # the head, now: deploy it, schedule a retry, or say why not
        return outcome

    def reconcile(self, *, fetch: bool = True) -> str | None:
        """Make what runs converge on the branch head: queue it, schedule a retry, or leave it; return a queued id.

        Asks whether every stack's last good commit is the head's view of that stack (not whether a
        deployment of the head exists: a rewind, a refused push or a failure leaves that untrue).
        """
        settings = self.deps.settings
        ref = f"refs/heads/{settings.branch}"
        repo_url = str(settings.repo_url)
        try:
            if fetch:
                try:
                    head = branch_head(self.deps, repo_url=repo_url)
                except FetchError as error:
                    self._say_fetched(error.message)
                    raise
                self._fetched = (head, time.monotonic())
                self._say_fetched(None)
            else:
                head = self.deps.mirror(repo_url).resolve(ref)
            done = self._is_converged(head)
        except DeployerError as error:
            log.warning("reconcile: %s", error.message)
            self._tell(head=None, step=None, why=error.message)
            return None
        latest = self.queue.latest_attempt(ref)
        decision = next_step(head=head, converged=done, latest=latest, now=time.time(),
                             first_retry=self.deps.settings.retry_backoff)  # fmt: skip
        self.retry_due = decision.retry_at
        if latest is not None and latest.state is DeploymentState.FAILED and latest.commit == head:
            self.deps.store.set_retry(latest.deployment_id, decision.retry_at)
        self._tell(head=head, step=decision.step, why=decision.why, retry_at=decision.retry_at)
        if decision.step is not Step.DEPLOY:
            return None
        if latest is not None and latest.commit == head and latest.state is DeploymentState.FAILED:
            self.deps.store.set_retry(latest.deployment_id, None)
        return self._queue_head(head, ref, why=decision.why)

    def _say_fetched(self, error: str | None) -> None:
        """Whether the last fetch of the branch worked, for /readyz (a remote that is down, or never answers)."""
        self.queue.set_meta("fetch", {"ok": error is None, "error": error, "at": time.time()})

    def _is_converged(self, head: str) -> bool:
        store = self.deps.store  # what is left out of the plan (held, paused) decides too: a resume un-converges
        seen = (head, tuple(sorted(store.last_good().items())), tuple(sorted(store.held())),
                tuple(sorted(store.paused())))  # fmt: skip
        if seen == self._converged:
            return True
        done = converged(self.deps, repo_url=str(self.deps.settings.repo_url), head=head)
        self._converged = seen if done else None
        return done

    def _queue_head(self, head: str, ref: str, *, why: str) -> str:
        intake = Intake(trigger=Trigger.POLL, ref=ref, commit=head, reason=why)
        enqueued = submit(self.queue, self.deps.settings, intake, target=status_target(self.deps.settings))
        log.info("reconcile: %s; queued as %s", why, enqueued.deployment_id)
        return enqueued.deployment_id

    def _tell(self, *, head: str | None, step: Step | None, why: str, retry_at: float | None = None) -> None:
        """What the reconcile loop last concluded, for GET /api/branch."""
        self.queue.set_meta("reconcile", {
            "branch": self.deps.settings.branch, "head": head, "next": str(step) if step else "unknown", "why": why,
            "retry_at": rfc3339(retry_at) if retry_at else None, "checked_at": rfc3339(),
        })  # fmt: skip

    def deliver_statuses(self, *, now: float | None = None) -> int:
        """Send every status that is due (at `now`); return how many are still waiting.

        A forge that failed a status, or asked to be left alone (429 or 503 with Retry-After), is sent
        nothing more until that status is due again: its other statuses wait too, rather than hammer it.
        """
        waiting = 0
        at = time.time() if now is None else now
        for item in self.queue.undelivered(now=now):
            if self._forge_quiet.get(item.target.api_url, 0.0) > at or not self._deliver(item):
                waiting += 1
        return waiting

    def _deliver(self, item: Undelivered) -> bool:
        post = POSTERS[item.target.forge]
        try:
            post(self.session, item.target.api_url, item.target.repo, self.deps.settings.forge_token, item.status)
        except Retry as error:
            delay = _backoff(item.attempts, error)
            log.warning("status %s for %s not delivered (%s); retrying in %.0fs", item.status.context,
                        item.status.sha[:12], error, delay)  # fmt: skip
            self.queue.retry_later(item.id, delay=delay, error=str(error))
            self._forge_quiet[item.target.api_url] = time.time() + delay
            return False
        except GiveUp as error:
            log.error("status %s for %s refused by the forge: %s", item.status.context, item.status.sha[:12], error)
            self.queue.delivered(item.id, error=str(error))
            return True
        self.queue.delivered(item.id)
        return True

    def _ship_forever(self, stop: threading.Event) -> None:
        """Ship the audit trail to Loki, oldest first; back off 1 s doubling to 60 s while Loki cannot take it."""
        settings = self.deps.settings
        client = LokiClient(str(settings.loki_url), tenant=settings.loki_tenant, user=settings.loki_user,
                            password=settings.loki_password, token=settings.loki_token)  # fmt: skip
        store = StateStore(settings.state_dir / "state.db")  # its own connection: the deploy thread writes meanwhile
        delay, next_prune = 0.0, 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_prune:  # hourly: what Loki has had for DEPLOYER_AUDIT_RETENTION_DAYS
                    pruned = store.prune_shipped(before=time.time() - settings.audit_retention_days * 86400)
                    if pruned:
                        log.info("pruned %d audit events shipped over %d days ago", pruned,
                                 settings.audit_retention_days)  # fmt: skip
                    next_prune = time.monotonic() + 3600
                shipped = ship_batch(store, client, now_ns=time.time_ns())
                delay = 0.0
                self.queue.set_meta("loki", {"ok": True, "error": None, "at": time.time()})
            except Retry as error:  # not before Loki's Retry-After, if it sent one
                delay = max(min(max(1.0, delay * 2), MAX_SHIP_BACKOFF), error.after or 0.0)
                log.warning("audit events not shipped to Loki (%s); retrying in %.0fs", error, delay)
                with suppress(StateUnavailableError):
                    self.queue.set_meta("loki", {"ok": False, "error": str(error), "at": time.time()})
                stop.wait(delay)
                continue
            except StateUnavailableError as error:  # a batch Loki took and that could not be marked: sent again
                log.warning("audit shipping waits for the state store: %s", error.message)  # (Loki drops the copy)
                stop.wait(STATE_RETRY)
                continue
            except Exception:  # the shipper must outlive any one bad batch
                log.exception("shipping audit events failed")
                stop.wait(5.0)
                continue
            if shipped == 0:
                stop.wait(1.0)
        store.close()

    def _notify_forever(self, stop: threading.Event) -> None:
        """Tell DEPLOYER_NOTIFY_URLS what the audit trail says (deployer.report.notify), beside deploying:
        a URL that is down or refuses one is retried there, never in a deployment's way."""
        store = StateStore(self.deps.settings.state_dir / "state.db")  # its own connection, as the shipper's
        try:
            Notifier.from_settings(store, self.deps.settings).run(stop)
        except ConfigError as error:  # a URL Apprise cannot send to: said in the log and in /readyz
            log.error("notifications off: %s", error.message)
            self.queue.set_meta("notify", {"ok": False, "error": error.message, "at": time.time()})
        finally:
            store.close()

    def _watch_hosts(self, stop: threading.Event) -> None:
        """Ask each other engine stacks run on (x-deployer.docker_host) whether it answers, every
        DEPLOYER_HOST_CHECK_INTERVAL seconds, beside deploying (an ssh host that does not answer takes up to
        its ConnectTimeout): the answers are shown by /readyz, /api/stacks, the pages and /metrics."""
        while not stop.is_set():
            try:
                hosts = {}
                for host in self.deps.store.hosts():
                    problem = self.deps.backend.ping(Placement(docker_host=host))
                    hosts[host] = {"ok": problem is None, "error": problem, "at": time.time()}
                self.queue.set_meta("hosts", hosts)
            except StateUnavailableError as error:
                log.warning("engine checks wait for the state store: %s", error.message)
            except Exception:  # the watcher must outlive any one bad host
                log.exception("engine check failed")
            stop.wait(self.deps.settings.host_check_interval)

    def _drift_forever(self, stop: threading.Event) -> None:
        """Check deployed stacks for drift every DEPLOYER_DRIFT_INTERVAL seconds, beside deploying (one request
        per engine); what it found is shown by /api/stacks, the pages, /metrics and `deployer status`."""
        store = StateStore(self.deps.settings.state_dir / "state.db")  # its own connection
        deps = Deps(settings=self.deps.settings, runner=self.deps.runner, backend=self.deps.backend, store=store)
        while not stop.wait(self.deps.settings.drift_interval):
            try:
                began, cpu = time.monotonic(), time.thread_time()
                checked = check_drift(deps)
                self.queue.set_meta("drift", {
                    "at": time.time(), "seconds": time.monotonic() - began, "cpu_seconds": time.thread_time() - cpu,
                    "stacks": len(checked.found), "skipped": checked.skipped,
                    "drifted": sorted(n for n, f in checked.found.items() if f),
                })  # fmt: skip
            except StateUnavailableError as error:
                log.warning("drift checks wait for the state store: %s", error.message)
            except Exception:  # the drift thread must outlive any one bad check
                log.exception("drift check failed")
        store.close()

    def _preview_forever(self, stop: threading.Event) -> None:
        """Preview pull requests' heads beside deploying (deployer.pipeline.preview): a long deployment never
        keeps a pull request waiting for its plan. Newest push to a pull request first; older ones are dropped."""
        store = StateStore(self.deps.settings.state_dir / "state.db")  # its own connection
        deps = Deps(settings=self.deps.settings, runner=self.deps.runner, backend=self.deps.backend, store=store)
        previews = Previews(store)
        with suppress(StateUnavailableError):
            previews.requeue_interrupted()
        while not stop.is_set():
            try:
                claim = previews.claim()
                if claim is None:
                    stop.wait(PREVIEW_WAIT)
                    continue
                self.run_preview(deps, previews, claim)
            except StateUnavailableError as error:
                log.warning("previews wait for the state store: %s", error.message)
                stop.wait(STATE_RETRY)
            except Exception:  # the preview thread must outlive any one bad pull request
                log.exception("preview failed")
                stop.wait(1.0)
        store.close()

    def run_preview(self, deps: Deps, previews: Previews, claim: PreviewClaim) -> PreviewFindings:
        def tell(found: PreviewFindings) -> None:
            previews.report(claim, summary=found.summary(), status=plan_status(found), comment=comment_body(found),
                            final=found.done)  # fmt: skip
            self._report_now.set()

        found = preview(deps, number=claim.number, head=claim.head, head_ref=claim.head_ref,
                        from_fork=claim.from_fork, tell=tell,
                        still_wanted=lambda: not previews.superseded(claim))  # fmt: skip
        verdict = f"not previewed: {found.error}" if found.error else ("valid" if found.valid else "invalid")
        log.info("preview %s of #%d at %s: %s", claim.id, claim.number, claim.head[:12], verdict)
        return found

    def deliver_comments(self, *, now: float | None = None) -> int:
        """Make each pull request's preview comment say its newest body; return how many still wait."""
        previews = Previews(self.deps.store)
        waiting = 0
        for due in previews.comments_due(now=now):
            target = due.target
            try:
                comment_id = upsert_comment(self.session, target.forge, target.api_url, target.repo,
                                            self.deps.settings.forge_token, due.number, due.body,
                                            comment_id=due.comment_id)  # fmt: skip
            except Retry as error:
                delay = _backoff(due.attempts, error)
                log.warning("preview comment on #%d not delivered (%s); retrying in %.0fs", due.number, error, delay)
                previews.comment_later(due, delay=delay, error=str(error))
                waiting += 1
                continue
            except GiveUp as error:
                log.error("preview comment on #%d refused by the forge: %s", due.number, error)
                previews.comment_sent(due, comment_id=None, error=str(error))
                continue
            previews.comment_sent(due, comment_id=comment_id)
        return waiting

    def _report_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._report_now.clear()
                self.deliver_statuses()
                self.deliver_comments()
            except StateUnavailableError as error:  # a status sent and not marked is sent again: forges keep the last
                log.warning("status delivery waits for the state store: %s", error.message)
                stop.wait(STATE_RETRY)
            except Exception:  # the reporter must outlive any one bad status
                log.exception("status delivery failed")
            self._report_now.wait(1.0)

    def _superseded(self, overtaken: Sequence[tuple[str, str]], *, by: str, target: StatusTarget | None) -> Told:
        """What superseding deployments (id, commit) by commit `by` tells: an event and a final status
        each, written in the transaction that supersedes them, however many a burst of pushes left behind."""
        events = tuple(Event("deployment.superseded", {"deployment_id": id_, "commit": commit, "superseded_by": by})
                       for id_, commit in overtaken)  # fmt: skip
        statuses = () if target is None else tuple(
            (target, id_, status) for id_, commit in overtaken
            for status in superseded_statuses(self.deps, commit, by=by, deployment_id=id_)
        )  # fmt: skip
        return Told(events, statuses)


def _backoff(attempts: int, error: Retry) -> float:
    """Seconds before a forge is sent a status or comment again: 2, 4, 8 ... up to MAX_BACKOFF, never before its
    Retry-After."""
    return max(min(2.0 ** (attempts + 1), MAX_BACKOFF), error.after or 0.0)


class _RunningStatus(SilentProgress):
    """Posts `running` once the plan exists (GitLab shows it; GitHub and Gitea show pending)."""

    def __init__(self, worker: Worker, claim: Claim, target: StatusTarget | None) -> None:
        self.worker, self.claim, self.target = worker, claim, target

    def planned(self, plan: Plan) -> None:
        """The commit is proven on the branch (or named by a person): it overtakes what was queued before it."""
        if self.claim.trigger in BRANCH_TRIGGERS:
            by = self.claim.commit
            self.worker.queue.supersede_older(
                self.claim, by=by, told=lambda overtaken: self.worker._superseded(overtaken, by=by, target=self.target)
            )
        if self.target is None:
            return
        url = target_url(self.worker.deps.settings, self.claim.deployment_id)
        status = describe_running(self.claim.commit, [s.name for s in plan.runnable], target_url=url,
                                  rewound_from=plan.rewound_from)  # fmt: skip
        self.worker.deps.store.tell(Told(statuses=((self.target, self.claim.deployment_id, status),)))

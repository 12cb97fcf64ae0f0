"""The deploy use case: one request, from the branch as fetched to every stack's recorded result."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from docker.errors import DockerException
from requests.exceptions import RequestException

from deployer.apply import decrypt_files, refuse_host_access, run_stacks
from deployer.errors import (
    ComposeError,
    DeployerError,
    EngineError,
    NotOnBranchError,
    RefNotFoundError,
    StateUnavailableError,
    UnsignedCommitError,
)
from deployer.fetch import Mirror
from deployer.lock import deploy_lock
from deployer.model import (
    TRANSIENT,
    Action,
    Catalog,
    Outcome,
    Placement,
    Plan,
    PlannedStack,
    Reason,
    StackResult,
    StackState,
    StatusTarget,
)
from deployer.pipeline.record import Recorder
from deployer.pipeline.rollback import roll_back
from deployer.pipeline.wiring import Deps, Progress, Request, SilentProgress
from deployer.plan import load_catalog, make_plan
from deployer.plan.drift import baseline_of
from deployer.reasons import reason_for

__all__ = ["deploy"]

log = logging.getLogger(__name__)

_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True)
class _Prepared:
    """A plan with its catalog and each deploying stack's decrypted environment (memory only)."""

    plan: Plan
    catalog: Catalog
    envs: Mapping[str, Mapping[str, str]]


def deploy(
    deps: Deps,
    request: Request,
    *,
    deployment_id: str | None = None,
    progress: Progress | None = None,
    target: StatusTarget | None = None,
) -> Outcome:
    """Deploy `request.ref`: the affected stacks (or exactly `request.stacks`), in dependency order.

    Pass the id of an already queued deployment to run that one. Never raises DeployerError: bad
    input (unknown commit, invalid catalog, undecryptable secret, compose file rejected, a push of a
    commit the branch does not contain) ends the deployment before any stack changes, with exit code
    2; a stack that fails to come up fails the deployment with exit code 1, after unrelated stacks
    finished. Every failure carries a Reason, transient or terminal. An interruption (Ctrl-C,
    SIGTERM turned into an exception) is recorded as an interrupted deployment and re-raised. Its
    final commit statuses (to `target`) are recorded with its end, in one transaction. A state store
    that cannot be written raises StateUnavailableError: nothing starts that could not be recorded.
    """
    progress = progress or SilentProgress()
    record = Recorder(deps, deployment_id, request, target=target) if deployment_id else Recorder.queued(deps, request)
    try:
        # 1. One deployment at a time per state directory.
        with deploy_lock(deps.settings.state_dir):
            outcome = _deploy_locked(deps, record, request, progress)
    except StateUnavailableError:
        raise  # nothing more can be recorded: the deployment stays as last recorded, resumed once it can be
    except DeployerError as error:  # the lock is held: say which commit waits, without fetching
        outcome = record.not_started(error, commit=_known_commit(deps, request))
    except BaseException:
        interrupted = Outcome(record.deployment_id, _known_commit(deps, request), error="interrupted",
                              reason=Reason.INTERRUPTED)  # fmt: skip
        record.finish(interrupted)
        raise
    return record.finish(outcome)


def _deploy_locked(deps: Deps, record: Recorder, request: Request, progress: Progress) -> Outcome:
    # 2. The branch as it is now, from a fresh fetch, and the exact commit asked for.
    progress.phase(f"fetching {request.ref}")
    mirror = deps.mirror(request.repo_url)
    try:
        head = mirror.sync() if request.fetch else mirror.resolve(mirror.branch_ref)
        target = _resolve(mirror, request)
    except DeployerError as error:
        return record.not_started(error, commit=_known_commit(deps, request))
    # 3. A push or poll deploys only what the branch contains (an older commit of it is a late delivery);
    #    with DEPLOYER_REQUIRE_SIGNED, only a commit an allowed signer signed, whoever asks.
    turned_away = _turned_away(deps, record, request, mirror, target=target, head=head)
    if turned_away is not None:
        return turned_away
    # 4. Plan against each stack's last good commit (gone from the branch or not), in a clean checkout.
    #    A push releases the stacks a person held at another commit; a poll leaves them where they are.
    #    Neither touches a paused stack (`deployer pause`); a person naming it does.
    if request.trigger == "webhook":
        record.release_held(commit=target)
    held = tuple(deps.store.held()) if request.trigger == "poll" else ()
    drift = request.trigger == "drift"  # a drift repair: paused since it was queued is paused still
    held += tuple(deps.store.paused()) if request.follows_branch or drift else ()  # left alone until resumed
    try:
        tree = mirror.clean_checkout(target, deps.checkouts / "deploy")
        plan, catalog = _plan(deps, mirror, tree, target=target, requested=request.stacks, exclude=held,
                              branch=request.follows_branch)  # fmt: skip
    except DeployerError as error:
        return record.not_started(error, commit=target)
    record.started(plan, depends_on={n: catalog[n].depends_on for n in catalog})
    progress.phase(_describe(plan))
    progress.planned(plan)
    # 5. Preflight: every input of every deploying stack is proven good before anything changes,
    # 6. and the engine answers (asked meanwhile), or nothing is touched (retried once it is back).
    hosts = {catalog[s.name].docker_host for s in plan.runnable if s.name in catalog and s.action is Action.DEPLOY}
    hosts |= {None} if not plan.is_empty else set()
    with ThreadPoolExecutor(max_workers=len(hosts) or 1, thread_name_prefix="ping") as aside:
        answers = {host: aside.submit(deps.backend.ping, Placement(docker_host=host)) for host in hosts}
        prepared = _preflight(deps, record, plan, catalog=catalog, tree=tree, progress=progress)
        problems = {host: problem for host, answer in answers.items() if (problem := answer.result()) is not None}
    if isinstance(prepared, Outcome):
        return prepared
    if None in problems:  # the deployer's own engine: nothing starts
        return _stopped(record, plan, EngineError(f"docker engine not reachable: {problems[None]}"), progress)
    # 7. Apply: removals, then deploys in dependency order, recording each result as it lands; a stack whose
    #    engine (another host's) did not answer fails with that, and only its dependents are skipped.
    results = _apply(deps, record, prepared, mirror, progress, force=request.force, unreachable=problems)
    _hold_if_off_the_head(record, request, results, target=target, head=head)
    return Outcome(record.deployment_id, target, results, exit_code=_exit_code(results),
                   reason=_failure_reason(deps, results), rewound_from=plan.rewound_from)  # fmt: skip


def _turned_away(deps: Deps, record: Recorder, request: Request, mirror: Mirror, *, target: str,
                 head: str) -> Outcome | None:  # fmt: skip
    """The outcome of a target that must not deploy (not the branch head, or not signed), else None."""
    if request.follows_branch and target != head:
        return _not_the_head(deps, record, mirror, target=target, head=head)
    if not deps.settings.require_signed:
        return None
    keys = deps.settings.gpg_keyring or deps.checkouts / "no-gpg-keys"  # never the deployer user's own ~/.gnupg
    problem = mirror.signature_problem(target, allowed_signers=deps.settings.allowed_signers, gpg_home=keys)
    if problem is None:
        return None
    error = UnsignedCommitError(f"commit not signed by an allowed signer: {target[:12]}: {problem}")
    return record.unsigned(error, commit=target)


def _not_the_head(deps: Deps, record: Recorder, mirror: Mirror, *, target: str, head: str) -> Outcome:
    """A push of a commit that is not the branch head: superseded by the head if it is an older commit
    of the branch (a late delivery, never a rollback), else refused (it would deploy what the branch
    does not say: another branch, a fork's pull request, a commit a force-push dropped)."""
    if mirror.is_ancestor(target, head):
        return Outcome(record.deployment_id, target, superseded_by=head)
    branch = deps.settings.branch
    error = NotOnBranchError(f"commit {target[:12]} is not on {branch} (its head is {head[:12]})")
    return record.refused(error, commit=target)


def _resolve(mirror: Mirror, request: Request) -> str:
    """The commit `request.ref` names; a person's branch or tag is fetched on demand. Raises FetchError.

    A push's sha that the fetched branch does not have is returned as it is: step 3 refuses it.
    """
    try:
        return mirror.resolve(request.ref)
    except RefNotFoundError:
        if request.follows_branch and _FULL_SHA.match(request.ref):
            return request.ref
        if request.follows_branch or _FULL_SHA.match(request.ref):
            raise
    mirror.fetch_ref(request.ref)
    return mirror.resolve(request.ref)


def _known_commit(deps: Deps, request: Request) -> str | None:
    """The commit a deployment is about without fetching: the sha it names, or what the mirror has."""
    if _FULL_SHA.match(request.ref):
        return request.ref
    if not (deps.settings.state_dir / "mirror.git" / "HEAD").exists():
        return None
    return deps.mirror(request.repo_url).try_resolve(request.ref)


def _plan(
    deps: Deps,
    mirror: Mirror,
    tree: Path,
    *,
    target: str,
    requested: Collection[str],
    exclude: Collection[str],
    branch: bool,
) -> tuple[Plan, Catalog]:
    """Plan against each stack's last good commit. For a push or poll (`branch`), say which deployed commits
    the target does not contain: the branch was rewound. A person going back to an older commit is not."""
    catalog = load_catalog(tree, stacks_dir=deps.settings.stacks_dir)
    deployed = deps.store.last_good()
    bases = set(deployed.values())
    changes = {base: mirror.changed_paths(base, target) for base in bases}
    rewound = mirror.not_ancestors(bases, of=target) if branch else ()
    plan = make_plan(catalog, target=target, deployed=deployed, changes=changes, requested=requested,
                     prune=deps.settings.prune, rewound_from=rewound, exclude=exclude)  # fmt: skip
    return plan, catalog


def _hold_if_off_the_head(record: Recorder, request: Request, results: tuple[StackResult, ...], *, target: str,
                          head: str) -> None:  # fmt: skip
    """A person's deployment at a commit other than the branch head holds the stacks it deployed there;
    one at the head releases them."""
    if request.follows_branch or request.trigger == "drift":  # a drift repair redeploys the last good commit
        return
    done = [r.name for r in results if r.state is StackState.SUCCEEDED and r.action is Action.DEPLOY]
    record.hold_or_release(done, commit=target, hold=target != head)


def _preflight(
    deps: Deps, record: Recorder, plan: Plan, *, catalog: Catalog, tree: Path, progress: Progress
) -> _Prepared | Outcome:
    """Decrypt each deploying stack's secrets and have compose check its file; stop at any failure.

    Stacks are checked side by side (`docker compose config` takes ~75 ms each), at most
    DEPLOYER_MAX_PARALLEL at once.
    """

    def check(name: str) -> Mapping[str, str] | StackResult:
        stack = catalog[name]
        try:
            if stack.secrets:
                progress.phase(f"{name}: decrypting {', '.join(map(str, stack.secrets))}")
            env = decrypt_files(stack.secrets, repo_root=tree, runner=deps.runner, env=deps.settings.sops_env)
            config = deps.backend.check(stack, workdir=tree, env=env)
            refuse_host_access(stack, config, workdir=tree, policy=deps.settings.host_policy, secrets=env)
            del config  # it holds the secrets' values
        except DeployerError as error:
            now = time.time()
            return StackResult(name, Action.DEPLOY, StackState.FAILED, reason=_input_reason(error),
                               error="; ".join((error.message, *error.details)), started_at=now,
                               finished_at=now)  # fmt: skip
        if stack.secrets:
            record.secrets_decrypted(commit=plan.target, stack=name, files=[str(p) for p in stack.secrets])
        return env

    names = [s.name for s in plan.runnable if s.action is Action.DEPLOY]
    with ThreadPoolExecutor(max_workers=deps.settings.max_parallel, thread_name_prefix="preflight") as pool:
        checked = dict(zip(names, pool.map(check, names), strict=True))
    failures = [r for r in checked.values() if isinstance(r, StackResult)]
    if failures:
        return _refused_input(record, plan, failures, progress)
    envs = {name: env for name, env in checked.items() if not isinstance(env, StackResult)}
    return _Prepared(plan=plan, catalog=catalog, envs=envs)


def _input_reason(error: DeployerError) -> Reason:
    """Preflight failures: a secret or key problem keeps its reason; anything compose said is ComposeInvalid."""
    reason = reason_for(error)
    secret = (Reason.SECRET_DECRYPT_FAILED, Reason.KNOWN_SECRET)
    return reason if reason in TRANSIENT or reason in secret else Reason.COMPOSE_INVALID


def _refused_input(record: Recorder, plan: Plan, failures: list[StackResult], progress: Progress) -> Outcome:
    """Record a deployment stopped by its input: the culprits failed, every other stack skipped.

    A transient cause (a key file that is gone) makes the whole deployment transient; otherwise exit 2.
    """
    failed = {f.name: f for f in failures}
    why = f"not started: invalid input in {', '.join(sorted(failed))}"
    transient = [f for f in failures if f.reason in TRANSIENT]
    if transient:
        why = f"not started: {transient[0].error}"
    results = []
    for planned in plan.runnable:
        result = failed.get(planned.name) or StackResult(planned.name, planned.action, StackState.SKIPPED,
                                                         reason=Reason.PLAN_INVALID, error=why)  # fmt: skip
        record.stack(result, commit=plan.target)
        progress.stack(result)
        results.append(result)
    first = (transient or failures)[0]
    return Outcome(record.deployment_id, plan.target, tuple(results), error=first.error, reason=first.reason,
                   exit_code=1 if transient else 2, rewound_from=plan.rewound_from)  # fmt: skip


def _stopped(record: Recorder, plan: Plan, error: DeployerError, progress: Progress) -> Outcome:
    """Nothing can start (the engine is gone): every planned stack skipped with the reason."""
    reason = reason_for(error)
    now = time.time()
    results = []
    for planned in plan.runnable:
        result = StackResult(planned.name, planned.action, StackState.SKIPPED, reason=reason, error=error.message,
                             started_at=now, finished_at=now)  # fmt: skip
        record.stack(result, commit=plan.target)
        progress.stack(result)
        results.append(result)
    return Outcome(record.deployment_id, plan.target, tuple(results), error=error.message, reason=reason,
                   exit_code=error.exit_code, rewound_from=plan.rewound_from)  # fmt: skip


def _apply(
    deps: Deps, record: Recorder, prepared: _Prepared, mirror: Mirror, progress: Progress, *, force: bool,
    unreachable: Mapping[str | None, str],
) -> tuple[StackResult, ...]:  # fmt: skip
    plan, catalog, envs = prepared.plan, prepared.catalog, prepared.envs
    worktrees = deps.settings.state_dir / "stacks"
    good = deps.store.last_good()
    images: dict[str, tuple[tuple[str, str], ...]] = {}  # what each stack that came up runs (what a rollback pins)
    baselines: dict[str, Mapping[str, object] | None] = {}  # and its containers (what drift checks compare with)

    def bring_up(planned: PlannedStack) -> str:
        stack = catalog[planned.name]
        if stack.docker_host in unreachable:
            raise EngineError(f"{stack.compose_file}: x-deployer.docker_host: engine not reachable: "
                              f"{unreachable[stack.docker_host]}")  # fmt: skip
        before = deps.store.placement(planned.name)
        workdir = mirror.checkout(plan.target, worktrees / planned.name)
        try:
            output = deps.backend.up(stack, workdir=workdir, env=envs[planned.name], force=force)
        except ComposeError as error:  # at `up` or its health wait: back to the last good commit, or say why not
            roll_back(deps, record, mirror, planned.name, error, good=good.get(planned.name))
        images[planned.name] = tuple(sorted(deps.backend.images(planned.name).items()))
        baselines[planned.name] = _baseline(deps, planned.name)
        if before is not None and before != stack.placement:
            output = f"{output}\n{_leave(deps, planned.name, before)}".strip()
        return output

    def take_down(planned: PlannedStack) -> str:
        return deps.backend.down(planned.name)

    def on_change(result: StackResult) -> None:
        if result.state is StackState.SUCCEEDED and result.action is Action.DEPLOY:
            result = replace(result, images=images.get(result.name, ()), placement=catalog[result.name].placement,
                             baseline=baselines.get(result.name))  # fmt: skip
        record.stack(result, commit=plan.target)
        progress.stack(result)

    removals = [s for s in plan.runnable if s.action is Action.REMOVE]
    deploys = [s for s in plan.runnable if s.action is Action.DEPLOY]
    # at most DEPLOYER_MAX_PARALLEL at once, and DEPLOYER_MAX_PER_HOST of those on one other host
    limits = {"max_parallel": deps.settings.max_parallel, "per_group": deps.settings.max_per_host}
    removed = run_stacks(removals, take_down, on_change=on_change, **limits,
                         group=lambda s: deps.backend.placement(s.name).docker_host)  # fmt: skip
    return removed + run_stacks(deploys, bring_up, on_change=on_change, **limits,
                                group=lambda s: catalog[s.name].docker_host)  # fmt: skip


def _baseline(deps: Deps, name: str) -> Mapping[str, object] | None:
    """What stack `name`'s containers are right after it came up, for drift checks; None for a swarm stack,
    or when the engine could not say (the stack's drift is then unknown until its next deploy)."""
    try:
        containers = deps.backend.containers(name)
    except (DockerException, RequestException) as error:
        log.warning("stack %s: no drift baseline (the engine did not list its containers: %s)", name, error)
        return None
    return None if containers is None else baseline_of(containers).as_dict()


def _leave(deps: Deps, name: str, before: Placement) -> str:
    """A stack moved to another engine or engine kind: under DEPLOYER_PRUNE it is brought down where it ran;
    otherwise it is said (in its output and the log) to be still running there."""
    if not deps.settings.prune:
        log.warning("stack %s moved from %s: still running there (DEPLOYER_PRUNE=false)", name, before)
        return f"moved: still running as {before} (DEPLOYER_PRUNE=false: bring it down there by hand)"
    try:
        deps.backend.down(name, before)
    except DeployerError as error:
        log.error("stack %s moved from %s: bringing it down there failed: %s", name, before, error.message)
        return f"moved: bringing it down as {before} failed: {error.message}"
    return f"moved: brought down as {before}"


def _failure_reason(deps: Deps, results: tuple[StackResult, ...]) -> Reason | None:
    """Why the deployment failed: the first failed stack's reason, unless the engine has gone away since."""
    failed = [r for r in results if r.state in (StackState.FAILED, StackState.ROLLED_BACK)]
    if not failed:
        return None
    if any(r.reason in TRANSIENT for r in failed):
        return next(r.reason for r in failed if r.reason in TRANSIENT)
    engines = {Placement(docker_host=deps.backend.placement(r.name).docker_host) for r in failed}
    if any(deps.backend.ping(engine) is not None for engine in sorted(engines, key=str)):  # it stopped answering
        return Reason.ENGINE_UNREACHABLE
    return failed[0].reason


def _exit_code(results: tuple[StackResult, ...]) -> int:
    return 0 if all(r.state is StackState.SUCCEEDED for r in results) else 1


def _describe(plan: Plan) -> str:
    rewound = f" (history rewound from {', '.join(c[:12] for c in plan.rewound_from)})" if plan.rewound_from else ""
    if plan.is_empty:
        return f"nothing to deploy at {plan.target[:12]}{rewound}: no stack changed since its last good deployment"
    return f"deploying {plan.target[:12]}{rewound}: " + " -> ".join(", ".join(level) for level in plan.order)

"""The deploy pipeline: fetch -> plan -> preflight -> apply -> report, for one commit.

This is the one module that imports more than one stage. Each step is a named function; the
steps share frozen values (Plan, Catalog, results), never a mutable context object.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deployer.apply import ComposeBackend, StackBackend, decrypt_files, run_stacks
from deployer.errors import DeployerError, SecretError
from deployer.fetch import Mirror
from deployer.lock import deploy_lock, plan_lock
from deployer.model import (
    Action,
    Catalog,
    Outcome,
    Plan,
    PlannedStack,
    Reason,
    StackResult,
    StackState,
)
from deployer.plan import load_catalog, make_plan, stack_names_in
from deployer.report import Journal
from deployer.runner import CommandRunner, SubprocessRunner
from deployer.settings import Settings
from deployer.state import StateStore

__all__ = [
    "Deps", "Progress", "Request", "SilentProgress", "branch_head", "deploy", "is_ancestor", "plan_between",
    "validate_tree",
]  # fmt: skip

#: the value each secret key gets when validating without decrypting
PLACEHOLDER = "1"


class Progress(Protocol):
    def phase(self, text: str) -> None: ...

    def planned(self, plan: Plan) -> None: ...

    def stack(self, result: StackResult) -> None: ...


class SilentProgress:
    def phase(self, text: str) -> None:
        pass

    def planned(self, plan: Plan) -> None:
        pass

    def stack(self, result: StackResult) -> None:
        pass


@dataclass(frozen=True)
class Deps:
    """Everything a deployment talks to, built once from settings (tests build their own)."""

    settings: Settings
    runner: CommandRunner
    backend: StackBackend
    store: StateStore
    journal: Journal

    @classmethod
    def from_settings(cls, settings: Settings) -> Deps:
        runner = SubprocessRunner()
        return cls(
            settings=settings,
            runner=runner,
            backend=ComposeBackend(runner=runner, docker_env=settings.docker_env),
            store=StateStore(settings.state_dir / "state.db"),
            journal=Journal(settings.state_dir / "audit.jsonl"),
        )

    def mirror(self, repo_url: str) -> Mirror:
        return Mirror(self.settings.state_dir / "mirror.git", repo_url)

    @property
    def checkouts(self) -> Path:
        """deployer's own planning trees (stacks run from their own worktrees under stacks/)."""
        return self.settings.state_dir / "checkouts"


@dataclass(frozen=True)
class _Prepared:
    """A plan with its catalog and each deploying stack's decrypted environment (memory only)."""

    plan: Plan
    catalog: Catalog
    envs: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Request:
    """What to deploy, and who asked."""

    repo_url: str
    ref: str
    stacks: tuple[str, ...] = ()
    trigger: str = "cli"
    actor: str | None = None


def deploy(
    deps: Deps,
    request: Request,
    *,
    deployment_id: str | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Deploy `request.ref`: the affected stacks (or exactly `request.stacks`), in dependency order.

    Pass the id of an already queued deployment to run that one. Never raises DeployerError: bad
    input (unknown commit, invalid catalog, undecryptable secret, compose file rejected) ends the
    deployment before any stack changes, with exit code 2; a stack that fails to come up fails the
    deployment with exit code 1, after unrelated stacks finished. An interruption (Ctrl-C, SIGTERM
    turned into an exception) is recorded as a failed deployment and re-raised.
    """
    progress = progress or SilentProgress()
    if deployment_id is None:
        deployment_id = deps.store.create_deployment(ref=request.ref, trigger=request.trigger, actor=request.actor)
        deps.journal.record("deployment.queued", deployment_id=deployment_id, commit=None, ref=request.ref,
                            trigger=request.trigger, actor=request.actor)  # fmt: skip
    started = time.monotonic()
    try:
        # 1. One deployment at a time per state directory.
        with deploy_lock(deps.settings.state_dir):
            outcome = _deploy_locked(deps, deployment_id, request, progress)
    except DeployerError as error:
        outcome = Outcome(deployment_id, None, error=error.message, error_code=error.code, exit_code=error.exit_code)
    except BaseException:
        _finish(deps, Outcome(deployment_id, None, error="interrupted", error_code="interrupted"), started)
        raise
    return _finish(deps, outcome, started)


def _deploy_locked(deps: Deps, deployment_id: str, request: Request, progress: Progress) -> Outcome:
    # 2. The exact commit, from a fresh fetch of the mirror.
    progress.phase(f"fetching {request.ref}")
    mirror = deps.mirror(request.repo_url)
    mirror.sync()
    target = mirror.resolve(request.ref)
    # 3. Plan against each stack's last good commit, in a clean checkout of the target.
    tree = mirror.clean_checkout(target, deps.checkouts / "deploy")
    try:
        plan, catalog = _plan(deps, mirror, tree, target=target, requested=request.stacks)
    except DeployerError as error:
        return Outcome(deployment_id, target, error=error.message, error_code=error.code, exit_code=2)
    deps.store.start_deployment(deployment_id, plan, depends_on={n: catalog[n].depends_on for n in catalog})
    deps.journal.record("deployment.started", deployment_id=deployment_id, commit=target, trigger=request.trigger,
                        actor=request.actor, stacks=[s.name for s in plan.runnable])  # fmt: skip
    progress.phase(_describe(plan))
    progress.planned(plan)
    # 4. Preflight: every input of every deploying stack is proven good before anything changes.
    prepared = _preflight(deps, deployment_id, plan, catalog=catalog, tree=tree, progress=progress)
    if isinstance(prepared, Outcome):
        return prepared
    # 5. Apply: removals, then deploys in dependency order, recording each result as it lands.
    results = _apply(deps, deployment_id, prepared, mirror, progress)
    return Outcome(deployment_id, target, results, exit_code=_exit_code(results))


def branch_head(deps: Deps, *, repo_url: str, branch: str) -> str:
    """Fetch the mirror and return the branch's head commit. Raises FetchError."""
    mirror = deps.mirror(repo_url)
    mirror.sync()
    return mirror.resolve(f"refs/heads/{branch}")


def is_ancestor(deps: Deps, *, repo_url: str, commit: str, of: str) -> bool:
    """Whether `commit` is an ancestor of `of` in the mirror (fetching first). Raises FetchError."""
    mirror = deps.mirror(repo_url)
    mirror.sync()
    return mirror.is_ancestor(commit, of)


def plan_between(deps: Deps, *, repo_url: str, base: str | None, target_ref: str) -> Plan:
    """The plan from commit `base` (None: every stack is a first deploy) to `target_ref`.

    Raises FetchError, CatalogError or PlanError.
    """
    mirror = deps.mirror(repo_url)
    mirror.sync()
    target = mirror.resolve(target_ref)
    base_sha = mirror.resolve(base) if base else None
    stacks_dir = deps.settings.stacks_dir
    with plan_lock(deps.settings.state_dir):
        catalog = load_catalog(mirror.clean_checkout(target, deps.checkouts / "plan"), stacks_dir=stacks_dir)
    previous = stack_names_in(mirror.files(base_sha, stacks_dir), stacks_dir=stacks_dir) if base_sha else ()
    deployed = {name: base_sha for name in previous if base_sha}
    changes = {base_sha: mirror.changed_paths(base_sha, target)} if base_sha else {}
    return make_plan(catalog, target=target, deployed=deployed, changes=changes, base=base_sha,
                     prune=deps.settings.prune)  # fmt: skip


def validate_tree(deps: Deps, path: Path) -> Catalog:
    """Check every stack in the working tree at `path` without decrypting or deploying.

    Secret keys get a placeholder value so that `docker compose config` can interpolate.
    Raises CatalogError or ComposeInvalidError (listing every rejected stack).
    """
    catalog = load_catalog(path, stacks_dir=deps.settings.stacks_dir)
    problems = []
    for name in catalog:
        stack = catalog[name]
        env = {key: PLACEHOLDER for keys in stack.secret_keys.values() for key in keys}
        try:
            deps.backend.check(stack, workdir=path.resolve(), env=env)
        except DeployerError as error:
            problems.append(error)
    if problems:
        first = problems[0]
        raise type(first)(first.message, details=tuple(p.message for p in problems))
    return catalog


def _plan(deps: Deps, mirror: Mirror, tree: Path, *, target: str, requested: Collection[str]) -> tuple[Plan, Catalog]:
    catalog = load_catalog(tree, stacks_dir=deps.settings.stacks_dir)
    deployed = deps.store.last_good()
    changes = {base: mirror.changed_paths(base, target) for base in set(deployed.values())}
    plan = make_plan(catalog, target=target, deployed=deployed, changes=changes, requested=requested,
                     prune=deps.settings.prune)  # fmt: skip
    return plan, catalog


def _preflight(
    deps: Deps, deployment_id: str, plan: Plan, *, catalog: Catalog, tree: Path, progress: Progress
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
            deps.backend.check(stack, workdir=tree, env=env)
        except DeployerError as error:
            reason = Reason.SECRET_DECRYPT_FAILED if isinstance(error, SecretError) else Reason.COMPOSE_INVALID
            now = time.time()
            return StackResult(name, Action.DEPLOY, StackState.FAILED, reason=reason, error=error.message,
                               started_at=now, finished_at=now)  # fmt: skip
        if stack.secrets:
            deps.journal.record("secrets.decrypted", deployment_id=deployment_id, commit=plan.target, stack=name,
                                files=[str(p) for p in stack.secrets])  # fmt: skip
        return env

    names = [s.name for s in plan.runnable if s.action is Action.DEPLOY]
    with ThreadPoolExecutor(max_workers=deps.settings.max_parallel, thread_name_prefix="preflight") as pool:
        checked = dict(zip(names, pool.map(check, names), strict=True))
    failures = [r for r in checked.values() if isinstance(r, StackResult)]
    if failures:
        return _refused(deps, deployment_id, plan, failures, progress)
    envs = {name: env for name, env in checked.items() if not isinstance(env, StackResult)}
    return _Prepared(plan=plan, catalog=catalog, envs=envs)


def _refused(deps: Deps, deployment_id: str, plan: Plan, failures: list[StackResult], progress: Progress) -> Outcome:
    """Record a deployment stopped by bad input: the culprits failed, every other stack skipped."""
    failed = {f.name: f for f in failures}
    why = f"not started: invalid input in {', '.join(sorted(failed))}"
    results = []
    for planned in plan.runnable:
        result = failed.get(planned.name) or StackResult(planned.name, planned.action, StackState.SKIPPED,
                                                         reason=Reason.PLAN_INVALID, error=why)  # fmt: skip
        _record(deps, deployment_id, plan.target, result)
        progress.stack(result)
        results.append(result)
    first = failures[0]
    return Outcome(deployment_id, plan.target, tuple(results), error=first.error,
                   error_code=str(first.reason), exit_code=2)  # fmt: skip


def _apply(
    deps: Deps, deployment_id: str, prepared: _Prepared, mirror: Mirror, progress: Progress
) -> tuple[StackResult, ...]:
    plan, catalog, envs = prepared.plan, prepared.catalog, prepared.envs
    worktrees = deps.settings.state_dir / "stacks"

    def bring_up(planned: PlannedStack) -> str:
        workdir = mirror.checkout(plan.target, worktrees / planned.name)
        return deps.backend.up(catalog[planned.name], workdir=workdir, env=envs[planned.name])

    def take_down(planned: PlannedStack) -> str:
        return deps.backend.down(planned.name)

    def on_change(result: StackResult) -> None:
        progress.stack(result)
        _record(deps, deployment_id, plan.target, result)

    removals = [s for s in plan.runnable if s.action is Action.REMOVE]
    deploys = [s for s in plan.runnable if s.action is Action.DEPLOY]
    limit = deps.settings.max_parallel
    removed = run_stacks(removals, take_down, max_parallel=limit, on_change=on_change)
    return removed + run_stacks(deploys, bring_up, max_parallel=limit, on_change=on_change)


def _record(deps: Deps, deployment_id: str, commit: str, result: StackResult) -> None:
    if result.state is StackState.RUNNING:
        deps.journal.record("stack.started", deployment_id=deployment_id, commit=commit, stack=result.name,
                            action=result.action)  # fmt: skip
        return
    deps.store.record_stack(deployment_id, result, commit=commit)
    duration = None if result.duration is None else round(result.duration * 1000)
    deps.journal.record(f"stack.{result.state}", deployment_id=deployment_id, commit=commit, stack=result.name,
                        action=result.action, result=str(result.state), duration_ms=duration,
                        reason=result.reason, error=result.error)  # fmt: skip


def _finish(deps: Deps, outcome: Outcome, started: float) -> Outcome:
    deps.store.finish_deployment(outcome.deployment_id, outcome.state, error=outcome.error,
                                 error_code=outcome.error_code)  # fmt: skip
    deps.journal.record("deployment.finished", deployment_id=outcome.deployment_id, commit=outcome.commit,
                        result=str(outcome.state), duration_ms=round((time.monotonic() - started) * 1000),
                        error=outcome.error)  # fmt: skip
    return outcome


def _exit_code(results: tuple[StackResult, ...]) -> int:
    return 0 if all(r.state is StackState.SUCCEEDED for r in results) else 1


def _describe(plan: Plan) -> str:
    if plan.is_empty:
        return f"nothing to deploy at {plan.target[:12]}: no stack changed since its last good deployment"
    return f"deploying {plan.target[:12]}: " + " -> ".join(", ".join(level) for level in plan.order)

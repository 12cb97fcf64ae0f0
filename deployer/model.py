"""The values that flow between the stages: frozen, and free of behaviour beyond small derivations.

receive -> fetch -> plan -> apply -> report: each stage takes and returns these types, so a stage's
signature shows everything it needs. This module imports nothing from deployer.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Final

#: A stack's name, which is also its compose project name.
StackName = str

FIRST_DEPLOY = "first deploy"
REQUESTED = "requested"


@dataclass(frozen=True)
class Directory:
    """A host directory that must exist before a stack's `up`."""

    path: str
    owner: str | None = None  # "uid:gid", "uid", "user:group" or "user"
    mode: int | None = None


@dataclass(frozen=True)
class Stack:
    """One compose project as declared in the config repository, at one commit.

    Paths are relative to the repository root, POSIX style, and proven not to escape it.
    """

    name: StackName
    folder: PurePosixPath
    compose_file: PurePosixPath
    depends_on: tuple[StackName, ...] = ()
    secrets: tuple[PurePosixPath, ...] = ()
    networks: tuple[str, ...] = ()
    directories: tuple[Directory, ...] = ()
    wait_timeout: int = 300
    watch: tuple[str, ...] = ()
    #: keys of each secret file, readable without decrypting (SOPS leaves keys in clear)
    secret_keys: Mapping[PurePosixPath, tuple[str, ...]] = field(default_factory=dict)
    #: non-secret interpolation variables: the stacks folder's shared.env, overlaid by the stack's own .env
    variables: Mapping[str, str] = field(default_factory=dict)
    #: the shared.env every stack reads (a change to it affects every stack), if the repository has one
    shared_file: PurePosixPath | None = None
    #: how it is brought up: `compose` (docker compose up) or `swarm` (docker stack deploy)
    engine: str = "compose"
    #: the engine it runs on (ssh://, tcp://, unix:// or a Docker context name); None: the deployer's own
    docker_host: str | None = None
    #: what validation says without refusing (keys a swarm stack's engine ignores), one line each
    warnings: tuple[str, ...] = ()

    @property
    def placement(self) -> Placement:
        return Placement(self.engine, self.docker_host)


@dataclass(frozen=True, order=True)
class Placement:
    """Where a stack runs: its engine kind and the engine's address (None: the deployer's own engine)."""

    engine: str = "compose"
    docker_host: str | None = None

    def __str__(self) -> str:
        return f"{self.engine} on {self.docker_host or 'the local engine'}"


@dataclass(frozen=True)
class Catalog:
    """Every stack of the repository at one commit, by name."""

    stacks: Mapping[StackName, Stack]
    stacks_dir: PurePosixPath = PurePosixPath("stacks")

    def __getitem__(self, name: StackName) -> Stack:
        return self.stacks[name]

    def __contains__(self, name: object) -> bool:
        return name in self.stacks

    def __iter__(self) -> Iterator[StackName]:
        return iter(sorted(self.stacks))

    def __len__(self) -> int:
        return len(self.stacks)


class Action(enum.StrEnum):
    DEPLOY = "deploy"
    REMOVE = "remove"
    ORPHANED = "orphaned"


@dataclass(frozen=True)
class PlannedStack:
    """One stack the plan touches (or reports as orphaned), with why."""

    name: StackName
    action: Action
    reasons: tuple[str, ...]
    depends_on: tuple[StackName, ...] = ()  # dependencies inside this plan only


@dataclass(frozen=True)
class Plan:
    """What a deployment will do: affected stacks, why, and the order as levels.

    `order` lists levels of stacks that may run together; the executor is finer than that and starts
    a stack as soon as its own dependencies have succeeded. `rewound_from` lists deployed commits the
    target does not contain (the branch was force-pushed or reset past them).
    """

    target: str
    base: str | None
    stacks: tuple[PlannedStack, ...]
    order: tuple[tuple[StackName, ...], ...]
    rewound_from: tuple[str, ...] = ()

    @property
    def runnable(self) -> tuple[PlannedStack, ...]:
        """The stacks to deploy or remove (orphans are only reported)."""
        return tuple(s for s in self.stacks if s.action is not Action.ORPHANED)

    def get(self, name: StackName) -> PlannedStack:
        return next(s for s in self.stacks if s.name == name)

    @property
    def is_empty(self) -> bool:
        return not self.runnable


class StackState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"
    #: a deployed stack whose folder is gone and that pruning leaves running (reported, never run)
    ORPHANED = "orphaned"


class Reason(enum.StrEnum):
    """The closed set of reasons a deployment or a stack did not succeed, shared by logs, statuses and audit.

    Each is either transient (the world was not ready: retry the same commit later) or terminal (the
    commit itself is at fault: wait for a new commit, a manual request or `force`); TRANSIENT says which.
    """

    # transient: nothing is wrong with the commit
    FETCH_FAILED = "FetchFailed"  # the remote could not be reached or read
    ENGINE_UNREACHABLE = "EngineUnreachable"  # the Docker engine did not answer
    LOCK_HELD = "LockHeld"  # another deployment held the deploy lock
    KEY_UNAVAILABLE = "KeyUnavailable"  # the age identity file is missing or unreadable
    DISK_FULL = "DiskFull"  # no space left on a device
    INTERRUPTED = "Interrupted"  # the deployer was stopped mid-deployment
    # terminal: the commit (or the request) is at fault
    NOT_ON_BRANCH = "NotOnBranch"  # a push named a commit the branch does not contain
    UNSIGNED = "Unsigned"  # DEPLOYER_REQUIRE_SIGNED: no signature an allowed signer made
    REF_NOT_FOUND = "RefNotFound"  # no branch, tag or commit by that name
    PLAN_INVALID = "PlanInvalid"
    SECRET_DECRYPT_FAILED = "SecretDecryptFailed"  # noqa: S105 -- a reason name, not a password
    KNOWN_SECRET = "KnownSecret"  # noqa: S105 -- a committed placeholder or the public example key
    COMPOSE_INVALID = "ComposeInvalid"
    COMPOSE_FAILED = "ComposeFailed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    # not a failure of its own: a dependency failed, so this stack was not tried
    DEPENDENCY_FAILED = "DependencyFailed"


#: reasons that say "not now" rather than "this commit is bad": the reconcile loop retries them with backoff
TRANSIENT: frozenset[Reason] = frozenset(
    {
        Reason.FETCH_FAILED,
        Reason.ENGINE_UNREACHABLE,
        Reason.LOCK_HELD,
        Reason.KEY_UNAVAILABLE,
        Reason.DISK_FULL,
        Reason.INTERRUPTED,
    }
)


@dataclass(frozen=True)
class StackResult:
    """What happened to one planned stack."""

    name: StackName
    action: Action
    state: StackState
    reason: Reason | None = None
    error: str | None = None
    #: the tail of the failing step's output, secrets redacted, kept for the operator
    output: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: the image each service ran (service, image id), recorded when the stack succeeded: what a rollback pins
    images: tuple[tuple[str, str], ...] = ()
    #: the last good commit a failed stack was brought back to
    rolled_back_to: str | None = None
    #: where a deployed stack runs (recorded with a success: where a later removal or move finds it)
    placement: Placement | None = None
    #: what its containers were right after it came up (deployer.plan.drift.Baseline.as_dict): what drift
    #: checks compare with; None where drift is not checked (a swarm stack)
    baseline: Mapping[str, Any] | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


class Trigger(enum.StrEnum):
    """How a deployment came in. Pushes and polls follow the branch (latest wins, late deliveries are
    superseded); a person's request (manual, cli) deploys exactly what it names."""

    WEBHOOK = "webhook"
    POLL = "poll"
    MANUAL = "manual"
    CLI = "cli"
    DRIFT = "drift"


@dataclass(frozen=True)
class Intake:
    """Everything a deployment is asked with, recorded durably with it whatever the way in."""

    trigger: Trigger
    ref: str
    commit: str | None  # resolved when known (a push's after, a manual request's ref); else at run time
    actor: str | None = None
    reason: str | None = None
    stacks: tuple[StackName, ...] = ()  # exactly these (a person's request); () = every affected stack
    force: bool = False  # recreate the containers even when nothing changed
    delivery: tuple[str, str] | None = None  # (forge, delivery id) of a webhook


class DeploymentState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Outcome:
    """The result of one deployment: per-stack results, or the error that stopped it before any.

    `superseded_by` is set when the deployment did not run because the branch head contains its
    commit (a late delivery); `reason` is why it failed, from the closed Reason set.
    """

    deployment_id: str
    commit: str | None
    results: tuple[StackResult, ...] = ()
    error: str | None = None
    reason: Reason | None = None
    exit_code: int = 0
    superseded_by: str | None = None
    rewound_from: tuple[str, ...] = ()

    @property
    def state(self) -> DeploymentState:
        if self.superseded_by is not None:
            return DeploymentState.SUPERSEDED
        if self.error is not None or any(r.state is not StackState.SUCCEEDED for r in self.results):
            return DeploymentState.FAILED
        return DeploymentState.SUCCEEDED

    @property
    def transient(self) -> bool:
        """Whether it failed for a reason that clears by itself (then the same commit is retried)."""
        return self.state is DeploymentState.FAILED and self.reason in TRANSIENT


@dataclass(frozen=True)
class Attempt:
    """The newest deployment of the branch that ran or is in hand (superseded ones do not count)."""

    deployment_id: str
    commit: str
    state: DeploymentState
    reason: Reason | None
    finished_at: float | None
    #: failed deployments of this same commit in a row, newest first, that failed for a transient reason
    transient_failures: int = 0


class StatusState(enum.StrEnum):
    """A commit status as deployer means it; each forge maps it onto its own states."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class CommitStatus:
    """One status for one commit and context (`deployer` or `deployer/<stack>`)."""

    sha: str
    context: str
    state: str  # a StatusState value
    description: str
    target_url: str | None = None


@dataclass(frozen=True)
class StatusTarget:
    """Where a deployment's commit statuses go."""

    forge: str
    api_url: str
    repo: str


def new_deployment_id() -> str:
    return uuid.uuid4().hex[:12]


def rfc3339(epoch: float | None = None) -> str:
    """A UTC timestamp in RFC 3339 with milliseconds, e.g. 2026-11-27T01:28:36.123Z."""
    moment = datetime.now(UTC) if epoch is None else datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One audit event: its name and its fields (deployment_id and commit first; names, never secret values)."""

    name: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Told:
    """What a state change says, written in the same transaction as the change (the outbox pattern):
    the audit events that tell it and the commit statuses it implies, (target, deployment id, status) each."""

    events: tuple[Event, ...] = ()
    statuses: tuple[tuple[StatusTarget, str, CommitStatus], ...] = ()

    def __add__(self, other: Told) -> Told:
        return Told(self.events + other.events, self.statuses + other.statuses)


def told(name: str, *items: Mapping[str, Any]) -> Told:
    """Told of one event per item, all named `name`."""
    return Told(tuple(Event(name, item) for item in items))


NOTHING_TOLD: Final = Told()

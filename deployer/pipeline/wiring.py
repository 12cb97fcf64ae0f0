"""What a deployment talks to, what it was asked to do, and how it tells progress."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deployer.apply import Engines
from deployer.fetch import Mirror
from deployer.model import Plan, StackResult
from deployer.runner import CommandRunner, SubprocessRunner
from deployer.settings import Settings
from deployer.state import StateStore

__all__ = ["BRANCH_TRIGGERS", "Deps", "Progress", "Request", "SilentProgress"]

#: triggers that follow the branch: they deploy only what the branch head contains, latest wins
BRANCH_TRIGGERS = frozenset({"webhook", "poll"})


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
    backend: Engines
    store: StateStore

    @classmethod
    def from_settings(cls, settings: Settings) -> Deps:
        runner = SubprocessRunner()
        store = StateStore(settings.state_dir / "state.db")
        return cls(
            settings=settings,
            runner=runner,
            backend=Engines(
                runner=runner,
                docker_env=settings.docker_env,
                placed=store.placement,
                rollback=settings.rollback,
            ),
            store=store,
        )

    def mirror(self, repo_url: str) -> Mirror:
        return Mirror(self.settings.state_dir / "mirror.git", repo_url, branch=self.settings.branch,
                      fetch_timeout=self.settings.fetch_timeout)  # fmt: skip

    @property
    def checkouts(self) -> Path:
        """deployer's own planning trees (stacks run from their own worktrees under stacks/)."""
        return self.settings.state_dir / "checkouts"


@dataclass(frozen=True)
class Request:
    """What to deploy, and who asked.

    A push or a poll (`trigger` in BRANCH_TRIGGERS) deploys `ref` only if the branch head, as
    fetched now, is that commit; an ancestor of the head is superseded by it (a late delivery) and
    anything else is refused. A person (cli, manual) may name any ref, even an older commit.
    """

    repo_url: str
    ref: str
    stacks: tuple[str, ...] = ()
    trigger: str = "cli"
    actor: str | None = None
    reason: str | None = None
    #: recreate the named stacks' containers even when nothing changed
    force: bool = False
    #: fetch the branch first; False when the caller fetched it a moment ago (a poll's deployment of the head)
    fetch: bool = True

    @property
    def follows_branch(self) -> bool:
        return self.trigger in BRANCH_TRIGGERS

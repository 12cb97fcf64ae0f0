"""What a person's request names, checked against the deployer's mirror: read-only, local, no fetch.

The web side never fetches (the deploy worker does): a manual request may name the deploying
branch, a commit of it (an older one, on purpose), or anything else the mirror already holds.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from deployer.errors import RefNotFoundError
from deployer.plan import stack_names_in
from deployer.runner import CommandRunner
from deployer.settings import Settings

__all__ = ["resolve", "stacks_at"]

#: any name git allows for a branch or tag (slashes, '+', '#', non-ASCII), or a commit expression (`~`, `^`);
#: never an option (a leading '-'), white space, control characters or git's glob and path characters
_REF = re.compile(r"^(?!-)[^\x00-\x20\x7f\\:?*\[]{1,200}$")


def resolve(settings: Settings, runner: CommandRunner, ref: str) -> str:
    """The full commit sha `ref` names in the mirror. Raises RefNotFoundError naming it."""
    mirror = settings.state_dir.resolve() / "mirror.git"
    if not _REF.fullmatch(ref) or ".." in ref:
        raise RefNotFoundError(f"ref {ref[:80]!r} is not a branch, tag or commit name")
    candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}", ref]
    for candidate in candidates:
        found = _git(runner, mirror, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}")
        if found:
            return found
    raise RefNotFoundError(f"ref {ref!r} is not in the deployer's mirror (it fetches only {settings.branch} and"
                           " its history; deploy another ref with `deployer deploy --ref` on the host)")  # fmt: skip


def stacks_at(settings: Settings, runner: CommandRunner, commit: str) -> frozenset[str]:
    """The stack names the commit has (folders with a compose file under the stacks folder)."""
    mirror = settings.state_dir.resolve() / "mirror.git"
    listing = _git(runner, mirror, "ls-tree", "-r", "--name-only", "-z", commit, "--", str(settings.stacks_dir))
    return stack_names_in([PurePosixPath(p) for p in listing.split("\0") if p], stacks_dir=settings.stacks_dir)


def _git(runner: CommandRunner, mirror: Path, *args: str) -> str:
    if not (mirror / "HEAD").exists():
        raise RefNotFoundError("the deployer has not fetched the repository yet")
    result = runner.run(["git", "--git-dir", str(mirror), *args], env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
                        timeout=30)  # fmt: skip
    return result.stdout.strip() if result.ok else ""

"""Stage 2, fetch: a bare mirror of the config repository, and clean checkouts of exact commits.

Nothing here ever deploys from a working copy that someone edits: every tree the deployer reads
is a worktree of its own mirror, forced to one commit.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path, PurePosixPath

import git

from deployer.errors import FetchError

__all__ = ["Mirror", "redact_url"]

_SHA = re.compile(r"^[0-9a-f]{4,40}$")


class Mirror:
    """A bare mirror of `url` at `path`, created on first use."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path.resolve()
        self.url = _absolute(url)
        self._repo: git.Repo | None = None
        # `worktree add` and `worktree prune` edit the mirror's shared worktree list: one at a time.
        self._worktrees = threading.Lock()

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            if not (self.path / "HEAD").exists():
                raise FetchError(f"no mirror at {self.path}: fetch first")
            self._repo = git.Repo(self.path)
        return self._repo

    def sync(self) -> None:
        """Clone the mirror, or fetch every branch and tag into it (pruning deleted ones).

        Raises FetchError when the repository cannot be reached.
        """
        try:
            if not (self.path / "HEAD").exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._repo = git.Repo.clone_from(self.url, self.path, mirror=True)
                return
            if self.repo.remotes.origin.url != self.url:
                self.repo.remotes.origin.set_url(self.url)
            self.repo.git.fetch("--prune", "--force", "origin")
        except git.GitCommandError as error:
            raise FetchError(f"cannot fetch {redact_url(self.url)}: {_git_error(error)}") from error

    def resolve(self, ref: str) -> str:
        """The full commit sha of a branch, tag or (abbreviated) sha.

        Raises FetchError when nothing by that name exists.
        """
        candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}", ref]
        if ref.startswith("refs/"):
            candidates = [ref]
        for candidate in candidates:
            try:
                sha: str = self.repo.git.rev_parse("--verify", "--quiet", "--end-of-options", candidate + "^{commit}")
                return sha.strip()
            except git.GitCommandError:
                continue
        kind = "commit" if _SHA.match(ref) else "branch, tag or commit"
        raise FetchError(f"{kind} {ref!r} does not exist in {redact_url(self.url)}")

    def has_commit(self, sha: str) -> bool:
        try:
            self.repo.git.cat_file("-e", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def is_ancestor(self, commit: str, of: str) -> bool:
        """Whether `commit` is reachable from `of` (an older commit of the same history)."""
        try:
            self.repo.git.merge_base("--is-ancestor", commit, of)
        except git.GitCommandError:
            return False
        return True

    def changed_paths(self, base: str, target: str) -> frozenset[str] | None:
        """Paths that differ between two commits, from git's own diff; None if `base` is gone.

        Renames count as a deletion and an addition, so both the old and the new path show.
        """
        if base == target:
            return frozenset()
        try:
            out = self.repo.git.diff("--name-only", "-z", "--no-renames", base, target, "--")
        except git.GitCommandError as error:
            if not self.has_commit(base):
                return None
            raise FetchError(f"cannot diff {base[:12]}..{target[:12]}: {_git_error(error)}") from error
        return frozenset(p for p in out.split("\0") if p)

    def files(self, sha: str, under: PurePosixPath) -> list[PurePosixPath]:
        """Every file below `under` at commit `sha` (used to know which stacks a commit had)."""
        out = self.repo.git.ls_tree("-r", "--name-only", "-z", sha, "--", str(under))
        return [PurePosixPath(p) for p in out.split("\0") if p]

    def checkout(self, sha: str, path: Path) -> Path:
        """Make `path` a worktree at exactly `sha`, creating it or moving it there.

        Tracked files are forced to the commit (local edits are discarded, deleted files removed).
        Untracked files are kept: a container may keep data in a bind mount inside its stack folder.
        """
        path = path.resolve()  # git runs inside the mirror: a relative path would land there
        try:
            if (path / ".git").exists():
                worktree = git.Repo(path)
                worktree.git.checkout("--detach", "--force", sha)
            else:
                with self._worktrees:
                    self.repo.git.worktree("prune")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.repo.git.worktree("add", "--detach", "--force", str(path), sha)
        except git.GitCommandError as error:
            raise FetchError(f"cannot check out {sha[:12]} into {path}: {_git_error(error)}") from error
        return path

    def clean_checkout(self, sha: str, path: Path) -> Path:
        """Make `path` exactly the tree of `sha`: tracked files forced, everything else removed.

        For deployer's own planning trees, where nothing but git writes: moving one worktree is
        far cheaper than creating a new one per deployment (a full checkout).
        """
        self.checkout(sha, path)
        try:
            git.Repo(path.resolve()).git.clean("-ffdx", "--quiet")
        except git.GitCommandError as error:
            raise FetchError(f"cannot clean {path}: {_git_error(error)}") from error
        return path


def redact_url(url: str) -> str:
    """Drop credentials from a clone URL before it reaches a message."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def _absolute(url: str) -> str:
    if "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url
    return str(Path(url).expanduser().resolve())


def _git_error(error: git.GitCommandError) -> str:
    text = str(error.stderr or error).strip().strip("'").replace("stderr: ", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact_url(lines[-1] if lines else "git failed")

"""Stage 2, fetch: a bare mirror of the config repository, and clean checkouts of exact commits.

Nothing here ever deploys from a working copy that someone edits: every tree the deployer reads
is a worktree of its own mirror, forced to one commit.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import git

from deployer.errors import FetchError, RefNotFoundError

__all__ = ["Mirror", "redact_url"]

_SHA = re.compile(r"^[0-9a-f]{4,40}$")
#: `%G?` of a commit whose signature did not verify, said for operators
_SIGNATURE = {
    "N": "no signature",
    "U": "signed by a key that is not an allowed signer",
    "B": "bad signature",
    "E": "its signature cannot be checked (an SSH signature without DEPLOYER_ALLOWED_SIGNERS, or a GPG one "
    "without the key in DEPLOYER_GPG_KEYRING)",
    "X": "signature expired",
    "Y": "signed by an expired key",
    "R": "signed by a revoked key",
}
#: seconds a fetch may take before git (and the ssh or http helper it runs) is killed: git itself never
#: gives up on a remote that took the connection and does not answer
FETCH_TIMEOUT = 120.0


_LOCKS_LOCK = threading.Lock()
_WORKTREE_LOCKS: dict[Path, threading.Lock] = {}
#: where a pull request's head is fetched to, for the time of its preview
PREVIEW_REF = "refs/deployer/preview"


class Mirror:
    """A bare mirror of `url` at `path` that holds the deploying branch and nothing else.

    Only `refs/heads/<branch>` is fetched (never other branches or tags), so a commit that exists only
    elsewhere in the remote is never in hand by accident; `fetch_ref` fetches one more named ref when a
    person asks for it explicitly (`deployer deploy --ref v1.2`), and `fetch_preview` a pull request's
    head to a ref of its own (PREVIEW_REF) that no deployment ever reads.
    """

    def __init__(self, path: Path, url: str, *, branch: str = "main", fetch_timeout: float = FETCH_TIMEOUT) -> None:
        self.path = path.resolve()
        self.url = _absolute(url)
        self.branch = branch
        self.fetch_timeout = fetch_timeout
        self._repo: git.Repo | None = None
        # `worktree add` and `worktree prune` edit the mirror's shared worktree list: one at a time, across
        # every Mirror of this path in the process (the deploy and the preview threads each have one)
        with _LOCKS_LOCK:
            self._worktrees = _WORKTREE_LOCKS.setdefault(self.path, threading.Lock())

    @property
    def branch_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            if not (self.path / "HEAD").exists():
                raise FetchError(f"no mirror at {self.path}: fetch first")
            self._repo = git.Repo(self.path)
        return self._repo

    def sync(self) -> str:
        """Fetch the deploying branch (creating the mirror first) and return its head commit.

        A rewound branch is taken as it is now (forced update). Refs a mirror of an older deployer
        held (every ref of the remote) are dropped. Raises FetchError when the repository cannot be
        reached or has no such branch.
        """
        refspec = f"+{self.branch_ref}:{self.branch_ref}"
        try:
            if not (self.path / "HEAD").exists():
                self.path.mkdir(parents=True, exist_ok=True)
                self._repo = git.Repo.init(self.path, bare=True)
                self._repo.create_remote("origin", self.url)
            repo = self.repo
            with repo.config_writer() as config:
                config.set_value('remote "origin"', "url", self.url)
                config.set_value('remote "origin"', "fetch", refspec)
                if config.has_option('remote "origin"', "mirror"):
                    config.remove_option('remote "origin"', "mirror")
                # generation numbers: ancestry checks stop early instead of reading the whole history
                config.set_value("fetch", "writeCommitGraph", "true")
            repo.git.fetch("--force", "--no-tags", "--no-write-fetch-head", "origin", refspec,
                           kill_after_timeout=self.fetch_timeout)  # fmt: skip
            if (
                not (self.path / "objects" / "info" / "commit-graph").exists()
                and not (self.path / "objects" / "info" / "commit-graphs").exists()
            ):
                repo.git.commit_graph("write", "--reachable")
        except git.GitCommandError as error:
            cause = self._fetch_error(error)
            if "couldn't find remote ref" in cause:
                cause = f"it has no branch {self.branch}"
            raise FetchError(f"cannot fetch {redact_url(self.url)}: {cause}") from error
        self._drop_other_refs()
        return self.resolve(self.branch_ref)

    def fetch_ref(self, ref: str) -> None:
        """Fetch one more branch or tag that a person named (a manual deploy of another ref).

        Raises FetchError when it cannot be fetched; a ref that is not there is not an error here
        (resolve() then says it does not exist).
        """
        for candidate in (ref,) if ref.startswith("refs/") else (f"refs/tags/{ref}", f"refs/heads/{ref}"):
            try:
                self.repo.git.fetch("--force", "--no-tags", "--no-write-fetch-head", "origin",
                                    f"+{candidate}:{candidate}", kill_after_timeout=self.fetch_timeout)  # fmt: skip
                return
            except git.GitCommandError as error:
                cause = self._fetch_error(error)
                if "couldn't find remote ref" not in cause:
                    raise FetchError(f"cannot fetch {ref} from {redact_url(self.url)}: {cause}") from error

    def fetch_preview(self, ref: str) -> str:
        """Fetch a pull request's head ref (`refs/pull/N/head`, `refs/merge-requests/N/head`: also a fork's)
        to PREVIEW_REF, never to a branch, and return its commit. Raises FetchError."""
        if not (self.path / "HEAD").exists():
            self.sync()
        try:
            self.repo.git.fetch("--force", "--no-tags", "--no-write-fetch-head", "origin", f"+{ref}:{PREVIEW_REF}",
                                kill_after_timeout=self.fetch_timeout)  # fmt: skip
        except git.GitCommandError as error:
            raise FetchError(f"cannot fetch {ref} from {redact_url(self.url)}: {self._fetch_error(error)}") from error
        return self.resolve(PREVIEW_REF)

    def _fetch_error(self, error: git.GitCommandError) -> str:
        """Why a fetch failed, in a few words: git's own fatal line, or that the remote did not answer in time."""
        if "did not complete in" in str(error.stderr or ""):  # GitPython killed it (kill_after_timeout)
            return f"no answer within {self.fetch_timeout:g}s (DEPLOYER_FETCH_TIMEOUT)"
        return _git_error(error)

    def object_format(self) -> str:
        """`sha1` or `sha256`: how this repository names its objects."""
        return str(self.repo.git.rev_parse("--show-object-format")).strip() or "sha1"

    def _drop_other_refs(self) -> None:
        refs = self.repo.git.for_each_ref("--format=%(refname)").split()
        for stale in (ref for ref in refs if ref != self.branch_ref):  # only once, after an upgrade
            self.repo.git.update_ref("-d", stale)

    def resolve(self, ref: str) -> str:
        """The full commit sha of a branch, tag or (abbreviated) sha.

        Raises RefNotFoundError when nothing by that name exists.
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
        raise RefNotFoundError(f"{kind} {ref!r} does not exist in {redact_url(self.url)}")

    def try_resolve(self, ref: str) -> str | None:
        """resolve() without fetching or raising: None when the mirror cannot say (yet)."""
        try:
            return self.resolve(ref)
        except FetchError:
            return None

    def has_commit(self, sha: str) -> bool:
        try:
            self.repo.git.cat_file("-e", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def is_ancestor(self, commit: str, of: str) -> bool:
        """Whether `commit` is reachable from `of` (`of` itself included); False for a commit not in the mirror."""
        try:
            self.repo.git.merge_base("--is-ancestor", commit, of)
        except git.GitCommandError:
            return False
        return True

    def not_ancestors(self, commits: Iterable[str], *, of: str) -> tuple[str, ...]:
        """The commits that `of` does not contain (gone from its history, or from the mirror), sorted.

        Two git calls however many commits: which of them the mirror has, then which of those `of`
        cannot reach (rev-list lists a commit reachable from them but not from `of`; none for an ancestor).
        """
        wanted = sorted(set(commits) - {of})
        if not wanted:
            return ()
        try:
            present = set(self.repo.git.rev_list("--no-walk", "--ignore-missing", *wanted).split())
            outside = set(self.repo.git.rev_list(*sorted(present), "--not", of).split()) if present else set()
        except git.GitCommandError as error:
            raise FetchError(f"cannot compare {of[:12]} with the deployed commits: {_git_error(error)}") from error
        return tuple(c for c in wanted if c not in present or c in outside)

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

    def signature_problem(self, sha: str, *, allowed_signers: Path | None, gpg_home: Path) -> str | None:
        """None when git verifies `sha`'s signature against the allowed signers, else why not, in a few words.

        `git verify-commit` decides (exit 0: a good signature by a key in `allowed_signers` for SSH, or in
        the GnuPG home `gpg_home` for GPG: any key there passes, so it must hold only the allowed ones). Git
        never reads another allowed-signers file or the deployer user's own ~/.gnupg.
        """
        gpg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = ["-c", f"gpg.ssh.allowedSignersFile={allowed_signers or os.devnull}"]
        env = {**os.environ, "GNUPGHOME": str(gpg_home)}
        status, _, err = self.repo.git.execute(["git", *config, "verify-commit", "--raw", sha], env=env,
                                                with_extended_output=True, with_exceptions=False)  # fmt: skip
        if status == 0:
            return None
        code = self.repo.git.execute(["git", *config, "log", "-1", "--format=%G?", sha], env=env).strip()
        return _SIGNATURE.get(code, f"git verify-commit: {_last(err)}")

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
            if (path / ".git").exists() and not self._linked(path):
                self._relink(path, sha)
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

    def _linked(self, path: Path) -> bool:
        """Whether the worktree at `path` still belongs to this mirror (not to one deleted and made anew)."""
        try:
            common = git.Repo(path).git.rev_parse("--path-format=absolute", "--git-common-dir")
        except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError):
            return False
        return Path(common.strip()).resolve() == self.path

    def _relink(self, path: Path, sha: str) -> None:
        """Make `path` a worktree of this mirror again, keeping its files (a stack's untracked data).

        git will not add a worktree over a folder that has files, so the new worktree is registered in
        an empty folder beside it and its link moved over.
        """
        spare = path.with_name(f".{path.name}.relink")
        shutil.rmtree(spare, ignore_errors=True)
        (path / ".git").unlink()
        with self._worktrees:
            self.repo.git.worktree("prune")
            self.repo.git.worktree("add", "--detach", "--no-checkout", str(spare), sha)
        link = (spare / ".git").read_text().split(":", 1)[1].strip()
        Path(link, "gitdir").write_text(str(path / ".git") + "\n")
        (spare / ".git").rename(path / ".git")
        spare.rmdir()
        git.Repo(path).git.reset("--quiet", "--mixed", sha)  # the index, so that checkout below sees the files

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
    # git's first "fatal:" says why ("detected dubious ownership in repository at ..."); the lines after
    # it are generic advice ("Please make sure you have the correct access rights")
    fatal = [line.removeprefix("fatal: ") for line in lines if line.startswith("fatal: ")]
    return redact_url(fatal[0] if fatal else lines[-1] if lines else "git failed")


def _last(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "failed"

"""The git mirror against real repositories made with the git CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from deployer.errors import FetchError, RefNotFoundError
from deployer.fetch import Mirror, redact_url
from tests.helpers import ConfigRepo, git


@pytest.fixture
def source(tmp_path: Path) -> ConfigRepo:
    repo = ConfigRepo(tmp_path / "source")
    repo.write("stacks/web/compose.yaml", "services: {}\n")
    repo.write("README.md", "hello\n")
    repo.commit("first")
    return repo


@pytest.fixture
def mirror(tmp_path: Path, source: ConfigRepo) -> Mirror:
    mirror = Mirror(tmp_path / "state" / "mirror.git", source.url)
    mirror.sync()
    return mirror


def test_resolves_branches_tags_and_short_shas(mirror: Mirror, source: ConfigRepo) -> None:
    head = source.head()
    git(source.path, "tag", "v1")
    assert mirror.sync() == head
    assert mirror.resolve("main") == head
    assert mirror.resolve("refs/heads/main") == head
    assert mirror.resolve(head[:10]) == head
    with pytest.raises(RefNotFoundError):
        mirror.resolve("v1")  # tags are not fetched with the branch...
    mirror.fetch_ref("v1")  # ...only when a person names one
    assert mirror.resolve("v1") == head


def test_only_the_deploying_branch_is_fetched(tmp_path: Path, source: ConfigRepo) -> None:
    """Other branches, tags and GitHub's refs/pull/* (which forks can write to) never reach the mirror."""
    base = source.head()
    git(source.path, "checkout", "--quiet", "-b", "feature")
    source.write("stacks/web/compose.yaml", "services: {evil: {image: x}}\n")
    elsewhere = source.commit("only on a branch")
    git(source.path, "update-ref", "refs/pull/7/head", elsewhere)
    git(source.path, "tag", "t1")
    git(source.path, "checkout", "--quiet", "main")
    mirror = Mirror(tmp_path / "m.git", source.url)
    assert mirror.sync() == base
    refs = git(mirror.path, "for-each-ref", "--format=%(refname)").split()
    assert refs == ["refs/heads/main"]
    assert not mirror.has_commit(elsewhere)
    assert mirror.not_ancestors([base, elsewhere], of=base) == (elsewhere,)


def test_a_mirror_of_every_ref_is_narrowed_to_the_branch(tmp_path: Path, source: ConfigRepo) -> None:
    """A state dir from before (git clone --mirror: +refs/*:refs/*) keeps working and drops the other refs."""
    git(source.path, "branch", "other")
    old = tmp_path / "m.git"
    subprocess.run(["git", "clone", "--quiet", "--mirror", source.url, str(old)], check=True)
    mirror = Mirror(old, source.url)
    assert mirror.sync() == source.head()
    assert git(old, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/main"]
    assert git(old, "config", "--get-all", "remote.origin.fetch") == "+refs/heads/main:refs/heads/main"


def test_a_branch_the_remote_does_not_have_is_a_fetch_error_naming_it(tmp_path: Path, source: ConfigRepo) -> None:
    with pytest.raises(FetchError, match="it has no branch production"):
        Mirror(tmp_path / "m.git", source.url, branch="production").sync()


def test_unknown_commit_is_a_fetch_error_naming_it(mirror: Mirror) -> None:
    with pytest.raises(FetchError, match="commit 'deadbeef' does not exist"):
        mirror.resolve("deadbeef")
    with pytest.raises(FetchError, match="branch, tag or commit 'nope' does not exist"):
        mirror.resolve("nope")


def test_unreachable_repository_is_a_fetch_error(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.git", str(tmp_path / "missing"))
    with pytest.raises(FetchError, match="cannot fetch"):
        mirror.sync()


def test_sync_fetches_new_commits_and_forced_pushes(mirror: Mirror, source: ConfigRepo) -> None:
    first = source.head()
    source.write("stacks/web/compose.yaml", "services: {a: {image: x}}\n")
    second = source.commit("second")
    mirror.sync()
    assert mirror.resolve("main") == second
    git(source.path, "reset", "--hard", first)
    assert mirror.sync() == first
    assert mirror.resolve("main") == first
    assert mirror.has_commit(second)  # still in the mirror's objects: a stack may have deployed it
    assert mirror.not_ancestors([first, second], of=first) == (second,)


def test_changed_paths_come_from_git_including_both_sides_of_a_rename(mirror: Mirror, source: ConfigRepo) -> None:
    base = source.head()
    git(source.path, "mv", "stacks/web", "stacks/site")
    source.write("secrets/web.env", "x=1\n")
    target = source.commit("rename")
    mirror.sync()
    assert mirror.changed_paths(base, target) == {
        "stacks/web/compose.yaml",
        "stacks/site/compose.yaml",
        "secrets/web.env",
    }
    assert mirror.changed_paths(target, target) == frozenset()
    assert mirror.changed_paths("0" * 40, target) is None


def test_checkout_forces_the_exact_commit_and_keeps_untracked_data(
    mirror: Mirror, source: ConfigRepo, tmp_path: Path
) -> None:
    first = source.head()
    source.write("stacks/web/extra.conf", "v2\n")
    second = source.commit("second")
    mirror.sync()
    worktree = mirror.checkout(second, tmp_path / "work")
    (worktree / "stacks/web/compose.yaml").write_text("edited by hand\n")
    (worktree / "stacks/web/data").mkdir()
    (worktree / "stacks/web/data/db").write_text("container data\n")

    mirror.checkout(first, worktree)

    assert git(worktree, "rev-parse", "HEAD") == first
    assert (worktree / "stacks/web/compose.yaml").read_text() == "services: {}\n"
    assert not (worktree / "stacks/web/extra.conf").exists()
    assert (worktree / "stacks/web/data/db").read_text() == "container data\n"


def test_clean_checkout_is_exactly_the_commit(mirror: Mirror, source: ConfigRepo, tmp_path: Path) -> None:
    first = source.head()
    source.write("stacks/web/extra.conf", "v2\n")
    second = source.commit("second")
    mirror.sync()
    tree = mirror.clean_checkout(second, tmp_path / "plan")
    (tree / "stray.txt").write_text("left by someone\n")
    (tree / "README.md").write_text("edited\n")
    assert mirror.clean_checkout(first, tree) == tree
    assert git(tree, "rev-parse", "HEAD") == first
    assert not (tree / "stray.txt").exists()
    assert not (tree / "stacks/web/extra.conf").exists()
    assert (tree / "README.md").read_text() == "hello\n"


def test_files_lists_a_commits_tree(mirror: Mirror, source: ConfigRepo) -> None:
    assert mirror.files(source.head(), PurePosixPath("stacks")) == [PurePosixPath("stacks/web/compose.yaml")]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:token@git.example/org/repo.git", "https://***@git.example/org/repo.git"),
        ("https://git.example/org/repo.git", "https://git.example/org/repo.git"),
        ("ssh://git@git.example/org/repo.git", "ssh://***@git.example/org/repo.git"),
    ],
)
def test_credentials_never_reach_messages(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_worktree_of_a_deleted_mirror_is_linked_to_the_new_one_keeping_its_data(
    tmp_path: Path, source: ConfigRepo
) -> None:
    """An operator who deletes the mirror (a corrupt disk, a restored backup) gets every stack back as it was."""
    state = tmp_path / "state"
    mirror = Mirror(state / "mirror.git", source.url)
    first = mirror.sync()
    worktree = mirror.checkout(first, state / "stacks" / "web")
    (worktree / "data.db").write_text("kept\n")
    shutil.rmtree(state / "mirror.git")
    source.write("stacks/web/compose.yaml", "services: {b: {image: y}}\n")
    second = source.commit("second")

    fresh = Mirror(state / "mirror.git", source.url)
    assert fresh.sync() == second
    assert fresh.checkout(second, state / "stacks" / "web") == worktree
    assert git(worktree, "rev-parse", "HEAD") == second
    assert (worktree / "stacks/web/compose.yaml").read_text() == "services: {b: {image: y}}\n"
    assert (worktree / "data.db").read_text() == "kept\n"
    assert git(worktree, "status", "--porcelain") == "?? data.db"
    assert not list(state.joinpath("stacks").glob(".*relink"))

"""The git mirror against real repositories made with the git CLI."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from deployer.errors import FetchError
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
    mirror.sync()
    assert mirror.resolve("main") == head
    assert mirror.resolve("refs/heads/main") == head
    assert mirror.resolve("v1") == head
    assert mirror.resolve(head[:10]) == head


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
    mirror.sync()
    assert mirror.resolve("main") == first
    assert mirror.has_commit(second)  # still in the mirror's objects: a stack may have deployed it


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

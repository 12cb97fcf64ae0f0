"""The planner as tables: which paths affect a stack, how stacks are ordered, and what a commit deploys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath

import pytest

from deployer.errors import PlanError
from deployer.model import FIRST_DEPLOY, REQUESTED, Action, Catalog, Plan, Stack
from deployer.plan.diff import glob_regex, reasons_for
from deployer.plan.order import levels
from deployer.plan.planner import MAX_REASONS, make_plan

OLD = "a" * 40
GONE = "b" * 40
TARGET = "c" * 40


def stack(name: str, *depends_on: str, secrets: tuple[str, ...] = (), watch: tuple[str, ...] = ()) -> Stack:
    folder = PurePosixPath("stacks") / name
    return Stack(
        name=name,
        folder=folder,
        compose_file=folder / "compose.yaml",
        depends_on=depends_on,
        secrets=tuple(PurePosixPath(s) for s in secrets),
        watch=watch,
    )


def catalog(*stacks: Stack) -> Catalog:
    return Catalog(stacks={s.name: s for s in stacks})


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("shared/tls/**", "shared/tls/cert.pem", True),
        ("shared/tls/**", "shared/tls/a/b/cert.pem", True),
        ("shared/**/x.pem", "shared/x.pem", True),
        ("shared/**/x.pem", "shared/a/b/x.pem", True),
        ("**/*.pem", "deep/down/cert.pem", True),
        ("shared/*.pem", "shared/cert.pem", True),
        ("shared/?.pem", "shared/a.pem", True),
        ("shared", "shared/a/b/c.txt", True),
        ("shared", "shared", True),
        ("shared/a+b.txt", "shared/a+b.txt", True),
        # failures
        ("shared/tls/**", "shared/tlsx/cert.pem", False),
        ("shared/tls/**", "other/shared/tls/cert.pem", False),
        ("shared/*.pem", "shared/sub/cert.pem", False),
        ("shared/*.pem", "shared/cert.pem.bak", False),
        ("shared/?.pem", "shared/ab.pem", False),
        ("shared/?.pem", "shared//.pem", False),
        ("shared", "sharedx/file", False),
        ("shared", "other/shared/file", False),
        ("shared/a+b.txt", "shared/aab.txt", False),
        ("shared/*", "shared/a/b", False),
    ],
)
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


WEB = stack("web", secrets=("secrets/web.env",), watch=("shared/tls/**", "config/common"))


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (["stacks/web/compose.yaml"], ("stacks/web/compose.yaml",)),
        (["stacks/web/conf/nginx/site.conf"], ("stacks/web/conf/nginx/site.conf",)),
        (["secrets/web.env"], ("secrets/web.env",)),
        (["shared/tls/live/cert.pem"], ("shared/tls/live/cert.pem",)),
        (["config/common/a/b.yaml"], ("config/common/a/b.yaml",)),
        (["stacks/web/z", "secrets/web.env", "stacks/web/a"], ("secrets/web.env", "stacks/web/a", "stacks/web/z")),
        # failures
        (["stacks/webapp/compose.yaml"], ()),
        (["stacks/api/compose.yaml"], ()),
        (["secrets/api.env"], ()),
        (["secrets/web.env.bak"], ()),
        (["shared/other/cert.pem"], ()),
        (["config/commonx"], ()),
        (["README.md"], ()),
        ([], ()),
    ],
)
def test_reasons_for(changed: list[str], expected: tuple[str, ...]) -> None:
    assert reasons_for(WEB, changed) == expected


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({}, ()),
        ({"a": [], "b": []}, (("a", "b"),)),
        ({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}, (("a",), ("b", "c"), ("d",))),
        ({"c": ["b"], "b": ["a"], "a": []}, (("a",), ("b",), ("c",))),
        ({"a": [], "b": ["a"], "x": []}, (("a", "x"), ("b",))),
    ],
)
def test_levels(graph: Mapping[str, list[str]], expected: tuple[tuple[str, ...], ...]) -> None:
    assert levels(graph) == expected


@pytest.mark.parametrize(
    ("graph", "rotations"),
    [
        ({"a": ["b"], "b": ["a"]}, ["a -> b -> a", "b -> a -> b"]),
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}, ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]),
        ({"a": ["a"]}, ["a -> a"]),
    ],
)
def test_levels_names_the_cycle(graph: Mapping[str, list[str]], rotations: list[str]) -> None:
    with pytest.raises(PlanError) as caught:
        levels(graph)
    cycle = caught.value.message.removeprefix("dependency cycle: ")
    assert cycle in rotations, caught.value.message


# make_plan ---------------------------------------------------------------------------------------------------

DB = stack("db")
API = stack("api", "db", secrets=("secrets/api.env",), watch=("shared/tls/**",))
FRONT = stack("front", "api")
OTHER = stack("other")
FULL = catalog(DB, API, FRONT, OTHER)
ALL_AT_OLD = {name: OLD for name in FULL}


def summary(plan: Plan) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {s.name: (s.action.value, s.reasons) for s in plan.stacks}


def test_first_deploy_lists_every_stack_in_dependency_order() -> None:
    plan = make_plan(FULL, target=TARGET, deployed={}, changes={})
    assert summary(plan) == {n: ("deploy", (FIRST_DEPLOY,)) for n in ("api", "db", "front", "other")}
    assert plan.order == (("db", "other"), ("api",), ("front",))
    assert plan.get("front").depends_on == ("api",)
    assert plan.target == TARGET
    assert plan.base is None


@pytest.mark.parametrize(
    ("changed", "affected"),
    [
        ({"stacks/api/compose.yaml"}, {"api": ("stacks/api/compose.yaml",)}),
        ({"stacks/api/conf/app.ini"}, {"api": ("stacks/api/conf/app.ini",)}),
        ({"secrets/api.env"}, {"api": ("secrets/api.env",)}),
        ({"shared/tls/cert.pem"}, {"api": ("shared/tls/cert.pem",)}),
        ({"stacks/db/compose.yaml", "README.md"}, {"db": ("stacks/db/compose.yaml",)}),
        (
            {"stacks/db/compose.yaml", "stacks/front/compose.yaml"},
            {"db": ("stacks/db/compose.yaml",), "front": ("stacks/front/compose.yaml",)},
        ),
        # failures: nothing relevant changed, so nothing is listed
        ({"README.md", "secrets/other.env", "shared/tlsx/a"}, {}),
        (set(), {}),
    ],
)
def test_only_affected_stacks_are_listed(changed: set[str], affected: dict[str, tuple[str, ...]]) -> None:
    plan = make_plan(FULL, target=TARGET, deployed=ALL_AT_OLD, changes={OLD: frozenset(changed)}, base=OLD)
    assert summary(plan) == {name: ("deploy", why) for name, why in affected.items()}
    assert plan.is_empty is not affected


def test_order_respects_depends_on_only_within_the_plan() -> None:
    changed = frozenset({"stacks/db/compose.yaml", "stacks/front/compose.yaml", "stacks/other/compose.yaml"})
    plan = make_plan(FULL, target=TARGET, deployed=ALL_AT_OLD, changes={OLD: changed})
    # front depends on api, which is unchanged and so not in the plan: front need not wait for db
    assert plan.order == (("db", "front", "other"),)
    assert plan.get("front").depends_on == ()


def test_a_vanished_base_commit_redeploys_its_stacks() -> None:
    deployed = {"db": OLD, "api": GONE, "front": OLD, "other": GONE}
    plan = make_plan(FULL, target=TARGET, deployed=deployed, changes={OLD: frozenset(), GONE: None})
    assert set(summary(plan)) == {"api", "other"}
    assert plan.get("api").reasons == (f"previous commit {GONE[:12]} is not in the repository",)
    assert plan.get("api").depends_on == ()


def test_a_commit_missing_from_changes_counts_as_vanished() -> None:
    plan = make_plan(catalog(DB), target=TARGET, deployed={"db": GONE}, changes={})
    assert plan.get("db").reasons == (f"previous commit {GONE[:12]} is not in the repository",)


@pytest.mark.parametrize(
    ("requested", "deployed", "expected"),
    [
        (["other"], ALL_AT_OLD, {"other": ("deploy", (REQUESTED,))}),
        (["front"], {"db": OLD, "front": OLD}, {"front": ("deploy", (REQUESTED,)), "api": ("deploy", (FIRST_DEPLOY,))}),
        (
            ["front"],
            {},
            {n: ("deploy", (FIRST_DEPLOY,)) for n in ("front", "api", "db")},
        ),
        (["api"], {"api": OLD, "db": OLD}, {"api": ("deploy", ("stacks/api/x",))}),
        (["db", "other"], ALL_AT_OLD, {"db": ("deploy", (REQUESTED,)), "other": ("deploy", (REQUESTED,))}),
    ],
)
def test_requested_stacks(
    requested: list[str], deployed: dict[str, str], expected: dict[str, tuple[str, tuple[str, ...]]]
) -> None:
    changes = {OLD: frozenset({"stacks/api/x"})}
    # "gone" is deployed but no longer in the catalog: a requested deploy never removes anything
    plan = make_plan(FULL, target=TARGET, deployed={**deployed, "gone": OLD}, changes=changes, requested=requested)
    assert summary(plan) == expected


def test_requested_dependencies_order_the_plan() -> None:
    plan = make_plan(FULL, target=TARGET, deployed={}, changes={}, requested=["front"])
    assert plan.order == (("db",), ("api",), ("front",))


@pytest.mark.parametrize("requested", [["nope"], ["db", "nope"], ["Web"]])
def test_unknown_requested_stack(requested: list[str]) -> None:
    with pytest.raises(PlanError, match=re.escape(f"no such stack: {requested[-1]}")) as caught:
        make_plan(FULL, target=TARGET, deployed={}, changes={}, requested=requested)
    assert "api, db, front, other" in caught.value.message


@pytest.mark.parametrize(
    ("prune", "action", "order"),
    [
        (False, Action.ORPHANED, (("api",),)),
        (True, Action.REMOVE, (("old1", "old2"), ("api",))),
    ],
)
def test_removed_stacks(prune: bool, action: Action, order: tuple[tuple[str, ...], ...]) -> None:
    deployed = {**ALL_AT_OLD, "old2": OLD, "old1": OLD}
    changes = {OLD: frozenset({"stacks/api/compose.yaml", "stacks/old1/compose.yaml"})}
    plan = make_plan(FULL, target=TARGET, deployed=deployed, changes=changes, prune=prune)
    assert [(s.name, s.action) for s in plan.stacks] == [("old1", action), ("old2", action), ("api", Action.DEPLOY)]
    assert plan.get("old1").reasons == ("folder deleted",)
    assert plan.order == order
    assert [s.name for s in plan.runnable] == (["api"] if not prune else ["old1", "old2", "api"])


def test_only_orphans_make_an_empty_plan() -> None:
    plan = make_plan(catalog(DB), target=TARGET, deployed={"db": OLD, "old": OLD}, changes={OLD: frozenset()})
    assert [s.name for s in plan.stacks] == ["old"]
    assert plan.is_empty
    assert plan.order == ()


@pytest.mark.parametrize(
    ("count", "tail"), [(1, None), (20, None), (21, "... and 1 more paths"), (57, "... and 37 more paths")]
)
def test_reasons_are_capped(count: int, tail: str | None) -> None:
    changed = frozenset(f"stacks/db/file{i:03}" for i in range(count))
    plan = make_plan(catalog(DB), target=TARGET, deployed={"db": OLD}, changes={OLD: changed})
    reasons = plan.get("db").reasons
    assert MAX_REASONS == 20
    assert reasons[:20] == tuple(sorted(changed))[:20]
    assert reasons[20:] == (() if tail is None else (tail,))


def test_excluded_stacks_are_left_as_they_are_unless_requested() -> None:
    """A stack a person holds at another commit: the poll neither redeploys nor removes it."""
    deployed = {"db": GONE, "api": OLD, "gone": OLD}
    plan = make_plan(FULL, target=TARGET, deployed=deployed, changes={OLD: frozenset(), GONE: None},
                     exclude=["db", "gone"], prune=True)  # fmt: skip
    assert set(summary(plan)) == {"front", "other"}
    requested = make_plan(FULL, target=TARGET, deployed=deployed, changes={}, requested=["db"], exclude=["db"])
    assert set(summary(requested)) == {"db"}

"""Properties of make_plan over random catalogs, deployed maps and diffs, so that the planner's promises hold for
every input and not only for the tables in test_plan.py: a pure function; an order that is a partition of the
runnable stacks and respects depends_on; exactly the affected stacks (unaffected ones are never touched); gone
stacks removed or orphaned; requested stacks with their never-deployed dependencies; rewind reasons where due.

Expectations are computed here from the rules as documented (folder prefix, secret equality, simple watch globs),
not with the planner's own helpers, so a property failing means the planner and its contract disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.model import FIRST_DEPLOY, REQUESTED, Action, Catalog, Plan, Stack
from deployer.plan.planner import MAX_REASONS, make_plan
from tests.unit.test_plan import stack as catalog_stack

TARGET = "c" * 40
#: ^[a-z0-9][a-z0-9_-]{0,62}$, the catalog's rule for a stack name
NAMES = st.builds(
    str.__add__,
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", max_size=62),
)
#: a few names drawn often, so that names which prefix one another (`a`, `a-b`, `ab`) meet in one catalog
SHORT_NAMES = st.sampled_from(["a", "ab", "a-b", "a_b", "b", "db", "api", "web", "0", "9z"])
#: deployed commits; two share the first 12 characters, all that reasons show of a commit
BASES = ["1" * 40, "2" * 40, "1" * 39 + "2", "4" * 12 + "5" * 28]
SECRETS = [f"secrets/{n}.env" for n in ("a", "ab", "db", "shared")]
#: watch globs whose matching is simple to state: `dir/**` is "below dir", a literal is "it or below it"
WATCH = ["shared/tls/**", "shared", "config/common", "shared/x.pem"]
OTHER_PATHS = ["README.md", "shared/tls/cert.pem", "shared/tlsx/a", "shared/x.pem", "shared/x.pem.bak", "sharedx",
               "config/common", "config/common/a/b.yaml", "config/commonx", "secrets/a.env.bak", "stacks"]  # fmt: skip

REWOUND = "history rewound from "

SETTINGS = settings(max_examples=75, deadline=None)


@dataclass(frozen=True)
class Inputs:
    """One call of make_plan: what the planner is given."""

    catalog: Catalog
    deployed: dict[str, str]
    changes: dict[str, frozenset[str] | None]
    requested: tuple[str, ...]
    prune: bool
    rewound_from: tuple[str, ...]

    def plan(self) -> Plan:
        return make_plan(
            self.catalog,
            target=TARGET,
            deployed=self.deployed,
            changes=self.changes,
            requested=self.requested,
            prune=self.prune,
            rewound_from=self.rewound_from,
        )

    @property
    def gone(self) -> set[str]:
        return set(self.deployed) - set(self.catalog.stacks)


def subset(draw: st.DrawFn, items: list[str], label: str | None = None) -> list[str]:
    """Some of `items`, in their order, from one drawn bit mask (one draw keeps generation cheap)."""
    mask = draw(st.integers(min_value=0, max_value=2 ** len(items) - 1), label=label)
    return [item for bit, item in enumerate(items) if mask >> bit & 1]


@st.composite
def inputs(draw: st.DrawFn, requesting: bool | None = None) -> Inputs:
    """A catalog of 1-12 stacks with acyclic depends_on (only on stacks drawn earlier), a deployed map over some
    of them and some stacks gone from the catalog, diffs per deployed commit (None or absent: vanished), a rewound
    subset of those commits, prune, and requested stacks (`requesting` forces them present or absent)."""
    names = draw(st.lists(SHORT_NAMES | NAMES, min_size=1, max_size=12, unique=True), label="names")
    stacks = [
        catalog_stack(
            name, *subset(draw, names[:index]), secrets=tuple(subset(draw, SECRETS)), watch=tuple(subset(draw, WATCH))
        )
        for index, name in enumerate(names)
    ]
    catalog = Catalog(stacks={s.name: s for s in stacks})

    gone = draw(st.lists((SHORT_NAMES | NAMES).filter(lambda n: n not in catalog), unique=True, max_size=3))
    bases = subset(draw, BASES) or BASES[:1]
    on_catalog = names if draw(st.booleans()) else subset(draw, names, "deployed")  # often all: diffs decide
    deployed = {name: draw(st.sampled_from(bases)) for name in [*on_catalog, *gone]}

    folders = [*names, *gone, "a", "abc"]
    paths = st.sampled_from(SECRETS + OTHER_PATHS) | st.builds(
        lambda name, leaf: f"stacks/{name}{leaf}",
        st.sampled_from(folders),
        st.sampled_from(["/compose.yaml", "/conf/app.ini", "/.env", "", "x/compose.yaml", "-old/compose.yaml"]),
    )
    changes: dict[str, frozenset[str] | None] = {}
    for base in bases:
        kind = draw(st.sampled_from(["paths", "paths", "paths", "many", "vanished", "absent"]))
        if kind == "paths":
            changes[base] = frozenset(draw(st.lists(paths, max_size=6)))
        elif kind == "many":  # more paths in one folder than a stack's reasons list
            changed = draw(st.sampled_from(on_catalog or folders))
            count = draw(st.integers(min_value=MAX_REASONS - 1, max_value=MAX_REASONS + 15))
            changes[base] = frozenset(f"stacks/{changed}/file{i:03}" for i in range(count))
        elif kind == "vanished":
            changes[base] = None
    rewound = subset(draw, [*bases, "d" * 40], "rewound_from") * draw(st.integers(min_value=1, max_value=2))

    if requesting is None:
        requesting = draw(st.booleans())
    requested = tuple(subset(draw, names, "requested") or names[-1:]) if requesting else ()
    return Inputs(catalog, deployed, changes, requested, draw(st.booleans()), tuple(rewound))


def affecting(stack: Stack, changed: frozenset[str]) -> list[str]:
    """The changed paths that affect `stack`, by the documented rules, for the globs WATCH uses."""

    def watched(path: str, pattern: str) -> bool:
        if pattern.endswith("/**"):
            return path.startswith(pattern[:-2])
        return path == pattern or path.startswith(pattern + "/")

    folder = f"stacks/{stack.name}/"
    secrets = {str(s) for s in stack.secrets}
    return sorted(p for p in changed if p.startswith(folder) or p in secrets or any(watched(p, w) for w in stack.watch))


def expected_reasons(given: Inputs, name: str) -> tuple[str, ...]:
    """Why `name` deploys without `requested`, before the rewind note and the cap; empty when it does not."""
    if name not in given.deployed:
        return (FIRST_DEPLOY,)
    base = given.deployed[name]
    changed = given.changes.get(base)
    if changed is None:
        return (f"previous commit {base[:12]} is not in the repository",)
    return tuple(affecting(given.catalog[name], changed))


def with_undeployed_dependencies(given: Inputs) -> set[str]:
    """The smallest set holding the requested stacks and every never-deployed dependency of a member."""
    chosen = set(given.requested)
    while True:
        more = {d for n in chosen for d in given.catalog[n].depends_on if d not in given.deployed} - chosen
        if not more:
            return chosen
        chosen |= more


def listed(given: Inputs, name: str, own: tuple[str, ...]) -> tuple[str, ...]:
    """`own` reasons as the plan lists them: the rewind note first when due, then capped as a whole."""
    base = given.deployed.get(name)
    note = (REWOUND + base[:12],) if own and base is not None and base in given.rewound_from else ()
    reasons = (*note, *own)
    if len(reasons) <= MAX_REASONS:
        return reasons
    return (*reasons[:MAX_REASONS], f"... and {len(reasons) - MAX_REASONS} more paths")


def deploys(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {s.name: s.reasons for s in plan.stacks if s.action is Action.DEPLOY}


def level_of(plan: Plan) -> Mapping[str, int]:
    return {name: index for index, level in enumerate(plan.order) for name in level}


@SETTINGS
@given(given=inputs())
def test_the_plan_is_a_pure_function(given: Inputs) -> None:
    """The same inputs give an equal plan, whatever the mappings' insertion order, and the inputs are not changed:
    planning twice (the dry run, then the deployment) must decide the same thing."""
    before = (dict(given.deployed), dict(given.changes), given.requested, given.rewound_from)
    first = given.plan()
    shuffled = Inputs(
        Catalog(stacks=dict(reversed(given.catalog.stacks.items()))),
        dict(reversed(given.deployed.items())),
        dict(reversed(given.changes.items())),
        tuple(reversed(given.requested)),
        given.prune,
        tuple(reversed(given.rewound_from)),
    )
    assert first == given.plan() == shuffled.plan()
    assert (given.deployed, given.changes, given.requested, given.rewound_from) == before


@SETTINGS
@given(given=inputs())
def test_order_is_a_partition_of_the_runnable_stacks(given: Inputs) -> None:
    """Each runnable stack is in exactly one level, removals first when pruning; orphans are only reported, so
    they are in no level; and no stack is listed twice."""
    plan = given.plan()
    names = [s.name for s in plan.stacks]
    assert len(names) == len(set(names))
    ordered = [name for level in plan.order for name in level]
    assert len(ordered) == len(set(ordered))
    assert set(ordered) == {s.name for s in plan.runnable}
    assert all(level for level in plan.order)
    assert not {s.name for s in plan.stacks if s.action is Action.ORPHANED} & set(ordered)
    removed = {s.name for s in plan.stacks if s.action is Action.REMOVE}
    if removed:
        assert plan.order[0] == tuple(sorted(removed))
    assert set(deploys(plan)) == set(ordered) - removed


@SETTINGS
@given(given=inputs())
def test_every_dependency_in_the_plan_deploys_in_an_earlier_level(given: Inputs) -> None:
    """A stack starts only after the dependencies that deploy with it; dependencies outside the plan are assumed
    deployed and neither wait nor appear in its depends_on."""
    plan = given.plan()
    level = level_of(plan)
    planned = deploys(plan)
    for stack in plan.stacks:
        if stack.action is not Action.DEPLOY:
            continue
        declared = given.catalog[stack.name].depends_on
        assert stack.depends_on == tuple(d for d in declared if d in planned)
        assert all(level[d] < level[stack.name] for d in stack.depends_on)


@SETTINGS
@given(given=inputs(requesting=False))
def test_without_requested_exactly_the_affected_stacks_deploy(given: Inputs) -> None:
    """A catalog stack deploys iff it was never deployed, its base vanished, or a changed path is in its folder, is
    one of its secret files or matches a watch glob; its reasons say which, sorted and capped."""
    plan = given.plan()
    expected = {name: expected_reasons(given, name) for name in given.catalog}
    assert set(deploys(plan)) == {name for name, why in expected.items() if why}
    for name, why in deploys(plan).items():
        assert why == listed(given, name, expected[name])


@SETTINGS
@given(given=inputs())
def test_an_unaffected_stack_is_never_listed(given: Inputs) -> None:
    """The contract: stacks unaffected by a change are not touched. Every listed stack has a cause: it is affected,
    requested, a never-deployed dependency of a requested stack, or gone from the catalog."""
    plan = given.plan()
    chosen = with_undeployed_dependencies(given) if given.requested else set()
    for stack in plan.stacks:
        affected = stack.name in given.catalog and bool(expected_reasons(given, stack.name))
        assert affected or stack.name in chosen or stack.name in given.gone, stack


@SETTINGS
@given(given=inputs())
def test_gone_stacks_are_removed_with_prune_orphaned_without_and_untouched_on_request(given: Inputs) -> None:
    """A deployed stack whose folder is gone is removed only when pruning, reported as orphaned otherwise, and a
    requested deployment never removes or reports anything beyond what was asked."""
    plan = given.plan()
    listed = {s.name: s for s in plan.stacks if s.action is not Action.DEPLOY}
    if given.requested:
        assert not listed
        return
    assert set(listed) == given.gone
    action = Action.REMOVE if given.prune else Action.ORPHANED
    assert all(s.action is action and s.reasons == ("folder deleted",) for s in listed.values())
    assert [s.name for s in plan.stacks[: len(listed)]] == sorted(given.gone)


@SETTINGS
@given(given=inputs(requesting=True))
def test_requested_deploys_exactly_those_and_their_never_deployed_dependencies(given: Inputs) -> None:
    """On request exactly the requested stacks deploy, even unchanged, plus the dependencies they need that were
    never deployed (transitively); nothing is removed. An unchanged requested stack says `requested`."""
    plan = given.plan()
    chosen = with_undeployed_dependencies(given)
    assert {s.name for s in plan.stacks} == set(deploys(plan)) == chosen
    for name, why in deploys(plan).items():
        own = expected_reasons(given, name)
        assert why == (listed(given, name, own) if own else (REQUESTED,))


@SETTINGS
@given(given=inputs())
def test_rewound_reason_leads_exactly_the_rewound_planned_stacks(given: Inputs) -> None:
    """A stack deployed from a commit the target no longer contains plans against it and says so first; no other
    stack says so; the plan lists the rewound commits once each, sorted."""
    plan = given.plan()
    rewound = set(given.rewound_from)
    assert plan.rewound_from == tuple(sorted(rewound))
    for name, why in deploys(plan).items():
        base = given.deployed.get(name)
        notes = [r for r in why if r.startswith(REWOUND)]
        if base in rewound and expected_reasons(given, name):
            assert why[0] == f"history rewound from {base[:12]}"
            assert len(notes) == 1
        else:
            assert not notes, (name, why)


@SETTINGS
@given(given=inputs())
def test_reasons_are_capped(given: Inputs) -> None:
    """A stack's reasons stay short enough for a log line and a status: at most MAX_REASONS of them (the rewind
    note counts as one) and a count of the rest."""
    for stack in given.plan().stacks:
        assert 1 <= len(stack.reasons) <= MAX_REASONS + 1
        if len(stack.reasons) == MAX_REASONS + 1:
            assert stack.reasons[-1].startswith("... and ")

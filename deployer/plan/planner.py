"""make_plan: from a catalog, what is deployed and what changed, to an ordered Plan. Pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from deployer.errors import PlanError
from deployer.model import FIRST_DEPLOY, REQUESTED, Action, Catalog, Plan, PlannedStack, StackName
from deployer.plan.diff import reasons_for
from deployer.plan.order import levels

__all__ = ["make_plan"]

#: a stack's reasons list at most this many paths; the rest are counted
MAX_REASONS = 20


def make_plan(
    catalog: Catalog,
    *,
    target: str,
    deployed: Mapping[StackName, str],
    changes: Mapping[str, frozenset[str] | None],
    requested: Collection[StackName] = (),
    prune: bool = False,
    base: str | None = None,
    rewound_from: Collection[str] = (),
    exclude: Collection[StackName] = (),
) -> Plan:
    """Decide which stacks `target` deploys, removes or reports as orphaned, and in what order.

    `deployed` maps each stack known to be deployed to the commit it last deployed successfully;
    `changes` maps each of those commits to the paths changed between it and `target` (None when
    the commit is no longer in the repository). Stacks not in `deployed` are first deploys.

    With `requested`, exactly those stacks deploy (even if unchanged), plus any of their
    dependencies that were never deployed; nothing is removed. Without it, the affected stacks
    deploy and stacks deployed but gone from the catalog are removed (`prune`) or orphaned.

    `rewound_from` names deployed commits that `target` does not contain (a force-push or reset):
    a stack deployed from one of them still plans against it, and says so first among its reasons.

    `exclude` names stacks left as they are (held by a person at another commit): never planned,
    never removed, unless `requested` names them.

    Raises PlanError for a requested stack that is not in the catalog.
    """
    unknown = sorted(set(requested) - set(catalog.stacks))
    if unknown:
        raise PlanError(f"no such stack: {', '.join(unknown)} (known: {', '.join(catalog) or 'none'})")
    rewound = frozenset(rewound_from)
    reasons = {name: _rewound(name, deployed, rewound, _reasons(name, catalog, deployed, changes)) for name in catalog}
    if requested:
        chosen = _with_undeployed_dependencies(catalog, requested, deployed)
        selected = {n: reasons[n] or ((REQUESTED,) if n in requested else (FIRST_DEPLOY,)) for n in chosen}
    else:
        selected = {name: why for name, why in reasons.items() if why and name not in exclude}
    gone = [] if requested else sorted(set(deployed) - set(catalog.stacks) - set(exclude))
    gone_action = Action.REMOVE if prune else Action.ORPHANED

    deploys = [
        PlannedStack(
            name=name,
            action=Action.DEPLOY,
            reasons=_capped(why),
            depends_on=tuple(d for d in catalog[name].depends_on if d in selected),
        )
        for name, why in sorted(selected.items())
    ]
    removals = [PlannedStack(name=n, action=gone_action, reasons=("folder deleted",)) for n in gone]
    order = levels({s.name: s.depends_on for s in deploys})
    if prune and gone:
        order = (tuple(gone), *order)
    return Plan(
        target=target, base=base, stacks=(*removals, *deploys), order=order, rewound_from=tuple(sorted(rewound))
    )


def _rewound(
    name: StackName, deployed: Mapping[StackName, str], rewound: frozenset[str], reasons: tuple[str, ...]
) -> tuple[str, ...]:
    if not reasons or deployed.get(name) not in rewound:
        return reasons
    return (f"history rewound from {deployed[name][:12]}", *reasons)


def _reasons(
    name: StackName,
    catalog: Catalog,
    deployed: Mapping[StackName, str],
    changes: Mapping[str, frozenset[str] | None],
) -> tuple[str, ...]:
    if name not in deployed:
        return (FIRST_DEPLOY,)
    previous = deployed[name]
    changed = changes.get(previous)
    if changed is None:
        return (f"previous commit {previous[:12]} is not in the repository",)
    return reasons_for(catalog[name], changed)


def _with_undeployed_dependencies(
    catalog: Catalog, requested: Collection[StackName], deployed: Mapping[StackName, str]
) -> set[StackName]:
    chosen: set[StackName] = set()
    todo = list(requested)
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        chosen.add(name)
        todo.extend(d for d in catalog[name].depends_on if d not in deployed)
    return chosen


def _capped(reasons: tuple[str, ...]) -> tuple[str, ...]:
    if len(reasons) <= MAX_REASONS:
        return reasons
    return (*reasons[:MAX_REASONS], f"... and {len(reasons) - MAX_REASONS} more paths")

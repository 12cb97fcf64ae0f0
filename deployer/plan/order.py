"""The order in which planned stacks deploy.

The dependency policy, as a checklist:
- a stack deploys after every stack it `depends_on` that is in the same plan;
- dependencies outside the plan are unchanged and assumed deployed already;
- stacks with no path between them may deploy at the same time;
- a cycle is refused by the catalog before any plan is made (and named there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from graphlib import CycleError, TopologicalSorter

from deployer.errors import PlanError
from deployer.model import StackName

__all__ = ["levels"]


def levels(graph: Mapping[StackName, Iterable[StackName]]) -> tuple[tuple[StackName, ...], ...]:
    """Group `graph` (name -> dependencies) into levels; each level depends only on earlier ones.

    Raises PlanError naming the cycle when there is one.
    """
    sorter: TopologicalSorter[StackName] = TopologicalSorter({k: set(v) for k, v in graph.items()})
    try:
        sorter.prepare()
    except CycleError as error:
        raise PlanError("dependency cycle: " + " -> ".join(reversed(error.args[1]))) from error
    result = []
    while sorter.is_active():
        ready = tuple(sorted(sorter.get_ready()))
        result.append(ready)
        sorter.done(*ready)
    return tuple(result)

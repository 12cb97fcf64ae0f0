"""The plan preview of a pull request's head: fetch -> plan -> validate -> report, never apply.

The head is fetched from the ref the forge exposes for it (a fork's too), checked out in a planning
tree of its own and loaded; the plan is made against what is deployed now (each stack's last good
commit, held and paused stacks left out, as a push would); then every stack it would deploy is
validated as a deployment validates it (`docker compose config`, the host policy) with placeholder
secrets: nothing is decrypted, nothing is started. What it finds is told twice, through `tell`:
once planned (a pending status, the comment with the plan), once validated (the verdict).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from deployer.errors import DeployerError
from deployer.model import Action, Catalog
from deployer.pipeline.queries import check_stack, plan_from_deployed
from deployer.pipeline.wiring import Deps
from deployer.plan import load_catalog
from deployer.report.preview import PreviewFindings

__all__ = ["preview"]

#: compose may fetch `include:` from git or OCI registries: never for a pull request's files
NO_REMOTE_INCLUDES = {"COMPOSE_EXPERIMENTAL_GIT_REMOTE": "false", "COMPOSE_EXPERIMENTAL_OCI_REMOTE": "false"}

Tell = Callable[[PreviewFindings], None]


def preview(
    deps: Deps,
    *,
    number: int,
    head: str,
    head_ref: str,
    from_fork: bool,
    tell: Tell,
    still_wanted: Callable[[], bool] = lambda: True,
) -> PreviewFindings:
    """Preview pull request `number` at commit `head`; return what was found (also told when final)."""
    settings = deps.settings
    found = PreviewFindings(number=number, head=head, from_fork=from_fork, branch=settings.branch)
    mirror = deps.mirror(str(settings.repo_url))
    try:
        fetched = mirror.fetch_preview(head_ref)
        if fetched != head and not mirror.has_commit(head):
            raise DeployerError(f"{head[:12]} is no longer {head_ref} (pushed over since): the next push is previewed")
        tree = mirror.clean_checkout(head, deps.checkouts / "preview")
    except DeployerError as error:
        return _final(tell, replace(found, error=error.message, done=True))
    try:
        catalog = load_catalog(tree, stacks_dir=settings.stacks_dir, allow_placeholders=True)
        plan = plan_from_deployed(deps, mirror, catalog, target=head, rewinds=False)
    except DeployerError as error:
        return _final(tell, replace(found, problems=(error.message, *error.details), done=True))
    deploying = [s.name for s in plan.stacks if s.action is Action.DEPLOY]
    found = replace(
        found, plan=plan, to_check=len(deploying),
        secrets={name: tuple(str(p) for p in catalog[name].secrets) for name in deploying if catalog[name].secrets},
    )  # fmt: skip
    tell(found)
    if not still_wanted():
        return found
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="preview") as pool:
        for result in pool.map(lambda name: _validate(deps, catalog, name, tree), deploying):
            problems += result
    return _final(tell, replace(found, problems=tuple(problems), checked=len(deploying), done=True))


def _validate(deps: Deps, catalog: Catalog, name: str, tree: Path) -> list[str]:
    """The problems of one stack as a deployment would find them before starting it; [] when valid."""
    try:
        check_stack(deps, catalog[name], tree, env=NO_REMOTE_INCLUDES)
    except DeployerError as error:
        return [error.message, *error.details]
    return []


def _final(tell: Tell, found: PreviewFindings) -> PreviewFindings:
    tell(found)
    return found

"""Bringing a stack that failed at `up` or its health wait back to its last good commit.

Everything comes from that commit: its compose file and catalog, its secrets (decrypted again, in
memory) and the image each service ran then (recorded by id when it succeeded, so a tag moved since
does not roll "back" to a new image). A first deploy has nothing to go back to: the stack is left as
compose left it, and the error says so. A rollback that fails too is said, and never rolled back.
"""

from __future__ import annotations

import logging
from typing import NoReturn

from deployer.apply import decrypt_files, refuse_host_access
from deployer.errors import ComposeError, DeployerError, RolledBackError, SwarmRolledBackError
from deployer.fetch import Mirror
from deployer.pipeline.record import Recorder
from deployer.pipeline.wiring import Deps
from deployer.plan import load_catalog

__all__ = ["roll_back"]

log = logging.getLogger(__name__)


def roll_back(deps: Deps, record: Recorder, mirror: Mirror, name: str, error: ComposeError, *,
              good: str | None) -> NoReturn:  # fmt: skip
    """Raise RolledBackError once `name` runs its last good commit `good` again, or `error` saying why not."""
    if isinstance(error, SwarmRolledBackError):  # Swarm's own rollback ran: its services are on their previous spec
        raise RolledBackError(f"{error.message} (the spec of {good[:12]})" if good else error.message, cause=error,
                              commit=good or "")  # fmt: skip
    if not deps.settings.rollback:
        raise error
    if good is None:
        raise _again(error, f"{error.message}; first deploy: nothing to roll back to (left as compose left it)")
    if deps.backend.ping(deps.backend.placement(name)) is not None:  # the engine went away: retried later
        raise error
    log.warning("stack %s failed (%s); rolling back to %s", name, error.message, good[:12])
    try:
        tree = mirror.clean_checkout(good, deps.checkouts / f"rollback-{name}")
        catalog = load_catalog(tree, stacks_dir=deps.settings.stacks_dir)
        if name not in catalog:
            raise ComposeError(f"stack {name} is not in the catalog of {good[:12]}")
        stack = catalog[name]
        env = decrypt_files(stack.secrets, repo_root=tree, runner=deps.runner, env=deps.settings.sops_env)
        if stack.secrets:
            record.secrets_decrypted(commit=good, stack=name, files=[str(p) for p in stack.secrets])
        workdir = mirror.checkout(good, deps.settings.state_dir / "stacks" / name)
        config = deps.backend.check(stack, workdir=workdir, env=env)  # today's host policy holds for old commits
        refuse_host_access(stack, config, workdir=workdir, policy=deps.settings.host_policy, secrets=env)
        del config
        deps.backend.up(stack, workdir=workdir, env=env, images=deps.store.images(name) or None)
    except DeployerError as failed:
        log.error("stack %s: rollback to %s failed: %s", name, good[:12], failed.message)
        raise _again(error, f"{error.message}; rollback to {good[:12]} failed too: {failed.message}") from failed
    raise RolledBackError(f"{error.message}; rolled back to {good[:12]}", cause=error, commit=good)


def _again(error: ComposeError, message: str) -> ComposeError:
    """`error` (a ComposeError or HealthCheckError) with more said, its output kept."""
    return type(error)(message, output=error.output)

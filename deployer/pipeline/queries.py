"""What the CLI and the deploy worker ask of the repository without deploying anything."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from deployer.apply import decrypt_files, refuse_host_access
from deployer.errors import DeployerError, KnownSecretError, SecretError
from deployer.fetch import Mirror
from deployer.lock import plan_lock
from deployer.model import Catalog, Plan, Stack
from deployer.pipeline.wiring import Deps
from deployer.plan import load_catalog, make_plan, stack_names_in
from deployer.secret_policy import EXAMPLE_IDENTITY, EXAMPLE_RECIPIENT, exempt
from deployer.sopsfile import read_sops_file

__all__ = ["PLACEHOLDER", "branch_head", "check_stack", "converged", "plan_against_deployed", "plan_between",
           "plan_from_deployed", "validate_tree"]  # fmt: skip

#: the value each secret key gets when validating without decrypting
PLACEHOLDER = "1"


def branch_head(deps: Deps, *, repo_url: str) -> str:
    """Fetch the deploying branch and return its head commit. Raises FetchError."""
    return deps.mirror(repo_url).sync()


def plan_between(deps: Deps, *, repo_url: str, base: str | None, target_ref: str) -> Plan:
    """The plan from commit `base` (None: every stack is a first deploy) to `target_ref`.

    Raises FetchError, CatalogError or PlanError.
    """
    mirror = deps.mirror(repo_url)
    mirror.sync()
    target = mirror.resolve(target_ref)
    base_sha = mirror.resolve(base) if base else None
    stacks_dir = deps.settings.stacks_dir
    with plan_lock(deps.settings.state_dir):
        tree = mirror.clean_checkout(target, deps.checkouts / "plan")
        catalog = load_catalog(tree, stacks_dir=stacks_dir, allow_placeholders=True)
    previous = stack_names_in(mirror.files(base_sha, stacks_dir), stacks_dir=stacks_dir) if base_sha else ()
    deployed = {name: base_sha for name in previous if base_sha}
    changes = {base_sha: mirror.changed_paths(base_sha, target)} if base_sha else {}
    return make_plan(catalog, target=target, deployed=deployed, changes=changes, base=base_sha,
                     prune=deps.settings.prune, rewound_from=mirror.not_ancestors(changes, of=target))  # fmt: skip


def plan_against_deployed(deps: Deps, *, repo_url: str, target_ref: str | None = None, fetch: bool = True) -> Plan:
    """The plan from what is deployed now (each stack's last good commit) to `target_ref` (the branch head).

    Raises FetchError, CatalogError or PlanError.
    """
    mirror = deps.mirror(repo_url)
    head = mirror.sync() if fetch else mirror.resolve(mirror.branch_ref)
    target = mirror.resolve(target_ref) if target_ref else head
    with plan_lock(deps.settings.state_dir):
        catalog = load_catalog(mirror.clean_checkout(target, deps.checkouts / "plan"),
                               stacks_dir=deps.settings.stacks_dir, allow_placeholders=True)  # fmt: skip
    return plan_from_deployed(deps, mirror, catalog, target=target)


def plan_from_deployed(deps: Deps, mirror: Mirror, catalog: Catalog, *, target: str, rewinds: bool = True) -> Plan:
    """`catalog` (the tree of `target`) planned from each stack's last good commit, held and paused stacks left
    out; `rewinds`: say which deployed commits `target` does not contain (a pull request's head need not)."""
    store = deps.store
    deployed = store.last_good()
    bases = set(deployed.values())
    changes = {base: mirror.changed_paths(base, target) for base in bases}
    return make_plan(catalog, target=target, deployed=deployed, changes=changes, prune=deps.settings.prune,
                     rewound_from=mirror.not_ancestors(bases, of=target) if rewinds else (),
                     exclude=(*store.held(), *store.paused()))  # fmt: skip


def converged(deps: Deps, *, repo_url: str, head: str) -> bool:
    """Whether what runs is what `head` says: every stack's last good commit is the head's view of it.

    True when planning from the deployed commits to `head` finds nothing to deploy or remove (a stack
    unchanged since an older or rewound commit counts as converged; an orphan is only reported; a stack
    a person holds at another commit is left out). A
    head that cannot be planned (invalid catalog) is not converged. Cheap when every stack is at
    `head` already: then only the stack folders are listed. Raises FetchError.
    """
    deployed = deps.store.last_good()
    mirror = deps.mirror(repo_url)
    stacks_dir = deps.settings.stacks_dir
    if deployed and set(deployed.values()) == {head}:
        at_head = set(stack_names_in(mirror.files(head, stacks_dir), stacks_dir=stacks_dir))
        if at_head == set(deployed):
            return True
    try:
        plan = plan_against_deployed(deps, repo_url=repo_url, target_ref=head, fetch=False)
    except DeployerError:
        return False
    return plan.is_empty


def validate_tree(deps: Deps, path: Path, *, allow_placeholders: bool = False) -> Catalog:
    """Check every stack in the working tree at `path` without the operator's key and without deploying.

    Secret keys get a placeholder value so that `docker compose config` can interpolate. Unless
    `allow_placeholders`: a secret file the public example key can still decrypt is decrypted with
    it (that key is committed), and refused if a value is still a committed placeholder.
    Raises CatalogError, KnownSecretError or ComposeInvalidError (listing every problem).
    """
    catalog = load_catalog(path, stacks_dir=deps.settings.stacks_dir, allow_placeholders=allow_placeholders)
    problems = []
    for name in catalog:
        try:
            if not allow_placeholders:
                _refuse_known_values(deps, path, catalog[name].secrets)
            check_stack(deps, catalog[name], path)
        except DeployerError as error:
            problems.append(error)
    if problems:
        first = problems[0]
        raise type(first)(first.message, details=tuple(m for p in problems for m in (p.message, *p.details)))
    return catalog


def check_stack(deps: Deps, stack: Stack, root: Path, *, env: Mapping[str, str] | None = None) -> None:
    """Check one stack of the tree at `root` as a deployment does before starting it (the tooling's config, the
    host policy), each secret key a placeholder; `env` adds to the tooling's environment. Raises DeployerError."""
    secrets = {key: PLACEHOLDER for keys in stack.secret_keys.values() for key in keys}
    workdir = root.resolve()
    config = deps.backend.check(stack, workdir=workdir, env={**secrets, **(env or {})})
    refuse_host_access(stack, config, workdir=workdir, policy=deps.settings.host_policy, secrets=secrets)


def _refuse_known_values(deps: Deps, root: Path, files: tuple[PurePosixPath, ...]) -> None:
    """Raise KnownSecretError for a file that still holds a committed placeholder value.

    A file the public example key can decrypt is read with it (that key is committed, so CI needs no
    secret); any other file only if the operator's own key is at hand, and skipped if it cannot be read.
    """
    for secret in files:
        parsed = read_sops_file(secret, (root / secret).read_text(encoding="utf-8", errors="replace"))
        if exempt(secret) or parsed is None:
            continue
        if EXAMPLE_RECIPIENT in parsed.age_recipients:
            env = {**deps.settings.sops_env, "SOPS_AGE_KEY": EXAMPLE_IDENTITY}
            env.pop("SOPS_AGE_KEY_FILE", None)
            decrypt_files([secret], repo_root=root, runner=deps.runner, env=env)  # raises on a placeholder
            continue
        try:
            decrypt_files([secret], repo_root=root, runner=deps.runner, env=deps.settings.sops_env)
        except KnownSecretError:
            raise
        except SecretError:  # no key of the operator's here (CI): deployment checks the values
            continue

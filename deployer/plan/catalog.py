"""Load every stack of a repository tree and prove its x-deployer block sound.

This reads files and nothing else: no subprocess, no network. Compose's own verdict on a file
(`docker compose config`) belongs to the apply stage's backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from graphlib import CycleError, TopologicalSorter
from pathlib import Path, PurePosixPath
from typing import Any

from deployer.interpolation import read_dotenv, references, stack_env_file
from deployer.model import Catalog, Stack
from deployer.plan.fields import STACK_NAME, Fields, Problems, inside, safe_repo_path, secret_format
from deployer.secret_policy import EXAMPLE_RECIPIENT, exempt, only_the_example_key, placeholder_keys
from deployer.settings import DOCKER_PASSTHROUGH
from deployer.sopsfile import read_sops_file
from deployer.yamlio import YAMLError, safe_load

__all__ = ["COMPOSE_FILE_NAMES", "load_catalog", "secret_format"]

COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
KNOWN_KEYS = frozenset({"depends_on", "secrets", "networks", "directories", "wait_timeout", "watch"})


def load_catalog(
    root: Path, *, stacks_dir: PurePosixPath = PurePosixPath("stacks"), allow_placeholders: bool = False
) -> Catalog:
    """Load `root/<stacks_dir>/*/compose.yaml` and validate every x-deployer block.

    Raises CatalogError listing every problem found: unreadable or invalid YAML, an invalid stack
    name, an unknown x-deployer key or a value of the wrong type, an unknown dependency or a cycle,
    a secret file that is missing, not SOPS-encrypted or in an unsupported format, and any path
    that escapes the repository (absolute, `..`, or a symlink pointing out). Unless
    `allow_placeholders` (this repository's own CI, checking what it ships): a secret file outside
    examples/ that only the public example key protects, and a committed placeholder in shared.env.
    """
    root = root.resolve()
    problems = Problems()
    if not safe_repo_path(stacks_dir):
        problems.add("DEPLOYER_STACKS_DIR", None, f"{stacks_dir} escapes the repository")
        problems.raise_if_any()
    folders = list(_stack_folders(root, stacks_dir, problems))
    known = frozenset(folder.name for folder in folders)
    shared = _shared_env(root, stacks_dir, problems)
    if shared and not allow_placeholders:
        for key in placeholder_keys(shared[1]):
            problems.add(shared[0], key, "still the committed placeholder: set it for your installation")
    stacks: dict[str, Stack] = {}
    for folder in folders:
        stack = _load_stack(root, folder, known, problems, shared=shared, allow_placeholders=allow_placeholders)
        if stack is not None:
            stacks[stack.name] = stack
    _check_cycles(stacks, problems)
    problems.raise_if_any()
    return Catalog(stacks=stacks, stacks_dir=stacks_dir)


#: the non-secret variables every stack of a repository reads (DOMAIN, ACME_EMAIL, ...), beside the stacks
SHARED_ENV = "shared.env"


def _shared_env(
    root: Path, stacks_dir: PurePosixPath, problems: Problems
) -> tuple[PurePosixPath, dict[str, str]] | None:
    """The stacks folder's shared.env: its repository path and variables, or None when there is none."""
    relative = stacks_dir / SHARED_ENV
    path = root / relative
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        problems.add(relative, None, "must be a regular file (not a symlink or a folder)")
        return None
    return relative, read_dotenv(path.read_text(encoding="utf-8", errors="replace"))


def stack_names_in(paths: list[PurePosixPath], *, stacks_dir: PurePosixPath) -> frozenset[str]:
    """Names of the stacks present in a list of repository files (a commit's tree listing)."""
    names = set()
    for path in paths:
        if path.parent.parent == stacks_dir and path.name in COMPOSE_FILE_NAMES:
            names.add(path.parent.name)
    return frozenset(names)


def _stack_folders(root: Path, stacks_dir: PurePosixPath, problems: Problems) -> Iterator[Path]:
    base = root / stacks_dir
    if not base.is_dir():
        return
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink() and not inside(root, entry.resolve()):
            problems.add(stacks_dir / entry.name, None, "symlink points out of the repository")
            continue
        if not STACK_NAME.match(entry.name):
            problems.add(stacks_dir / entry.name, None, "invalid stack name (expected ^[a-z0-9][a-z0-9_-]{0,62}$)")
            continue
        if not any((entry / name).is_file() for name in COMPOSE_FILE_NAMES):
            problems.add(stacks_dir / entry.name, None, "no compose.yaml in the stack folder")
            continue
        yield entry


def _load_stack(
    root: Path,
    folder: Path,
    known: frozenset[str],
    problems: Problems,
    *,
    shared: tuple[PurePosixPath, dict[str, str]] | None,
    allow_placeholders: bool,
) -> Stack | None:
    rel_folder = PurePosixPath(folder.relative_to(root).as_posix())
    compose = next(folder / n for n in COMPOSE_FILE_NAMES if (folder / n).is_file())
    rel_compose = rel_folder / compose.name
    _check_symlinks(root, folder, problems)
    try:
        document = safe_load(compose.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError) as error:
        problems.add(rel_compose, None, f"cannot be read as YAML: {_one_line(error)}")
        return None
    if not isinstance(document, dict):
        problems.add(rel_compose, None, "is not a compose file (expected a mapping at the top level)")
        return None
    block = document.get("x-deployer") or {}
    if not isinstance(block, dict):
        problems.add(rel_compose, "x-deployer", "must be a mapping")
        return None
    for key in sorted(set(block) - KNOWN_KEYS):
        problems.add(rel_compose, f"x-deployer.{key}", f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
    shared_file, shared_vars = shared if shared else (None, {})
    dotenv = {**shared_vars, **stack_env_file(folder)}  # the stack's own .env wins, as compose would read it
    fields = Fields(root, rel_compose, block, problems, dotenv=dotenv)
    secrets = fields.repo_paths("secrets", must_exist=True)
    secret_keys = {
        path: _secret_keys(
            root,
            path,
            where=f"{rel_compose}: {fields.where_is('secrets', path)}",
            problems=problems,
            allow_example_key=allow_placeholders,
        )
        for path in secrets
    }
    fields.secret_keys = {key for keys in secret_keys.values() for key in keys}
    stack = Stack(
        name=folder.name,
        folder=rel_folder,
        compose_file=rel_compose,
        depends_on=fields.dependencies(folder.name, known),
        secrets=secrets,
        networks=fields.names("networks", NETWORK_NAME, "a network name"),
        directories=fields.directories(),
        wait_timeout=fields.wait_timeout(),
        watch=tuple(str(p) for p in fields.repo_paths("watch", must_exist=False)),
        secret_keys=secret_keys,
        variables=dotenv,
        shared_file=shared_file,
    )
    provided = fields.secret_keys | set(dotenv) | set(DOCKER_PASSTHROUGH)
    _check_variables(rel_compose, {k: v for k, v in document.items() if k != "x-deployer"}, provided, secrets, problems)
    return stack


def _check_variables(
    where: PurePosixPath, document: Any, provided: set[str], secrets: tuple[PurePosixPath, ...], problems: Problems
) -> None:
    """Every variable the compose file needs without a default must come from its secrets, .env or shared.env.

    Compose sees only those (and deployer's PATH, HOME and DOCKER_* variables), so anything else
    would be interpolated as an empty string at deploy time.
    """
    missing = sorted({ref.name for text in _strings(document) for ref in references(text) if ref.required} - provided)
    sources = ", ".join(map(str, secrets)) or "no secret file"
    for name in missing:
        problems.add(
            where, None, f"${{{name}}} has no default and is not a key of {sources}, the stack's .env or {SHARED_ENV}"
        )


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _check_cycles(stacks: Mapping[str, Stack], problems: Problems) -> None:
    graph = {s.name: set(s.depends_on) for s in stacks.values()}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        cycle = list(reversed(error.args[1]))
        problems.add(stacks[cycle[0]].compose_file, "x-deployer.depends_on", "dependency cycle: " + " -> ".join(cycle))


def _check_symlinks(root: Path, folder: Path, problems: Problems) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not inside(root, path.resolve()):
                problems.add(
                    PurePosixPath(path.relative_to(root).as_posix()),
                    None,
                    "symlink points out of the repository",
                )


def _secret_keys(
    root: Path, path: PurePosixPath, *, where: str, problems: Problems, allow_example_key: bool
) -> tuple[str, ...]:
    """The keys of a SOPS file, read without decrypting; reports a file or value left in clear, and a file
    outside examples/ that only the public example key protects."""
    parsed = read_sops_file(path, (root / path).read_text(encoding="utf-8", errors="replace"))
    if parsed is None:
        return ()
    for problem in parsed.problems:
        problems.add(where, None, f"{path} {problem}")
    if parsed.encrypted and only_the_example_key(parsed) and not exempt(path) and not allow_example_key:
        problems.add(where, None, f"{path} is encrypted only to the public example key {EXAMPLE_RECIPIENT[:16]}...,"
                                  " which anyone can read: run `deployer secrets init`")  # fmt: skip
    return parsed.keys


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())

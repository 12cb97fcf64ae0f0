"""Load every stack of a repository tree and prove its x-deployer block sound.

This reads files and nothing else: no subprocess, no network. Compose's own verdict on a file
(`docker compose config`) belongs to the apply stage's backend.

A pushed commit is hostile input, and this is the first code to read it (before compose, sops or the
engine see anything). So every file is read only if it is a regular file inside the repository and at most
MAX_FILE_BYTES long; YAML is parsed with alias-expansion and depth limits (deployer.yamlio); strings of the
x-deployer block may hold no control character; and every refusal is a CatalogError line naming the file
and field, never another exception.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import replace
from graphlib import CycleError, TopologicalSorter
from pathlib import Path, PurePosixPath
from typing import Any

from deployer.interpolation import read_dotenv, references
from deployer.model import Catalog, Stack
from deployer.plan.fields import STACK_NAME, Fields, Problems, inside, safe_repo_path, secret_format
from deployer.plan.swarm_keys import swarm_findings
from deployer.secret_policy import EXAMPLE_RECIPIENT, exempt, only_the_example_key, placeholder_keys
from deployer.settings import DOCKER_PASSTHROUGH
from deployer.sopsfile import read_sops_file
from deployer.yamlio import YAMLError, safe_load

__all__ = ["COMPOSE_FILE_NAMES", "MAX_FILE_BYTES", "load_catalog", "read_repo_file", "secret_format"]

COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
KNOWN_KEYS = frozenset(
    {"depends_on", "secrets", "networks", "directories", "wait_timeout", "watch", "engine", "docker_host"}
)
#: the most a compose file, secret file, a stack's .env or shared.env may hold: real ones are a few KiB
MAX_FILE_BYTES = 1024 * 1024
#: a file needing more undeclared variables than this is reported with this many and a count of the rest
MAX_MISSING_SHOWN = 10
#: C0 and C1 controls and the Unicode line and paragraph separators: what splits or hides part of a line
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
    if not inside(root, (root / stacks_dir).resolve()):
        problems.add(stacks_dir, None, "symlink points out of the repository")
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
    text = read_repo_file(root, relative, problems)
    return None if text is None else (relative, read_dotenv(text))


def read_repo_file(
    root: Path, relative: PurePosixPath, problems: Problems, *, where: str | None = None, strict: bool = False
) -> str | None:
    """The text of a regular file inside the repository of at most MAX_FILE_BYTES; None (a problem
    reported, naming `where` or else the file) for anything else: a symlink out, a device, a bigger file,
    bytes that are not UTF-8 when `strict` (else they are replaced).

    Never reads more than MAX_FILE_BYTES + 1 bytes, whatever the file claims to be.
    """
    path = root / relative
    lead = f"{where}: {relative}" if where else str(relative)
    if path.is_symlink() and not inside(root, path.resolve()):  # the callers have proven its folders inside
        problems.add(lead, None, "symlink points out of the repository")
        return None
    try:
        with path.open("rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                problems.add(lead, None, "is not a regular file")
                return None
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        problems.add(lead, None, f"cannot be read: {error.strerror or error}")
        return None
    if len(data) > MAX_FILE_BYTES:
        size = max(path.stat().st_size, len(data))
        problems.add(lead, None, f"is {_size(size)}, over the {_size(MAX_FILE_BYTES)} a file may be (MAX_FILE_BYTES)")
        return None
    try:
        return data.decode("utf-8", errors="strict" if strict else "replace")
    except UnicodeDecodeError as error:
        problems.add(lead, None, f"is not UTF-8 text ({error.reason} at byte {error.start})")
        return None


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
            problems.add(_shown(stacks_dir / entry.name), None, "symlink points out of the repository")
            continue
        if not STACK_NAME.fullmatch(entry.name):
            problems.add(_shown(stacks_dir / entry.name), None,
                         "invalid stack name (expected ^[a-z0-9][a-z0-9_-]{0,62}$)")  # fmt: skip
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
    if _check_symlinks(root, folder, problems) & {compose.name, ".env"}:
        return None  # a file from outside the repository is never read, let alone handed to compose
    read = _read_compose_file(root, rel_compose, problems)
    if read is None:
        return None
    document, block = read
    own_env = _stack_env(root, rel_folder, problems)
    if own_env is None:
        return None
    shared_file, shared_vars = shared if shared else (None, {})
    dotenv = {**shared_vars, **own_env}  # the stack's own .env wins, as compose would read it
    fields = Fields(root, rel_compose, block, problems, dotenv=dotenv)
    secrets = fields.repo_paths("secrets", must_exist=True)
    secret_keys = {
        path: _secret_keys(
            root,
            path,
            where=f"{rel_compose}: {_where_is(block, 'secrets', path)}",
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
        engine=fields.engine(),
        docker_host=fields.docker_host(),
    )
    if stack.engine == "swarm":
        stack = replace(stack, warnings=_swarm_warnings(rel_compose, document, problems))
    provided = fields.secret_keys | set(dotenv) | set(DOCKER_PASSTHROUGH)
    _check_variables(rel_compose, {k: v for k, v in document.items() if k != "x-deployer"}, provided, secrets, problems)
    return stack


def _swarm_warnings(rel_compose: PurePosixPath, document: Mapping[Any, Any], problems: Problems) -> tuple[str, ...]:
    """What `docker stack deploy` would ignore, as lines naming file and key; what it refuses, as problems."""
    warnings = []
    for finding in swarm_findings(document):
        if finding.refused:
            problems.add(rel_compose, finding.field, finding.message)
        else:
            warnings.append(f"{rel_compose}: {finding.field}: {finding.message}")
    return tuple(warnings)


def _read_compose_file(
    root: Path, rel_compose: PurePosixPath, problems: Problems
) -> tuple[dict[Any, Any], dict[Any, Any]] | None:
    """The compose file's document and its x-deployer block, or None when either is refused."""
    text = read_repo_file(root, rel_compose, problems, strict=True)
    if text is None:
        return None
    try:
        document = safe_load(text)
    except YAMLError as error:
        problems.add(rel_compose, None, f"cannot be read as YAML: {_one_line(error)}")
        return None
    if not isinstance(document, dict):
        problems.add(rel_compose, None, "is not a compose file (expected a mapping at the top level)")
        return None
    block = document.get("x-deployer") or {}
    if not isinstance(block, dict):
        problems.add(rel_compose, "x-deployer", "must be a mapping")
        return None
    for key in sorted(set(block) - KNOWN_KEYS, key=str):
        problems.add(rel_compose, f"x-deployer.{_shown(key)}",
                     f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")  # fmt: skip
    if _control_characters(rel_compose, block, problems):
        return None
    return document, block


def _check_variables(
    where: PurePosixPath, document: Any, provided: set[str], secrets: tuple[PurePosixPath, ...], problems: Problems
) -> None:
    """Every variable the compose file needs without a default must come from its secrets, .env or shared.env.

    Compose sees only those (and deployer's PATH, HOME and DOCKER_* variables), so anything else
    would be interpolated as an empty string at deploy time.
    """
    needed = {ref.name for text in _strings(document) if "$" in text for ref in references(text) if ref.required}
    missing = sorted(needed - provided)
    sources = ", ".join(map(str, secrets)) or "no secret file"
    for name in missing[:MAX_MISSING_SHOWN]:
        problems.add(
            where, None, f"${{{name}}} has no default and is not a key of {sources}, the stack's .env or {SHARED_ENV}"
        )
    if len(missing) > MAX_MISSING_SHOWN:
        problems.add(where, None, f"and {len(missing) - MAX_MISSING_SHOWN} more variables like these")


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


def _check_symlinks(root: Path, folder: Path, problems: Problems) -> set[str]:
    """Report every symlink under the stack's folder that points out of the repository; return the names
    of those directly in the folder."""
    escaping = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not inside(root, path.resolve()):
                problems.add(_shown(path.relative_to(root).as_posix()), None, "symlink points out of the repository")
                if path.parent == folder:
                    escaping.add(name)
    return escaping


def _stack_env(root: Path, folder: PurePosixPath, problems: Problems) -> dict[str, str] | None:
    """The stack's own `.env` (compose reads it for interpolation); {} when there is none, None when refused."""
    if not (root / folder / ".env").is_file():
        return {}
    text = read_repo_file(root, folder / ".env", problems)
    return None if text is None else read_dotenv(text)


def _control_characters(where: PurePosixPath, block: Mapping[Any, Any], problems: Problems) -> bool:
    """Report every string of the x-deployer block holding a control character (a NUL in a path, a newline
    in a name): no field needs one, and they would end up in paths, argv and one-line messages."""
    found = False
    for field, text in _block_strings(block, "x-deployer"):
        if _CONTROL.search(text):
            problems.add(where, _shown(field), f"{text!r} holds a control character")
            found = True
    return found


def _block_strings(node: Any, field: str) -> Iterator[tuple[str, str]]:
    """(field, string) for every key and string value below an x-deployer block."""
    if isinstance(node, str):
        yield field, node
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield f"{field}.{key}", key
            yield from _block_strings(value, f"{field}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _block_strings(item, f"{field}[{index}]")


def _where_is(block: Mapping[str, Any], key: str, path: PurePosixPath) -> str:
    """The field of the first list item naming `path` (as written: `secrets/./a.env` is secrets/a.env)."""
    items = block.get(key)
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if isinstance(item, str) and PurePosixPath(item) == path:
            return f"x-deployer.{key}[{index}]"
    return f"x-deployer.{key}"


def _shown(value: object) -> str:
    """`value` as one printable line: control characters escaped, so a hostile name cannot split a message."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _size(count: int) -> str:
    mib, rest = divmod(count, 1024 * 1024)
    if not rest and mib:
        return f"{mib} MiB"
    return f"{count / 1024 / 1024:.1f} MiB" if mib >= 10 else f"{count} bytes"


def _secret_keys(
    root: Path, path: PurePosixPath, *, where: str, problems: Problems, allow_example_key: bool
) -> tuple[str, ...]:
    """The keys of a SOPS file, read without decrypting; reports a file or value left in clear, and a file
    outside examples/ that only the public example key protects."""
    text = read_repo_file(root, path, problems, where=where)
    if text is None:
        return ()
    if secret_format(path) == "yaml":
        try:
            safe_load(text)  # read_sops_file would take a bomb for a file without sops metadata
        except YAMLError as error:
            problems.add(where, None, f"{path} cannot be read as YAML: {_one_line(error)}")
            return ()
    try:
        parsed = read_sops_file(path, text)
    except RecursionError:  # JSON nested a thousand deep (YAML is refused above, far sooner)
        problems.add(where, None, f"{path} is nested too deeply to be read")
        return ()
    except re.error as error:  # an unencrypted_regex or encrypted_regex of its sops metadata
        problems.add(where, None, f"{path}: its sops metadata holds an invalid regular expression: {error}")
        return ()
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

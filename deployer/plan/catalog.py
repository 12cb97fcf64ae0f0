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

import yaml

from deployer.errors import CatalogError
from deployer.interpolation import interpolate, read_dotenv, references
from deployer.model import Catalog, Directory, Stack
from deployer.settings import DOCKER_PASSTHROUGH
from deployer.sopsfile import FORMATS, read_sops_file

__all__ = ["COMPOSE_FILE_NAMES", "load_catalog", "secret_format"]

COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
OWNER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
KNOWN_KEYS = frozenset({"depends_on", "secrets", "networks", "directories", "wait_timeout", "watch"})
SECRET_FORMATS = FORMATS


class _Problems:
    """Collects one-line problems so that validation reports all of them at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: object, field: str | None, message: str) -> None:
        self.lines.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            count = len(self.lines)
            summary = self.lines[0] if count == 1 else f"{self.lines[0]} (and {count - 1} more)"
            raise CatalogError(summary, details=tuple(self.lines))


def load_catalog(root: Path, *, stacks_dir: PurePosixPath = PurePosixPath("stacks")) -> Catalog:
    """Load `root/<stacks_dir>/*/compose.yaml` and validate every x-deployer block.

    Raises CatalogError listing every problem found: unreadable or invalid YAML, an invalid stack
    name, an unknown x-deployer key or a value of the wrong type, an unknown dependency or a cycle,
    a secret file that is missing, not SOPS-encrypted or in an unsupported format, and any path
    that escapes the repository (absolute, `..`, or a symlink pointing out).
    """
    root = root.resolve()
    problems = _Problems()
    if not _safe_repo_path(stacks_dir):
        problems.add("DEPLOYER_STACKS_DIR", None, f"{stacks_dir} escapes the repository")
        problems.raise_if_any()
    folders = list(_stack_folders(root, stacks_dir, problems))
    known = frozenset(folder.name for folder in folders)
    stacks: dict[str, Stack] = {}
    for folder in folders:
        stack = _load_stack(root, folder, known, problems)
        if stack is not None:
            stacks[stack.name] = stack
    _check_cycles(stacks, problems)
    problems.raise_if_any()
    return Catalog(stacks=stacks, stacks_dir=stacks_dir)


def stack_names_in(paths: list[PurePosixPath], *, stacks_dir: PurePosixPath) -> frozenset[str]:
    """Names of the stacks present in a list of repository files (a commit's tree listing)."""
    names = set()
    for path in paths:
        if path.parent.parent == stacks_dir and path.name in COMPOSE_FILE_NAMES:
            names.add(path.parent.name)
    return frozenset(names)


def secret_format(path: PurePosixPath) -> str | None:
    """The sops input type for a secret file, by its suffix, or None when unsupported."""
    return SECRET_FORMATS.get(path.suffix)


def _stack_folders(root: Path, stacks_dir: PurePosixPath, problems: _Problems) -> Iterator[Path]:
    base = root / stacks_dir
    if not base.is_dir():
        return
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink() and not _inside(root, entry.resolve()):
            problems.add(stacks_dir / entry.name, None, "symlink points out of the repository")
            continue
        if not STACK_NAME.match(entry.name):
            problems.add(stacks_dir / entry.name, None, "invalid stack name (expected ^[a-z0-9][a-z0-9_-]{0,62}$)")
            continue
        if not any((entry / name).is_file() for name in COMPOSE_FILE_NAMES):
            problems.add(stacks_dir / entry.name, None, "no compose.yaml in the stack folder")
            continue
        yield entry


def _load_stack(root: Path, folder: Path, known: frozenset[str], problems: _Problems) -> Stack | None:
    rel_folder = PurePosixPath(folder.relative_to(root).as_posix())
    compose = next(folder / n for n in COMPOSE_FILE_NAMES if (folder / n).is_file())
    rel_compose = rel_folder / compose.name
    _check_symlinks(root, folder, problems)
    try:
        document = yaml.safe_load(compose.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
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
    dotenv = _stack_dotenv(folder)
    fields = _Fields(root, rel_compose, block, problems, dotenv=dotenv)
    secrets = fields.repo_paths("secrets", must_exist=True)
    secret_keys = {
        path: _secret_keys(root, path, where=f"{rel_compose}: {fields.where_is('secrets', path)}", problems=problems)
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
    )
    provided = fields.secret_keys | set(dotenv) | set(DOCKER_PASSTHROUGH)
    _check_variables(rel_compose, {k: v for k, v in document.items() if k != "x-deployer"}, provided, secrets, problems)
    return stack


def _stack_dotenv(folder: Path) -> dict[str, str]:
    """The stack's own `.env` (compose reads it for interpolation from the project directory)."""
    path = folder / ".env"
    return read_dotenv(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else {}


def _check_variables(
    where: PurePosixPath, document: Any, provided: set[str], secrets: tuple[PurePosixPath, ...], problems: _Problems
) -> None:
    """Every variable the compose file needs without a default must come from its secrets or .env.

    Compose sees only those (and deployer's PATH, HOME and DOCKER_* variables), so anything else
    would be interpolated as an empty string at deploy time.
    """
    missing = sorted({ref.name for text in _strings(document) for ref in references(text) if ref.required} - provided)
    sources = ", ".join(map(str, secrets)) or "no secret file"
    for name in missing:
        problems.add(where, None, f"${{{name}}} has no default and is not a key of {sources} or the stack's .env")


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


class _Fields:
    """Typed readers for the keys of one x-deployer block, reporting problems as they go."""

    def __init__(
        self,
        root: Path,
        where: PurePosixPath,
        block: Mapping[str, Any],
        problems: _Problems,
        *,
        dotenv: Mapping[str, str],
    ) -> None:
        self.root, self.where, self.block, self.problems = root, where, block, problems
        self.dotenv = dotenv
        self.secret_keys: set[str] = set()

    def _list(self, key: str) -> list[Any]:
        value = self.block.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.add(self.where, f"x-deployer.{key}", "must be a list")
            return []
        return value

    def where_is(self, key: str, path: PurePosixPath) -> str:
        """The field of one list item, e.g. x-deployer.secrets[1], for messages about it."""
        return f"x-deployer.{key}[{[str(item) for item in self._list(key)].index(str(path))}]"

    def dependencies(self, name: str, known: frozenset[str]) -> tuple[str, ...]:
        """depends_on, each entry checked against the stacks of the catalog by its index in the file."""
        result = []
        for index, item in enumerate(self._list("depends_on")):
            field = f"x-deployer.depends_on[{index}]"
            if not isinstance(item, str) or not STACK_NAME.match(item):
                self.problems.add(self.where, field, f"{item!r} is not a stack name")
            elif item == name:
                self.problems.add(self.where, field, "a stack cannot depend on itself")
            elif item not in known:
                self.problems.add(self.where, field, f"unknown stack {item!r}")
            else:
                result.append(item)
        return tuple(dict.fromkeys(result))

    def names(self, key: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
        names = []
        for index, item in enumerate(self._list(key)):
            if isinstance(item, str) and pattern.match(item):
                names.append(item)
            else:
                self.problems.add(self.where, f"x-deployer.{key}[{index}]", f"{item!r} is not {what}")
        return tuple(dict.fromkeys(names))

    def repo_paths(self, key: str, *, must_exist: bool) -> tuple[PurePosixPath, ...]:
        paths = []
        for index, item in enumerate(self._list(key)):
            field = f"x-deployer.{key}[{index}]"
            if not isinstance(item, str) or not item.strip():
                self.problems.add(self.where, field, f"{item!r} is not a path")
                continue
            path = PurePosixPath(item)
            if not _safe_repo_path(path):
                self.problems.add(self.where, field, f"{item} escapes the repository (absolute or '..')")
                continue
            if must_exist and not self._check_file(path, field):
                continue
            paths.append(path)
        return tuple(dict.fromkeys(paths))

    def _check_file(self, path: PurePosixPath, field: str) -> bool:
        full = self.root / path
        if not _inside(self.root, full.resolve()):
            self.problems.add(self.where, field, f"{path} resolves, through a symlink, out of the repository")
            return False
        if not full.is_file():
            self.problems.add(self.where, field, f"{path} does not exist")
            return False
        if secret_format(path) is None:
            self.problems.add(self.where, field, f"{path}: unsupported secret format (use .env, .yaml, .yml or .json)")
            return False
        return True

    def directories(self) -> tuple[Directory, ...]:
        result = []
        for index, raw in enumerate(self._list("directories")):
            field = f"x-deployer.directories[{index}]"
            item = {"path": raw} if isinstance(raw, str) else raw
            if not isinstance(item, dict) or set(item) - {"path", "owner", "mode"}:
                self.problems.add(self.where, field, "expected {path, owner, mode}")
                continue
            directory = self._directory(item, field)
            if directory is not None:
                result.append(directory)
        return tuple(result)

    def _directory(self, item: Mapping[str, Any], field: str) -> Directory | None:
        path, owner, mode = item.get("path"), item.get("owner"), item.get("mode")
        ok = True
        resolved = self._resolve(path, f"{field}.path")
        if resolved is None:
            ok = False
        elif not resolved.startswith("/") or ".." in PurePosixPath(resolved).parts:
            self.problems.add(self.where, f"{field}.path", f"{path!r} is not an absolute path without '..'")
            ok = False
        if owner is not None and not (isinstance(owner, str | int) and OWNER.match(str(owner))):
            self.problems.add(self.where, f"{field}.owner", f"{owner!r} is not 'uid:gid' or 'user:group'")
            ok = False
        parsed_mode = _mode(mode)
        if mode is not None and parsed_mode is None:
            self.problems.add(self.where, f"{field}.mode", f'{mode!r} is not a quoted octal mode like "0750"')
            ok = False
        if not ok:
            return None
        text = str(path) if "$" in str(path) else os.path.normpath(str(path))  # variables resolve at apply
        return Directory(path=text, owner=None if owner is None else str(owner), mode=parsed_mode)

    def _resolve(self, value: object, field: str) -> str | None:
        """A path with its variables resolved from the stack's .env and defaults (secrets come at apply)."""
        if not isinstance(value, str):
            self.problems.add(self.where, field, f"{value!r} is not a path")
            return None
        known = self.secret_keys | set(self.dotenv)
        unset = [ref.name for ref in references(value) if ref.required and ref.name not in known]
        if unset:
            self.problems.add(self.where, field, f"${{{unset[0]}}} has no default and is not a secret key or in .env")
            return None
        return interpolate(value, {**{k: "/secret" for k in self.secret_keys}, **self.dotenv})

    def wait_timeout(self) -> int:
        value: object = self.block.get("wait_timeout", 300)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.problems.add(self.where, "x-deployer.wait_timeout", f"{value!r} is not a number of seconds >= 0")
            return 300
        return value


def _mode(value: object) -> int | None:
    """Parse a quoted octal mode. Unquoted YAML numbers are refused: 0644 would arrive as 420."""
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    return None


def _check_cycles(stacks: Mapping[str, Stack], problems: _Problems) -> None:
    graph = {s.name: set(s.depends_on) for s in stacks.values()}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        cycle = list(reversed(error.args[1]))
        problems.add(stacks[cycle[0]].compose_file, "x-deployer.depends_on", "dependency cycle: " + " -> ".join(cycle))


def _check_symlinks(root: Path, folder: Path, problems: _Problems) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not _inside(root, path.resolve()):
                problems.add(
                    PurePosixPath(path.relative_to(root).as_posix()),
                    None,
                    "symlink points out of the repository",
                )


def _secret_keys(root: Path, path: PurePosixPath, *, where: str, problems: _Problems) -> tuple[str, ...]:
    """The keys of a SOPS file, read without decrypting; reports a file or value left in clear."""
    parsed = read_sops_file(path, (root / path).read_text(encoding="utf-8", errors="replace"))
    if parsed is None:
        return ()
    for problem in parsed.problems:
        problems.add(where, None, f"{path} {problem}")
    return parsed.keys


def _safe_repo_path(path: PurePosixPath) -> bool:
    return not path.is_absolute() and ".." not in path.parts and str(path) not in ("", ".")


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())

"""Typed readers for one stack's x-deployer block, and the problem list validation reports through."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from deployer.errors import CatalogError
from deployer.interpolation import interpolate, references
from deployer.model import Directory
from deployer.sopsfile import FORMATS

__all__ = ["OWNER", "STACK_NAME", "Fields", "Problems", "inside", "safe_repo_path", "secret_format"]

STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENGINES = ("compose", "swarm")
DOCKER_HOST_URL = re.compile(r"^(?:ssh://(?:[A-Za-z0-9_][A-Za-z0-9_.-]*@)?[A-Za-z0-9.:\[\]-]+(?::\d{1,5})?"
                             r"|tcp://[A-Za-z0-9.:\[\]-]+:\d{1,5}|unix:///[^\s]+)\Z")  # fmt: skip
DOCKER_CONTEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
OWNER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


class Problems:
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


class Fields:
    """Typed readers for the keys of one x-deployer block, reporting problems as they go."""

    def __init__(
        self,
        root: Path,
        where: PurePosixPath,
        block: Mapping[str, Any],
        problems: Problems,
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
            if not safe_repo_path(path):
                self.problems.add(self.where, field, f"{item} escapes the repository (absolute or '..')")
                continue
            if must_exist and not self._check_file(path, field):
                continue
            paths.append(path)
        return tuple(dict.fromkeys(paths))

    def _check_file(self, path: PurePosixPath, field: str) -> bool:
        full = self.root / path
        if not inside(self.root, full.resolve()):
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

    def engine(self) -> str:
        value: object = self.block.get("engine", "compose")
        if value not in ENGINES:
            self.problems.add(self.where, "x-deployer.engine", f"{value!r} is not one of: {', '.join(ENGINES)}")
            return "compose"
        return str(value)

    def docker_host(self) -> str | None:
        """An engine URL (ssh://, tcp://, unix://) or a Docker context name; None: the deployer's own engine."""
        value: object = self.block.get("docker_host")
        if value is None:
            return None
        if isinstance(value, str) and (DOCKER_HOST_URL.match(value) or DOCKER_CONTEXT.match(value)):
            return value
        self.problems.add(self.where, "x-deployer.docker_host", f"{value!r} is not ssh://[user@]host[:port], "
                          "tcp://host:port, unix:///path or a Docker context name")  # fmt: skip
        return None

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


def secret_format(path: PurePosixPath) -> str | None:
    """The sops input type for a secret file, by its suffix, or None when unsupported."""
    return FORMATS.get(path.suffix)


def safe_repo_path(path: PurePosixPath) -> bool:
    return not path.is_absolute() and ".." not in path.parts and str(path) not in ("", ".")


def inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents

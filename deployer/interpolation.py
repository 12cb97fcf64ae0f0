"""Compose-style variable interpolation, for the places deployer reads variables itself.

Compose interpolates the compose file; deployer needs the same rules for `x-deployer.directories`
paths (`${DATA_ROOT:-/mnt/data}/postgres`) and to tell which variables a stack needs from its secrets.
Supported forms: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
`${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}`; `$$` is a literal dollar.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Reference", "interpolate", "read_dotenv", "references", "stack_env_file"]

_PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)
#: the same without the braced forms, for the text after its last `}`, where no braced form can end: there
#: _PATTERN would read on to the end of the text from every `${NAME:-` in vain, quadratic in the length
#: (a hostile 250 KB string of `${A:-` took 170 s)
_UNBRACED = re.compile(r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def _matches(text: str) -> Iterator[re.Match[str]]:
    """_PATTERN's matches in `text`, in linear time."""
    end = text.rfind("}") + 1
    yield from _PATTERN.finditer(text, 0, end)
    yield from _UNBRACED.finditer(text, end)


@dataclass(frozen=True)
class Reference:
    name: str
    required: bool  # no default: the value must come from somewhere


def references(text: str) -> Iterator[Reference]:
    """Every variable `text` refers to; `required` unless the form supplies a default or alternative."""
    for match in _matches(text):
        groups = match.groupdict()
        if groups["escaped"]:
            continue
        name = groups["bare"] or groups["name"]
        op = groups.get("op") or ""
        yield Reference(name, required=op not in (":-", "-", ":+", "+"))


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables from `env` as compose does; a missing required variable becomes ''.

    Raises KeyError naming a `${VAR:?message}` variable that is unset (or empty, with the colon).
    """

    def replace(match: re.Match[str]) -> str:
        groups = match.groupdict()
        if groups["escaped"]:
            return "$"
        name = groups["bare"] or groups["name"]
        op, arg = groups.get("op") or "", groups.get("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        if op in (":?", "?") and unset_or_empty:
            raise KeyError(f"{name}: {arg or 'required'}")
        return value or ""

    parts, done = [], 0
    for match in _matches(text):
        parts += [text[done : match.start()], replace(match)]
        done = match.end()
    return "".join([*parts, text[done:]])


def read_dotenv(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a compose `.env` file (comments, blank lines and `export ` allowed; quotes removed)."""
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def stack_env_file(folder: Path) -> dict[str, str]:
    """A stack's own `.env` (compose reads it for interpolation from the project directory); {} if none."""
    path = folder / ".env"
    return read_dotenv(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else {}

"""Which stacks a set of changed paths affects."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from deployer.model import Stack

__all__ = ["glob_regex", "reasons_for"]


def reasons_for(stack: Stack, changed_paths: Iterable[str]) -> tuple[str, ...]:
    """The changed paths that affect `stack`, sorted; empty when it is unaffected.

    A path affects a stack when it lies inside the stack's folder (compose file, x-deployer block,
    configs), is one of its secret files (a rotated secret must reach the containers even when
    compose.yaml is untouched), is the shared.env every stack reads, or matches one of its `watch` globs.
    """
    folder = f"{stack.folder}/"
    secrets = {str(path) for path in (*stack.secrets, *([stack.shared_file] if stack.shared_file else []))}
    watch = [glob_regex(pattern) for pattern in stack.watch]
    return tuple(
        sorted(
            path
            for path in changed_paths
            if path.startswith(folder) or path in secrets or any(rx.fullmatch(path) for rx in watch)
        )
    )


@functools.lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a repository glob: `**` spans folders, `*` and `?` stay inside one path segment.

    `shared/tls/**` matches every file below shared/tls; `shared/*.pem` only files directly in shared.
    A pattern naming a folder (no wildcard) matches everything below it too.
    """
    parts = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        parts.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
        index += 1
    body = "".join(parts)
    if not any(c in pattern for c in "*?"):
        body += "(?:/.*)?"
    return re.compile(body)

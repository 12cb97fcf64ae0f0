"""The one place that spawns processes (sops, docker, docker compose).

Everything else builds argv in pure functions and hands it to a `CommandRunner`, so tests can check
argv without patching anything, and a remote engine can later be reached by another runner.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["CommandRunner", "Completed", "SubprocessRunner"]


@dataclass(frozen=True)
class Completed:
    """A finished command. `stdout` and `stderr` are text; callers redact before showing them."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandRunner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> Completed:
        """Run argv with exactly `env` as its environment and `stdin` as its input; never raise for a failure."""
        ...

    def interactive(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None) -> int:
        """Run argv attached to this terminal (an editor); return its exit code."""
        ...


class SubprocessRunner:
    """Runs commands as local child processes with an explicit environment."""

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> Completed:
        started = time.monotonic()
        given = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        try:
            proc = subprocess.run(
                list(argv),
                env=dict(env),
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                **given,
            )
        except FileNotFoundError:
            return Completed(tuple(argv), 127, "", f"{argv[0]}: command not found", 0.0)
        except subprocess.TimeoutExpired as expired:
            out = _text(expired.stdout)
            err = _text(expired.stderr) + f"\n{argv[0]}: timed out after {timeout:.0f}s"
            return Completed(tuple(argv), 124, out, err, time.monotonic() - started)
        return Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)

    def interactive(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None) -> int:
        try:
            return subprocess.run(list(argv), env=dict(env), cwd=cwd, check=False).returncode
        except FileNotFoundError:
            return 127


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data

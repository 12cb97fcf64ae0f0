"""Rendering for the terminal: live per-stack progress and the closing summary table."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from deployer.model import Outcome, Plan, StackResult, StackState

__all__ = ["ConsoleProgress", "format_plan", "format_summary", "table"]

_FINAL = {StackState.SUCCEEDED, StackState.FAILED, StackState.SKIPPED, StackState.ROLLED_BACK}
_MARK = {StackState.SUCCEEDED: "ok", StackState.FAILED: "FAILED", StackState.SKIPPED: "skipped",
         StackState.ROLLED_BACK: "rolled back", StackState.RUNNING: "started"}  # fmt: skip


class ConsoleProgress:
    """Prints each stack's start and end as it happens, and what runs and waits while time passes.

    On a terminal a status line is redrawn in place; elsewhere (CI logs, pipes) a plain line is
    printed every `interval` seconds while stacks run.
    """

    def __init__(self, out: TextIO = sys.stderr, *, interval: float | None = None) -> None:
        self.out = out
        self.tty = out.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.started = time.monotonic()
        self._running: dict[str, float] = {}
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def phase(self, text: str) -> None:
        self._print(f"{self._clock()} {text}")

    def planned(self, plan: Plan) -> None:
        with self._lock:
            self._pending = [s.name for s in plan.runnable]

    def stack(self, result: StackResult) -> None:
        with self._lock:
            if result.state is StackState.RUNNING:
                self._running[result.name] = time.monotonic()
                if result.name in self._pending:
                    self._pending.remove(result.name)
            else:
                self._running.pop(result.name, None)
                if result.name in self._pending:
                    self._pending.remove(result.name)
        took = "" if result.duration is None or result.state not in _FINAL else f" in {result.duration:.1f}s"
        detail = f": {result.error}" if result.error and result.state is not StackState.SUCCEEDED else ""
        self._print(f"{self._clock()} {result.name} {result.action} {_MARK[result.state]}{took}{detail}")
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.tty:
            self.out.write("\r\033[K")
            self.out.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            line = self._status_line()
            if not line:
                continue
            if self.tty:
                self.out.write(f"\r\033[K{line}")
                self.out.flush()
            else:
                self._print(line)

    def _status_line(self) -> str:
        now = time.monotonic()
        with self._lock:
            running = ", ".join(f"{name} ({now - t:.0f}s)" for name, t in sorted(self._running.items()))
            waiting = ", ".join(self._pending)
        if not running and not waiting:
            return ""
        return f"{self._clock()} running: {running or '-'} | waiting: {waiting or '-'}"

    def _print(self, line: str) -> None:
        with self._lock:
            prefix = "\r\033[K" if self.tty else ""
            self.out.write(f"{prefix}{line}\n")
            self.out.flush()

    def _clock(self) -> str:
        return f"[{time.monotonic() - self.started:6.1f}s]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table (the last column is not padded)."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def format_plan(plan: Plan) -> str:
    base = plan.base[:12] if plan.base else "nothing"
    lines = [f"plan {base} -> {plan.target[:12]}"]
    if not plan.stacks:
        lines.append("no stack is affected")
    else:
        lines.append(table(["STACK", "ACTION", "WHY"], [[s.name, s.action, ", ".join(s.reasons)] for s in plan.stacks]))
    if plan.order:
        lines.append("order: " + " -> ".join("{" + ", ".join(level) + "}" for level in plan.order))
    return "\n".join(lines)


def format_summary(outcome: Outcome) -> str:
    lines = []
    in_order = sorted(outcome.results, key=lambda r: (r.started_at is None, r.started_at or 0.0))
    if outcome.results:
        rows = [
            [r.name, r.action, r.state, "" if r.duration is None else f"{r.duration:.1f}s", r.error or ""]
            for r in in_order
        ]
        lines.append(table(["STACK", "ACTION", "RESULT", "TIME", "DETAIL"], rows))
    for result in outcome.results:
        if result.state is StackState.FAILED and result.output:
            tail = result.output.splitlines()[-15:]
            lines.append(f"\n--- {result.name}: last lines of compose output ---")
            lines.extend(f"  {line}" for line in tail)
    counts = {state: sum(r.state is state for r in outcome.results) for state in StackState}
    done = f"{counts[StackState.SUCCEEDED]} of {len(outcome.results)} stacks succeeded"
    commit = (outcome.commit or "")[:12]
    if outcome.error and not outcome.results:
        lines.append(f"deployment {outcome.deployment_id} failed: {outcome.error}")
    else:
        lines.append(f"deployment {outcome.deployment_id} {outcome.state} at {commit or '-'}: {done}")
    return "\n".join(lines)

"""The deploy lock: one deployment at a time per state directory, across processes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deployer.errors import BusyError

__all__ = ["deploy_lock", "plan_lock"]


@contextmanager
def deploy_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's deploy lock; raise BusyError at once if another process has it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "deploy.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"another deployment is running (lock {path} is held)") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def plan_lock(state_dir: Path) -> Iterator[None]:
    """Hold the planning tree's lock, waiting for another `deployer plan` to finish with it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "plan.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

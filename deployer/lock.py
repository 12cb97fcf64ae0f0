"""The deploy lock: one deployment at a time per state directory, across processes; and the worker lock:
one deploy worker per state directory."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deployer.errors import BusyError

__all__ = ["deploy_lock", "plan_lock", "worker_lock"]

log = logging.getLogger("deployer.lock")


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


@contextmanager
def worker_lock(state_dir: Path, *, stop: threading.Event, poll: float = 1.0) -> Iterator[bool]:
    """Hold the state directory's worker lock for a deploy worker's life; yield True once held.

    A second worker on the same state directory (a second `deployer serve`) waits here, said once in the
    log, and takes over when the first stops; it never resumes, claims or fetches meanwhile. Yields False
    if `stop` is set while it waits.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "worker.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    log.warning("another deploy worker (pid %s) holds %s: this one waits, and takes over when it"
                                " stops", holder, path)  # fmt: skip
                    waited = True
                if stop.wait(poll):
                    yield False
                    return
        if waited:
            log.info("took over the deploy worker's lock %s", path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)

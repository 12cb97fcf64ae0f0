"""The deploy worker's doorbell: a FIFO in the state directory that whoever queues a deployment rings.

The worker waits on it between looks at the queue, so a deployment queued by a web worker starts at
once instead of at the worker's next look; a ring nobody hears (no worker yet, or the FIFO full of
earlier rings) costs nothing and loses nothing: the queue itself is the record, the bell only says
"look now". A FIFO rather than a socket: it works wherever the state directory is, whatever its path
length, and needs no port.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from contextlib import suppress
from pathlib import Path

__all__ = ["Doorbell"]


class Doorbell:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "worker.wake"
        self._read: int | None = None
        self._keep: int | None = None

    def ring(self) -> None:
        """Tell a waiting worker to look at the queue now; never blocks, never raises."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no worker listens; ENOENT: none ever did; anything else: it polls anyway
            return
        try:
            with suppress(OSError):  # EAGAIN: already rung, unheard yet
                os.write(fd, b"\0")
        finally:
            os.close(fd)

    def listen(self) -> None:
        """Make the FIFO (replacing anything else at its path) and hold it open for reading."""
        with suppress(FileNotFoundError):
            if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                os.unlink(self.path)
        with suppress(FileExistsError):
            os.mkfifo(self.path, 0o600)
        self._read = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # so that a ringer's close is no EOF

    def wait(self, timeout: float) -> bool:
        """Wait until rung or `timeout` seconds pass; return whether it was rung (every ring so far heard)."""
        if self._read is None:
            raise RuntimeError("listen() first")
        poller = select.poll()  # not select(): a process with many files open has fds past FD_SETSIZE
        poller.register(self._read, select.POLLIN)
        if not poller.poll(max(0.0, timeout) * 1000):
            return False
        try:
            while os.read(self._read, 4096):
                pass
        except OSError as error:
            if error.errno != errno.EAGAIN:
                raise
        return True

    def close(self) -> None:
        for fd in (self._read, self._keep):
            if fd is not None:
                os.close(fd)
        self._read = self._keep = None

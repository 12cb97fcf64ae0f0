"""The web workers' gunicorn worker class: gunicorn's sync worker, with requests read whole first.

**Whole requests first.** A sync worker serves one connection at a time, so a client that sends its
request a byte a second (slow, or hostile) held a worker until gunicorn's timeout: two such clients
held both web workers for 10 s, and deliveries waited. Like a buffering proxy (nginx, Traefik's
`buffering` middleware), this worker takes every connection into a hall as it arrives and reads
what each sends without blocking; only a request that has arrived whole (its headers and its
Content-Length body, or a chunked body's last chunk) is handed to gunicorn's parser and the app, in
arrival order. One that has not within REQUEST_DEADLINE is answered 408 and closed. The app's
MAX_CONTENT_LENGTH still answers 413: the hall stops reading at that size and hands the request on.

**No wait after an answer.** gunicorn closes each connection gracefully (RFC 9112 section 9.6): it
half-closes, then waits up to 2 s for the client to close its side, so that request bytes still
arriving cannot make the kernel reset the connection before the client has read the answer. A sync
worker serves nobody while it waits, and under 50 concurrent senders waiting for each sender's close
took a fifth of the service's throughput (docs/benchmarks.md). Like nginx's `lingering_close on`,
this worker waits only when the client may still be sending: when the application left part of the
request body unread, or more bytes have already arrived. Otherwise it closes at once.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

__all__ = ["REQUEST_DEADLINE", "SyncWorker", "complete"]

#: seconds a client has to send its whole request, from its connection, before it is answered 408
REQUEST_DEADLINE = 10.0
#: connections a web worker keeps waiting at most; past this the oldest is answered 503
HALL_SIZE = 512
#: headers past this many bytes make a request "whole": the parser answers it (431-like 400)
HEADER_LIMIT = 64 * 1024
_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_FULL_ANSWER = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 5\r\n\r\n"


class SyncWorker(GunicornSyncWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    def run(self) -> None:
        """gunicorn's sync loop, with a hall in front: accept everything, read without blocking, serve
        whole requests one at a time in the order they became whole."""
        for listener in self.sockets:
            listener.setblocking(False)
        limit = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH") or 1024 * 1024
        hall = _Hall(body_limit=int(limit))
        while self.alive:
            self.notify()
            if not self.is_parent_alive():
                return
            # A look at every socket each time round, not only when no connection waits: under a steady
            # burst the listener is always ready, and requests still arriving must be read meanwhile.
            try:
                readable = _readable([*self.sockets, self.PIPE[0], *hall.sockets()], hall.wait(self.timeout or 0.5))
            except OSError as error:
                if error.errno in (errno.EINTR, errno.EBADF):
                    continue
                raise
            for ready in readable:
                if ready == self.PIPE[0]:
                    os.read(self.PIPE[0], 1)
                elif ready in self.sockets:
                    self._accept_one(ready, hall)
                else:
                    hall.read(ready)
            hall.expire(time.monotonic())
            while self.alive and (whole := hall.next_whole()) is not None:  # in the order they became whole
                self.notify()
                whole.client.setblocking(True)
                self.handle(whole.listener, _Buffered(whole.client, bytes(whole.data)), whole.addr)

    def _accept_one(self, listener: socket.socket, hall: _Hall) -> bool:
        """Take one connection into the hall, if one waits: one per look, as gunicorn's sync worker takes
        them, so that the other web workers take their share of a burst."""
        try:
            client, addr = listener.accept()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                return False
            raise
        util.close_on_exec(client)
        client.setblocking(False)
        hall.add(_Waiting(client, addr, listener, time.monotonic() + REQUEST_DEADLINE))
        return True

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> None:
        super().handle_request(listener, req, client, addr)
        if read_whole(req.body, client):
            client.close()  # gunicorn's graceful close, which follows, finds it closed and returns


@dataclass
class _Waiting:
    client: socket.socket
    addr: Any
    listener: socket.socket
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    continued: bool = False


class _Hall:
    """The connections whose requests are still arriving, and the whole ones waiting to be served."""

    def __init__(self, *, body_limit: int) -> None:
        self.body_limit = body_limit
        self.waiting: dict[socket.socket, _Waiting] = {}
        self.whole: deque[_Waiting] = deque()

    def sockets(self) -> list[socket.socket]:
        return list(self.waiting)

    def wait(self, longest: float) -> float:
        """How long select may wait: not past the first deadline, and not at all while a request is whole."""
        if self.whole:
            return 0.0
        if not self.waiting:
            return longest
        return max(0.0, min(longest, min(w.deadline for w in self.waiting.values()) - time.monotonic()))

    def add(self, waiting: _Waiting) -> None:
        if len(self.waiting) >= HALL_SIZE:
            oldest = min(self.waiting.values(), key=lambda w: w.deadline)
            self._answer(oldest, _FULL_ANSWER)
        self.waiting[waiting.client] = waiting
        self.read(waiting.client)  # a fast client's request is often there already

    def read(self, client: socket.socket) -> None:
        waiting = self.waiting.get(client)
        if waiting is None:
            return
        try:
            chunk = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(waiting)
            return
        if not chunk:  # the client gave up before its request was whole
            self._drop(waiting)
            return
        waiting.data += chunk
        state = complete(waiting.data, body_limit=self.body_limit)
        if state == "continue" and not waiting.continued:
            waiting.continued = True
            _send(client, b"HTTP/1.1 100 Continue\r\n\r\n")
        elif state == "whole":
            del self.waiting[client]
            self.whole.append(waiting)

    def expire(self, now: float) -> None:
        for waiting in [w for w in self.waiting.values() if w.deadline <= now]:
            self._answer(waiting, _TIMEOUT_ANSWER)

    def next_whole(self) -> _Waiting | None:
        return self.whole.popleft() if self.whole else None

    def _answer(self, waiting: _Waiting, answer: bytes) -> None:
        _send(waiting.client, answer)
        self._drop(waiting)

    def _drop(self, waiting: _Waiting) -> None:
        self.waiting.pop(waiting.client, None)
        waiting.client.close()


def complete(data: bytes | bytearray, *, body_limit: int) -> str:
    """Whether `data` holds a whole HTTP/1.1 request: "whole", "partial", or "continue" (the headers are
    in, the client waits for 100 Continue before its body). Anything malformed counts as whole: gunicorn's
    parser answers it."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return "whole" if len(data) > HEADER_LIMIT else "partial"
    head = bytes(data[:end]).decode("latin-1").lower()
    body = len(data) - end - 4
    lines = head.split("\r\n")[1:]
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    if "chunked" in fields.get("transfer-encoding", ""):
        if body > body_limit or _chunks_end(bytes(data[end + 4 :])):
            return "whole"
        return "continue" if body == 0 and "100-continue" in fields.get("expect", "") else "partial"
    try:
        length = int(fields.get("content-length", "0").strip())
    except ValueError:
        return "whole"
    if body >= min(length, body_limit + 1):
        return "whole"
    return "continue" if body == 0 and "100-continue" in fields.get("expect", "") else "partial"


def _chunks_end(body: bytes) -> bool:
    """Whether a chunked `body` has arrived to its end: the last chunk (size 0, perhaps with extensions)
    and its trailer fields, if any, up to the empty line. Anything malformed counts: the parser answers it."""
    at = 0
    while True:
        line_end = body.find(b"\r\n", at)
        if line_end < 0:
            return len(body) - at > HEADER_LIMIT
        try:
            size = int(body[at:line_end].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return True
        if size < 0:
            return True
        if size == 0:
            trailers = body[line_end + 2 :]
            return trailers.startswith(b"\r\n") or b"\r\n\r\n" in trailers or len(trailers) > HEADER_LIMIT
        at = line_end + 2 + size + 2
        if at > len(body):
            return False


def _readable(watched: list[Any], timeout: float) -> list[Any]:
    """Which of `watched` (sockets and fds) can be read, waiting at most `timeout` seconds. poll(), not
    select(): a hall of hundreds of connections has fds past select's FD_SETSIZE (1024)."""
    poller = select.poll()
    by_fd = {}
    for item in watched:
        fd = item if isinstance(item, int) else item.fileno()
        by_fd[fd] = item
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(max(0.0, timeout) * 1000)]


def _send(client: socket.socket, data: bytes) -> None:
    with suppress(OSError):  # a client gone already
        client.send(data)  # non-blocking: a few bytes into an empty send buffer


class _Buffered:
    """A client socket whose request has been read already: gunicorn's parser reads it from here first."""

    def __init__(self, client: socket.socket, data: bytes) -> None:
        self._client = client
        self._data = data

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._data:
            chunk = self._data[:size]
            if not flags & socket.MSG_PEEK:
                self._data = self._data[size:]
            return chunk
        return self._client.recv(size, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def read_whole(body: Any, client: Any) -> bool:
    """Whether the client has sent nothing beyond the request the application read (`body`: its
    wsgi.input). Reads without blocking; the connection is about to be closed either way."""
    client.setblocking(False)
    try:
        if body.read(1):
            return False  # the application left part of the body unread...
    except BlockingIOError:
        return False  # ...and more of it is on its way
    except OSError:
        return True  # the connection is already gone: nothing to wait for
    try:
        return bool(client.recv(1, socket.MSG_PEEK) == b"")  # b"": the client has closed its side already
    except BlockingIOError:
        return True  # nothing more has arrived
    except OSError:
        return True

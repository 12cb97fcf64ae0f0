"""The web workers' gunicorn worker class: gunicorn's sync worker, without the wait after an answer.

gunicorn closes each connection gracefully (RFC 9112 section 9.6): it half-closes, then waits up to
2 s for the client to close its side, so that request bytes still arriving cannot make the kernel
reset the connection before the client has read the answer. A sync worker serves nobody while it
waits, and under 50 concurrent senders waiting for each sender's close took a fifth of the service's
throughput (docs/benchmarks.md). Like nginx's `lingering_close on`, this worker waits only when the
client may still be sending: when the application left part of the request body unread, or more
bytes have already arrived. Otherwise nothing is left to reset, and it closes at once.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

__all__ = ["SyncWorker"]


class SyncWorker(GunicornSyncWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    def handle_request(self, listener: Any, req: Any, client: socket.socket, addr: Any) -> None:
        super().handle_request(listener, req, client, addr)
        if read_whole(req.body, client):
            client.close()  # gunicorn's graceful close, which follows, finds it closed and returns


def read_whole(body: Any, client: socket.socket) -> bool:
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
        return client.recv(1, socket.MSG_PEEK) == b""  # b"": the client has closed its side already
    except BlockingIOError:
        return True  # nothing more has arrived
    except OSError:
        return True

"""When a web worker may close a connection at once (deployer.web.gunicorn_worker.read_whole).

Requests are parsed by gunicorn's own parser from one end of a real socket pair; the test plays the
client on the other end. Closing at once is safe only when the kernel holds nothing more from the
client and nothing more is coming: then a close sends FIN, never a reset that could erase the answer.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn import http
from gunicorn.config import Config

from deployer.web.gunicorn_worker import _Buffered, complete, read_whole

HEAD = b"POST /webhook HTTP/1.1\r\nHost: deployer\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.settimeout(5)
    yield server, client
    server.close()
    client.close()


def parse(server: socket.socket) -> Any:
    return next(http.get_parser(Config(), server, ("127.0.0.1", 40000)))


def test_a_request_read_whole_with_nothing_after_it_closes_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(HEAD % 2 + b"{}")
    request = parse(server)
    assert request.body.read() == b"{}"
    assert read_whole(request.body, server)


def test_a_body_left_unread_waits(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(HEAD % 4 + b"{}{}")
    request = parse(server)  # an application that answers (413, 401) without reading the body
    assert not read_whole(request.body, server)


def test_a_body_still_on_its_way_waits(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(HEAD % 1000 + b"{")
    request = parse(server)  # an application that answers before the body has arrived
    assert not read_whole(request.body, server)


def test_bytes_sent_after_the_request_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(HEAD % 2 + b"{}")
    request = parse(server)
    assert request.body.read() == b"{}"
    client.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")  # a pipelined request: closing now would reset it
    assert not read_whole(request.body, server)


def test_a_client_that_closed_already_closes_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(HEAD % 2 + b"{}")
    client.shutdown(socket.SHUT_WR)
    request = parse(server)
    assert request.body.read() == b"{}"
    assert read_whole(request.body, server)


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (b"POST /webhook HTTP/1.1\r\nHost: d\r\n", "partial"),
        (HEAD % 2 + b"{", "partial"),
        (HEAD % 2 + b"{}", "whole"),
        (b"GET /healthz HTTP/1.1\r\nHost: d\r\n\r\n", "whole"),
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n", "continue"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", "partial"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "whole"),
        (b"POST / HTTP/1.1\r\nContent-Length: nine\r\n\r\n", "whole"),  # malformed: the parser answers it
        (HEAD % 10_000_000 + b"x" * 101, "whole"),  # past the body limit: the app answers 413
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, "whole"),  # endless headers: the parser refuses them
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x=1\r\n{}\r\n0;y\r\nT: 1\r\n\r\n", "whole"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nT: 1\r\n", "partial"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n0\r\n\r\n", "partial"),  # data, not the end
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n", "whole"),  # the parser answers it
    ],
    ids=["head-partial", "body-partial", "body-whole", "no-body", "expect", "chunked-partial", "chunked-whole",
         "bad-length", "over-limit", "huge-headers", "chunked-trailer", "chunked-trailer-partial",
         "chunked-data-looks-like-end", "chunked-bad-size"],
)  # fmt: skip
def test_complete_knows_a_whole_request(data: bytes, state: str) -> None:
    """A web worker hands a request to gunicorn's parser only once it is whole (or past reading further)."""
    assert complete(data, body_limit=100) == state


def test_a_buffered_request_is_parsed_from_the_hall_then_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    """What the hall read is given to gunicorn's parser first; anything after it comes from the socket."""
    server, client = pair
    client.sendall(b"}")
    request = parse(_Buffered(server, HEAD % 2 + b"{"))  # type: ignore[arg-type]
    assert request.body.read() == b"{}"

"""Every request's body read once, before any view: its framing checked and its size bounded.

Werkzeug bounds a body by MAX_CONTENT_LENGTH from its Content-Length; a chunked body has none, and
Werkzeug then cuts it at the limit without a word (a delivery cut short fails its signature: a 401
that hides the cause). gunicorn raises on a broken chunk while a view reads (a 500). Here a chunked body
past the limit is a 413 and broken framing a 400, before any view runs; the views read the cached bytes.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import RequestEntityTooLarge

from deployer.errors import EventError

__all__ = ["install"]

_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def install(app: Flask) -> None:
    """Read each request's body before its view (after identity: a stranger's body is not read)."""
    app.before_request(_read_body)


def _read_body() -> None:
    if request.method in _BODILESS and not request.headers.get("Transfer-Encoding"):
        return
    try:
        request.get_data(cache=True)
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        cut_short = chunked and bool(request.environ["wsgi.input"].read(1))
    except (ParseException, OSError, ValueError) as error:
        raise EventError(f"malformed request body: {error}") from None
    if cut_short:  # a chunked body went on past the limit
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        raise RequestEntityTooLarge(f"the body is over {limit} bytes (DEPLOYER_MAX_BODY)")

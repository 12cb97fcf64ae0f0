"""The one table from deployer errors to HTTP answers, and the handlers that apply it."""

from __future__ import annotations

import logging
from typing import Final

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from deployer.errors import (
    AuthenticationError,
    AuthorizationError,
    DeployerError,
    EventError,
    PlanError,
    RefNotFoundError,
    SignatureError,
    StateUnavailableError,
    UnknownStackError,
)
from deployer.receive.forges import any_delivery_id
from deployer.web.auth import refused
from deployer.web.identity import KeySetUnavailableError

__all__ = ["HTTP_STATUS", "register"]

log = logging.getLogger("deployer.web")

#: most specific first: the first class the error is an instance of decides
HTTP_STATUS: Final[dict[type[DeployerError], int]] = {
    SignatureError: 401,
    KeySetUnavailableError: 503,
    StateUnavailableError: 503,
    AuthenticationError: 401,
    AuthorizationError: 403,
    EventError: 400,
    UnknownStackError: 422,
    PlanError: 404,
    RefNotFoundError: 404,
}


def register(app: Flask) -> None:
    app.register_error_handler(DeployerError, _deployer_error)
    app.register_error_handler(HTTPException, _http_error)


def _deployer_error(error: DeployerError) -> ResponseReturnValue:
    status = next((code for kind, code in HTTP_STATUS.items() if isinstance(error, kind)), 500)
    log.warning("%s %s -> %d %s: %s%s", request.method, request.path, status, error.code, error.message, _who())
    refused(error.code, error.message)
    answer = jsonify(error=error.code, message=error.message)
    if status == 401 and isinstance(error, AuthenticationError):
        answer.headers["WWW-Authenticate"] = 'Bearer realm="deployer"'
    if isinstance(error, StateUnavailableError):  # the forge shows the 503; nothing was queued or recorded
        log.error("%s %s: the state store cannot be written, nothing queued: %s", request.method, request.path,
                  error.message)  # fmt: skip
        answer.headers["Retry-After"] = "60"
    return answer, status


def _http_error(error: HTTPException) -> ResponseReturnValue:
    status = error.code or 500
    if status >= 400 and status != 404:
        log.warning("%s %s -> %d: %s%s", request.method, request.path, status, error.description, _who())
    refused(error.name.lower().replace(" ", "_"), str(error.description))
    return jsonify(error=error.name.lower().replace(" ", "_"), message=error.description), status


def _who() -> str:
    """The delivery id and peer, so a rejected request can be found in the forge's delivery log."""
    delivery = any_delivery_id(request.headers.get)
    return f" (from {request.remote_addr}{f', delivery {delivery}' if delivery else ''})"

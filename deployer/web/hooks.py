"""POST /webhook: verify, parse, queue, answer 202 — before any git or docker work."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from deployer.errors import SignatureError
from deployer.receive import HeaderMap, Ignored, detect_forge, parse_delivery, verify_signature
from deployer.receive.events import signed_bytes
from deployer.receive.signature import signature_header
from deployer.web.context import Service

__all__ = ["hooks"]

log = logging.getLogger("deployer.web")
hooks = Blueprint("hooks", __name__)


@hooks.post("/webhook")
def webhook() -> ResponseReturnValue:
    service = Service.current(current_app)
    body = request.get_data(cache=True)  # raw bytes first: 413 past MAX_CONTENT_LENGTH
    headers = HeaderMap.from_environ(request.environ)
    forge = detect_forge(headers)
    if forge is None:
        raise SignatureError("not a GitHub, Gitea, Forgejo or GitLab delivery: no event or signature header")
    if signature_header(forge, headers) is None:
        raise SignatureError(f"{forge} delivery carries no signature")
    signed = signed_bytes(forge, headers, body)
    verify_signature(forge, signed=signed, headers=headers, secret=service.settings.webhook_secret)
    event = parse_delivery(
        forge, headers, signed, branch=service.settings.branch, object_format=service.object_format()
    )
    if isinstance(event, Ignored):
        log.info("webhook from %s ignored: %s", forge, event.reason)
        return jsonify(ignored=event.reason), 200
    enqueued = service.enqueue_push(event)
    if enqueued.duplicate_of is not None:
        log.info("webhook from %s ignored: duplicate delivery %s", forge, event.delivery_id)
        return jsonify(ignored=f"duplicate delivery {event.delivery_id}", deployment_id=enqueued.duplicate_of), 200
    log.info("webhook from %s queued %s for %s", forge, enqueued.deployment_id, event.after[:12])
    return jsonify(deployment_id=enqueued.deployment_id), 202

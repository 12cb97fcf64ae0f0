"""POST /webhook: verify, parse, queue, answer 202 — before any git or docker work."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from deployer.errors import SignatureError
from deployer.receive import HeaderMap, Ignored, PullRequestEvent, detect_forge, parse_delivery, verify_signature
from deployer.receive.events import signed_bytes
from deployer.receive.signature import signature_header
from deployer.report.metrics import WEBHOOK_DELIVERIES
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
        g.ignored = event.kind
        return jsonify(ignored=event.reason), 200
    if isinstance(event, PullRequestEvent):  # never deployed, a fork's or not: previewed
        queued = service.enqueue_preview(event)
        if queued.duplicate_of is not None:
            g.ignored = "duplicate"
            return jsonify(ignored=f"duplicate delivery {event.delivery_id}", preview_id=queued.duplicate_of), 200
        log.info("webhook from %s queued preview %s of #%d at %s", forge, queued.preview_id, event.number,
                 event.head[:12])  # fmt: skip
        g.preview = True
        return jsonify(preview_id=queued.preview_id), 202
    enqueued = service.enqueue_push(event)
    if enqueued.duplicate_of is not None:
        log.info("webhook from %s ignored: duplicate delivery %s", forge, event.delivery_id)
        g.ignored = "duplicate"
        return jsonify(ignored=f"duplicate delivery {event.delivery_id}", deployment_id=enqueued.duplicate_of), 200
    log.info("webhook from %s queued %s for %s", forge, enqueued.deployment_id, event.after[:12])
    return jsonify(deployment_id=enqueued.deployment_id), 202


#: a refused delivery's HTTP status, as the reason deployer_webhook_deliveries_total gives it
_REJECTED = {400: "malformed", 401: "signature", 413: "too_large", 503: "unavailable"}


@hooks.after_request
def _count(response: Response) -> Response:
    """One count per delivery: forge, outcome and a word for why (bounded: no value from the request)."""
    forge = detect_forge(HeaderMap.from_environ(request.environ))
    status = response.status_code
    if status == 202:
        outcome, reason = "accepted", "preview" if g.get("preview") else "queued"
    elif status == 200:
        outcome, reason = "ignored", g.get("ignored", "other")
    else:
        outcome, reason = "rejected", _REJECTED.get(status, "other")
    try:
        WEBHOOK_DELIVERIES.labels(str(forge) if forge else "unknown", outcome, reason).inc()
    except OSError as error:  # its file could not grow (a full /tmp): the delivery's answer matters more
        log.warning("webhook delivery not counted in /metrics: %s", error)
    return response

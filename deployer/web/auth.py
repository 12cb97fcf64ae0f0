"""The gate in front of /api and the pages: who is asking (deployer.web.identity) and may they.

Every path is guarded except PUBLIC_PATHS (the webhook, liveness, readiness, metrics), which never
look at `X-authentik-*` headers: a route added later is closed until it is listed here. Readers are
DEPLOYER_VIEW_GROUPS and DEPLOYER_DEPLOY_GROUPS; anything but GET/HEAD/OPTIONS needs a deploy
group. No identity is 401, a missing group 403. Every refused write, whatever refused it (the gate,
a bad body, an unknown stack or ref, a body over the limit, a missing CSRF token), leaves one
`request.refused` in the audit trail naming who tried: the error handlers say why (`refused`),
and `_audit_refused_write` records it once the answer is made. Handlers find the caller on
`flask.g.identity`.
"""

from __future__ import annotations

import logging
from typing import Final

from flask import Flask, Response, current_app, g, request

from deployer.errors import AuthenticationError, AuthorizationError, StateUnavailableError
from deployer.model import told
from deployer.receive.forges import any_delivery_id
from deployer.settings import Settings
from deployer.web.context import Service
from deployer.web.identity import Identifier, Identity, KeySet

__all__ = ["ANONYMOUS", "PUBLIC_PATHS", "Gate", "current_identity", "install", "refused"]

log = logging.getLogger("deployer.web")

#: answered to anyone, identity never read: forges, health checks and Prometheus cannot sign in
PUBLIC_PATHS: Final = frozenset({"/webhook", "/healthz", "/readyz", "/metrics"})
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: who DEPLOYER_INSECURE_OPEN_API lets everyone be
ANONYMOUS: Final = Identity("anonymous", frozenset(), None, "open")
CLOSED: Final = (
    "the API is closed: no identity is configured. Set DEPLOYER_TRUSTED_PROXIES to the proxy that runs "
    "Authentik's forward auth (and DEPLOYER_AUTHENTIK_JWKS_URL to check its tokens), or "
    "DEPLOYER_INSECURE_OPEN_API=true for an install only reachable from this machine"
)
#: browsers say where a request comes from; a write started by another site is refused (no CSRF on /api)
CROSS_SITE: Final = frozenset({"cross-site", "same-site"})


def install(app: Flask, settings: Settings, *, keys: KeySet | None = None) -> Gate:
    """Guard `app`, and say in the log how it is guarded."""
    gate = Gate(settings, keys=keys)
    app.before_request(gate.check)
    app.after_request(_audit_refused_write)
    gate.announce()
    return gate


def refused(code: str, message: str) -> None:
    """What an error handler answers: the reason a refused write is audited with."""
    g.refusal = (code, message)


def _audit_refused_write(response: Response) -> Response:
    """after_request: a write to a guarded path that was refused (4xx, or 503 when identity cannot be
    checked) leaves `request.refused` naming who tried, or who the request claimed to be. A delivery
    the webhook refuses (bad signature, malformed, too large) does too, naming its delivery id and
    peer; X-authentik-* headers are never read there."""
    status = response.status_code
    if request.method in READ_METHODS or not (400 <= status < 500 or status == 503):
        return response
    code, message = g.get("refusal") or (str(status), response.status)
    if code == StateUnavailableError.code:
        return response  # the store cannot take the event either: the log line of the answer says it
    try:
        _tell_refused(status, code, message)
    except StateUnavailableError as error:
        log.error("request.refused not recorded (%s %s -> %d): %s", request.method, request.path, status,
                  error.message)  # fmt: skip
    return response


def _tell_refused(status: int, code: str, message: str) -> None:
    if request.path == "/webhook":
        delivery = any_delivery_id(request.headers.get)
        Service.current(current_app).store.tell(told("request.refused", {
            "deployment_id": None, "commit": None, "reason": f"{code}: {message}", "status": status,
            "delivery_id": delivery[:200] if delivery else None, "peer": request.remote_addr,
            "method": request.method, "path": request.path,
        }))  # fmt: skip
        return
    if request.path in PUBLIC_PATHS:
        return
    identity: Identity | None = g.get("identity") or g.get("attempted")
    claimed = request.headers.get("X-authentik-username")
    Service.current(current_app).store.tell(told("request.refused", {
        "deployment_id": None, "commit": None, "reason": f"{code}: {message}", "status": status,
        "actor": identity.username if identity else None,
        "claimed_user": claimed[:200] if claimed and identity is None else None,
        "via": identity.via if identity else None,
        "peer": request.remote_addr, "method": request.method, "path": request.path,
    }))  # fmt: skip


def current_identity() -> Identity | None:
    """Who the gate let through for this request (None on the public paths)."""
    found: Identity | None = g.get("identity")
    return found


class Gate:
    def __init__(self, settings: Settings, *, keys: KeySet | None = None) -> None:
        self.settings = settings
        self.configured = bool(
            settings.trusted_proxies or settings.authentik_jwks_url or settings.authentik_client_secret
        )
        self.open = settings.insecure_open_api and not self.configured
        self.identifier = Identifier(settings, keys=keys) if self.configured else None
        self.writers = frozenset(settings.deploy_groups)
        self.readers = frozenset(settings.view_groups) | self.writers

    def announce(self) -> None:
        s = self.settings
        if self.open:
            log.warning("DEPLOYER_INSECURE_OPEN_API=true: /api and the pages answer anyone, as an anonymous "
                        "deployer; only for an install no one else can reach")  # fmt: skip
            return
        if not self.configured:
            log.warning("/api and the pages are closed (401): %s", CLOSED.split(": ", 1)[1])
            return
        if s.insecure_open_api:
            log.warning("DEPLOYER_INSECURE_OPEN_API ignored: identity is configured, so /api requires it")
        if not (s.authentik_jwks_url or s.authentik_client_secret):
            log.warning("identity from the X-authentik-* headers of %s, no token checked (neither"
                        " DEPLOYER_AUTHENTIK_CLIENT_SECRET nor DEPLOYER_AUTHENTIK_JWKS_URL): anything that can"
                        " connect from there can name any user", ", ".join(map(str, s.trusted_proxies)))  # fmt: skip
        elif s.authentik_jwks_url and not s.authentik_audience:
            log.warning("DEPLOYER_AUTHENTIK_AUDIENCE is not set: tokens of any application signed by that key "
                        "set are accepted")  # fmt: skip
        if not self.writers:
            log.warning("DEPLOYER_DEPLOY_GROUPS is empty: no one can deploy through the API")

    def check(self) -> None:
        """before_request: let the request on with `g.identity` set, or raise the 401/403 it gets."""
        if request.path in PUBLIC_PATHS:
            return
        write = request.method not in READ_METHODS
        identity = g.attempted = self._identity()  # (the refusal of a write names who tried)
        self._authorize(identity, write=write)
        g.identity = identity

    def _identity(self) -> Identity:
        if self.open:
            return ANONYMOUS
        if self.identifier is None:
            raise AuthenticationError(CLOSED)
        found = self.identifier.identify(request.remote_addr, request.headers)
        if found is None:
            how = "sign in through Authentik" + (" or send Authorization: Bearer" if self.identifier.verifier else "")
            raise AuthenticationError(f"no identity: {how} (X-authentik-* headers count only from a trusted proxy)")
        return found

    def _authorize(self, identity: Identity, *, write: bool) -> None:
        if write and request.headers.get("Sec-Fetch-Site", "").lower() in CROSS_SITE:
            raise AuthorizationError("a write started by another site is refused")
        if identity.via == "open":
            return
        needed = self.writers if write else self.readers
        if not identity.groups & needed:
            variable = "DEPLOYER_DEPLOY_GROUPS" if write else "DEPLOYER_VIEW_GROUPS or DEPLOYER_DEPLOY_GROUPS"
            raise AuthorizationError(f"{identity.username} is in none of the groups of {variable}")

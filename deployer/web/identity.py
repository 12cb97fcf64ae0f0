"""Who is asking: Authentik's forward-auth headers and tokens, checked by rules that need no Flask.

`Identifier.identify(peer, headers)` answers an `Identity`, None when the request names nobody it
can believe, or raises AuthenticationError when it names someone in a way that does not hold up (a
bad token, headers that contradict the token). The rules (docs/service.md "Identity"):

* `X-authentik-username`, `-groups` (split on `|` only), `-email` and `-jwt` are read only when the
  TCP peer (REMOTE_ADDR, never X-Forwarded-For) is in `DEPLOYER_TRUSTED_PROXIES`; from anyone else
  every `X-authentik-*` header is ignored.
* With `DEPLOYER_AUTHENTIK_JWKS_URL` set, no identity is believed without a token that verifies
  against that key set: `X-authentik-jwt` (the outpost's, through a trusted proxy) or
  `Authorization: Bearer` (a machine client, from any peer). The token is the identity: username
  (`preferred_username`, else `sub`), groups (`groups` claim) and email come from its claims, and
  plain headers that name another user or other groups refuse the request.
* `DEPLOYER_AUTHENTIK_CLIENT_SECRET` does the same for tokens signed HS256 with the proxy provider's
  client secret, which is how Authentik signs them: a proxy provider has no signing key (its JWKS is
  empty). Either or both may be set; a token's `alg` picks which one checks it, never the other.
* Without either, trusted headers are the identity and bearer tokens cannot be checked (refused).

Keys come only from the configured URL (never `jku`, `x5u`, `jwk` or `X-authentik-meta-jwks`), only
asymmetric ones, and a token is checked with the algorithm of the key its `kid` selects, nothing else.
An HS256 token is checked with the configured client secret only, so a token "signed" with a public
key of the key set (the algorithm confusion attack) fails like any other forgery.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt

from deployer.errors import AuthenticationError
from deployer.settings import Settings

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "Identifier",
    "Identity",
    "KeySet",
    "KeySetUnavailableError",
    "TokenVerifier",
    "parse_groups",
    "peer_trusted",
]

log = logging.getLogger("deployer.web")

#: what a key from the JWKS may sign with; HS* (a shared secret) and `none` never verify anything here
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
#: seconds of clock difference tolerated on `exp`, `nbf` and `iat`
LEEWAY = 30.0
#: the largest key set read from the JWKS URL
MAX_JWKS_BYTES = 1024 * 1024

Via = Literal["headers", "bearer", "open"]


class Headers(Protocol):
    """A request's headers: a dict, or werkzeug's Headers and EnvironHeaders."""

    def items(self) -> Iterable[tuple[str, str]]: ...


@dataclass(frozen=True)
class Identity:
    """Someone the deployer believes: who, in which groups, and how it was told."""

    username: str
    groups: frozenset[str]
    email: str | None
    #: "headers": forward-auth headers from a trusted proxy (with their X-authentik-jwt when a JWKS is set);
    #: "bearer": an Authorization: Bearer token; "open": DEPLOYER_INSECURE_OPEN_API's anonymous deployer
    via: Via


class KeySetUnavailableError(AuthenticationError):
    """The configured JWKS could not be fetched and no keys are cached: no token can be checked (503)."""

    code = "identity_unavailable"


def peer_trusted(peer: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the TCP peer's address is in one of the trusted proxy networks (IPv4-mapped IPv6 counts as IPv4)."""
    if not peer:
        return False
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def parse_groups(value: str) -> frozenset[str]:
    """Authentik's pipe-joined group names; names may hold spaces (or commas), so only `|` splits."""
    return frozenset(name.strip() for name in value.split("|") if name.strip())


def _fetch(url: str, timeout: float) -> bytes:
    """GET the key set from exactly `url`: no redirect is followed anywhere else."""
    opener = urllib.request.build_opener(_NoRedirect)
    # the scheme is http(s), checked by KeySet
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "deployer"})  # noqa: S310
    with opener.open(request, timeout=timeout) as response:
        data: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise ValueError(f"key set over {MAX_JWKS_BYTES} bytes")
    return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then raises HTTPError: keys come from the configured URL or not at all


def _parse_keys(data: bytes) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by kid: asymmetric, not for encryption, with a kid."""
    document = json.loads(data)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document: no `keys` list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in _KEY_TYPES or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError as error:
            log.warning("JWKS key %r skipped: %s", kid, error)
            continue
        if key.algorithm_name in ASYMMETRIC_ALGORITHMS:
            keys[kid] = key
    if not keys:
        raise ValueError("no usable asymmetric signing key in the key set")
    return keys


class KeySet:
    """The configured JWKS, fetched lazily, cached, refreshed when stale or on an unknown kid (rate-limited).

    A refresh that fails keeps the keys already known (logged); only with no keys at all is a token
    unverifiable (KeySetUnavailableError).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        lifespan: float = 300.0,
        min_refresh: float = 10.0,
        fetch: Callable[[str, float], bytes] = _fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"DEPLOYER_AUTHENTIK_JWKS_URL must be an http(s) URL, got {url!r}")
        self.url = url
        self.timeout = timeout
        #: seconds the fetched keys are used before they are fetched again (a removed key stops working)
        self.lifespan = lifespan
        #: seconds between two fetches at least, whatever kids tokens name
        self.min_refresh = min_refresh
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._tried_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> jwt.PyJWK:
        """The signing key named `kid`; raises AuthenticationError when the key set has none by that name."""
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self.lifespan:
                self._refresh(now)
            found = self._keys.get(kid)
            if found is None:
                self._refresh(now)  # a key rotated in since the last fetch; at most once per min_refresh
                found = self._keys.get(kid)
            if not self._keys:
                raise KeySetUnavailableError(f"the Authentik key set at {self.url} could not be fetched")
        if found is None:
            raise AuthenticationError(f"token signed by a key the Authentik key set does not hold (kid {kid!r})")
        return found

    def _refresh(self, now: float) -> None:
        if self._tried_at is not None and now - self._tried_at < self.min_refresh:
            return
        self._tried_at = now
        try:
            keys = _parse_keys(self._fetch(self.url, self.timeout))
        except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors; bad JSON a ValueError
            log.warning("Authentik key set %s not fetched: %s%s", self.url, error,
                        "; keeping the keys known" if self._keys else "")  # fmt: skip
            return
        self._keys = keys
        self._fetched_at = now


class TokenVerifier:
    """Checks a JWT: signature (the kid's key and algorithm from the key set, or HS256 with the client
    secret), exp, iss and aud."""

    def __init__(
        self,
        keys: KeySet | None,
        *,
        issuer: str | None,
        audience: str | None,
        client_secret: str | None = None,
        leeway: float = LEEWAY,
    ) -> None:
        self.keys = keys
        self.client_secret = client_secret
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    def claims(self, token: str) -> dict[str, Any]:
        header = _header(token)
        if header.get("alg") == "HS256":
            if self.client_secret is None:
                raise AuthenticationError(
                    "token signed HS256, but no DEPLOYER_AUTHENTIK_CLIENT_SECRET is set to check it"
                )
            return self._decode(token, self.client_secret, "HS256")
        if self.keys is None:
            raise AuthenticationError(f"token signed {header.get('alg')!r}: only HS256 with the client secret is"
                                      " accepted (DEPLOYER_AUTHENTIK_JWKS_URL is not set)")  # fmt: skip
        key = self.keys.key(_kid(header))  # only ever from the configured set: jku, x5u and jwk headers are not read
        return self._decode(token, key.key, key.algorithm_name)

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, key, algorithms=[algorithm], issuer=self.issuer, audience=self.audience,
                leeway=self.leeway, options={"require": ["exp"], "verify_aud": self.audience is not None},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationError(f"token not signed with its key's algorithm ({algorithm})") from None
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"token rejected: {error}") from None


class Identifier:
    """The identity rules for one configuration; one per web process (it holds the key cache)."""

    def __init__(self, settings: Settings, *, keys: KeySet | None = None) -> None:
        self.settings = settings
        self.verifier: TokenVerifier | None = None
        if settings.authentik_jwks_url or settings.authentik_client_secret:
            self.verifier = TokenVerifier(
                keys or (KeySet(settings.authentik_jwks_url) if settings.authentik_jwks_url else None),
                issuer=settings.authentik_issuer, audience=settings.authentik_audience,
                client_secret=settings.authentik_client_secret,
            )  # fmt: skip

    def identify(self, peer: str | None, headers: Headers) -> Identity | None:
        """The identity a request carries, None when it carries none, AuthenticationError when it does not hold."""
        names = {name.lower(): value for name, value in headers.items()}
        trusted = peer_trusted(peer, self.settings.trusted_proxies)
        username = _text(names.get("x-authentik-username")) if trusted else None
        groups = names.get("x-authentik-groups") if trusted else None
        email = _text(names.get("x-authentik-email")) if trusted else None
        outpost_token = _text(names.get("x-authentik-jwt")) if trusted else None
        bearer = _bearer(names.get("authorization"))
        if self.verifier is None:
            if username:
                return Identity(username, parse_groups(_text(groups) or ""), email, "headers")
            if bearer:
                raise AuthenticationError("a bearer token cannot be checked: neither DEPLOYER_AUTHENTIK_JWKS_URL nor"
                                          " DEPLOYER_AUTHENTIK_CLIENT_SECRET is set")  # fmt: skip
            return None
        token, via = (outpost_token, "headers") if outpost_token else (bearer, "bearer")
        if not token:
            if username:
                raise AuthenticationError("X-authentik-username came without a token (X-authentik-jwt or Bearer)")
            return None
        identity = _from_claims(self.verifier.claims(token), "headers" if via == "headers" else "bearer")
        if username and username != identity.username:
            raise AuthenticationError(f"X-authentik-username {username!r} is not the token's user")
        if groups is not None and parse_groups(_text(groups) or "") != identity.groups:
            raise AuthenticationError("X-authentik-groups differ from the token's groups")
        return identity


def _header(token: str) -> dict[str, Any]:
    """The header of a compact JWS, read only to pick the key; jwt.decode checks the whole token after.

    (jwt.get_unverified_header would check every segment's alphabet twice per request: ~0.1 ms.)
    """
    head, dot, _ = token.partition(".")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))) if dot else None
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        header = None
    if not isinstance(header, dict):
        raise AuthenticationError("token is not a JWT")
    return header


def _kid(header: Mapping[str, Any]) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthenticationError("token names no signing key (kid)")
    return kid


def _from_claims(claims: Mapping[str, Any], via: Via) -> Identity:
    username = claims.get("preferred_username") or claims.get("sub")
    if not isinstance(username, str) or not username.strip():
        raise AuthenticationError("token names no user (preferred_username or sub)")
    groups = claims.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(name, str) for name in groups):
        raise AuthenticationError("token's groups claim is not a list of names")
    email = claims.get("email")
    return Identity(username.strip(), frozenset(n.strip() for n in groups if n.strip()),
                    email if isinstance(email, str) and email else None, via)  # fmt: skip


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _text(value: str | None) -> str | None:
    """A header value as sent: WSGI hands them over as latin-1; Authentik sends UTF-8 names as they are."""
    if value is None:
        return None
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        value = value.encode("latin-1").decode("utf-8")
    return value.strip() or None

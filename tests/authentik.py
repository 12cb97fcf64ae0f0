"""Authentik's signing side, for tests: keys, tokens shaped like its ID and client-credentials tokens, a JWKS server.

The real Authentik cannot run here. `JwksServer` is a stand-in for its per-provider JWKS endpoint
(`/application/o/<slug>/jwks/`, ../shared/reference/protocols.md section 3.3) on 127.0.0.1: it serves
the public halves of the keys the test made and counts the requests it gets. Tokens carry the claims
the outpost's ID token and a client-credentials access token carry: iss, aud (the provider's
client_id), exp, iat, sub, preferred_username, email, groups.

`ClientSecret` signs as Authentik really signs a proxy provider's tokens: a proxy provider has no
signing key (authentik/providers/proxy/models.py `set_oauth_defaults` sets `signing_key = None`), so its
outpost's X-authentik-jwt and its client-credentials tokens are HS256 with the provider's client
secret, with no `kid`, and its JWKS is empty.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://auth.example/application/o/deployer/"
AUDIENCE = "deployer-client-id"


@dataclass
class SigningKey:
    """A key pair with its kid and algorithm, as Authentik's certificate-backed signing keys are."""

    kid: str
    algorithm: str  # RS256 or ES256
    private: Any = field(repr=False)

    @classmethod
    def rsa(cls, kid: str = "rsa-1") -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str = "ec-1") -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWKS entry (with kid, alg and use, as Authentik publishes it)."""
        algorithm = RSAAlgorithm if self.algorithm.startswith("RS") else ECAlgorithm
        entry: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**entry, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **headers})


@dataclass
class ClientSecret:
    """A proxy provider's client secret, the HS256 key of its tokens (128 characters, as Authentik makes them)."""

    secret: str = field(repr=False, default_factory=lambda: base64.urlsafe_b64encode(os.urandom(96)).decode())

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.secret, algorithm="HS256", headers=headers or None)


def claims(username: str = "alice", groups: tuple[str, ...] = ("deployers",), *, ttl: float = 300,
           **overrides: Any) -> dict[str, Any]:  # fmt: skip
    """The claims of an Authentik token for `username`; overrides replace or (with None) drop claims."""
    now = int(time.time())
    found: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "exp": now + int(ttl), "iat": now, "sub": f"hashed-{username}",
        "preferred_username": username, "email": f"{username}@example.org", "groups": list(groups),
    }  # fmt: skip
    found.update(overrides)
    return {name: value for name, value in found.items() if value is not None}


def unsigned(payload: dict[str, Any], kid: str) -> str:
    """A token with `alg: none` and an empty signature."""
    return jwt.encode(payload, "", algorithm="none", headers={"kid": kid})


def hs256_with(secret: bytes, payload: dict[str, Any], kid: str) -> str:
    """An HS256 token whose HMAC secret is `secret` (the key-confusion attack uses the public key's PEM).

    Built by hand: PyJWT itself refuses to sign HMAC with a PEM key.
    """

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def jwks(*keys: SigningKey) -> bytes:
    return json.dumps({"keys": [key.jwk() for key in keys]}).encode()


class JwksServer:
    """A stand-in for Authentik's JWKS endpoint on 127.0.0.1, serving `keys` (changeable) and counting fetches."""

    PATH = "/application/o/deployer/jwks/"

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        #: answer every request with a 302 to this URL instead (a key set must not be looked for elsewhere)
        self.redirect_to: str | None = None
        self.fetches = 0
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{self.PATH}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.fetches += 1
                    server.paths.append(self.path)
                    body = jwks(*server.keys) if self.path == server.PATH else b'{"detail": "Not found."}'
                if server.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                else:
                    self.send_response(200 if self.path == server.PATH else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

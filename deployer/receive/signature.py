"""Verify a delivery came from the forge that shares our secret, in constant time, failing closed.

What is signed differs: GitHub signs the raw body; Gitea and Forgejo sign the JSON payload (for a
form-encoded hook, the decoded `payload` field, not the body on the wire); GitLab sends the secret
itself as a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from deployer.errors import SignatureError
from deployer.receive.forges import SIGNATURE_HEADERS, Forge, HeaderMap

__all__ = ["signature_header", "verify_signature"]


def signature_header(forge: Forge, headers: Mapping[str, str]) -> str | None:
    """The name of the signature header that decides for this delivery (the first one present)."""
    headers = HeaderMap.of(headers)
    return next((name for name in SIGNATURE_HEADERS[forge] if headers.get(name)), None)


def verify_signature(forge: Forge, *, signed: bytes, headers: Mapping[str, str], secret: str | None) -> None:
    """Raise SignatureError unless the delivery's signature matches `signed` under `secret`.

    `signed` is the raw body for GitHub and GitLab, the JSON payload text for Gitea and Forgejo.
    Only the most specific signature header present is checked: a bad X-Forgejo-Signature is not
    rescued by a good X-Hub-Signature-256.
    """
    if not secret:
        raise SignatureError("webhook secret is not configured")
    headers = HeaderMap.of(headers)
    name = signature_header(forge, headers)
    if name is None:
        raise SignatureError(f"{forge} delivery carries no signature ({' or '.join(SIGNATURE_HEADERS[forge])})")
    given = headers[name].strip()
    key = secret.encode()
    if name == "X-Gitlab-Token":
        ok = hmac.compare_digest(given.encode(), key)
    else:
        expected = hmac.new(key, signed, hashlib.sha256).hexdigest()
        if name == "X-Hub-Signature-256":
            expected = "sha256=" + expected
        ok = hmac.compare_digest(given.lower().encode(), expected.encode())
    if not ok:
        raise SignatureError(f"{name} does not match the payload")

"""What the forge clients share: one POST with a timeout, and the retry-or-give-up verdict."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from deployer.model import CommitStatus, StatusState

__all__ = ["MAX_RETRY_AFTER", "TIMEOUT", "GiveUp", "Retry", "check", "post_json", "request_json", "retry_after",
           "retry_error", "status_body"]  # fmt: skip

TIMEOUT = 10.0
#: the longest wait a Retry-After is taken at its word for (seconds)
MAX_RETRY_AFTER = 3600.0


class Retry(Exception):
    """The peer may accept this later: try again with backoff, and not before `after` seconds if it said so."""

    def __init__(self, message: str, *, after: float | None = None) -> None:
        super().__init__(message)
        #: the peer's Retry-After, in seconds from now (None when it did not say)
        self.after = after


def retry_after(response: requests.Response, *, now: float | None = None) -> float | None:
    """The seconds a 429 or 503's `Retry-After` asks for (delay-seconds or an HTTP date), at most
    MAX_RETRY_AFTER; None when the header is absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def retry_error(response: requests.Response, text: str) -> Retry:
    """A Retry saying `text`, and the Retry-After the response carries."""
    after = retry_after(response)
    return Retry(text + (f" (Retry-After {after:g}s)" if after is not None else ""), after=after)


class GiveUp(Exception):
    """The forge will never accept this request as it is."""


def post_json(
    session: requests.Session, url: str, *, headers: Mapping[str, str], body: Mapping[str, Any]
) -> requests.Response:
    """POST `body`; return the response for 2xx and 4xx, raise Retry for 5xx, 429 (with its Retry-After) and
    transport errors."""
    return _answered(lambda: session.post(url, json=dict(body), headers=dict(headers), timeout=TIMEOUT))


def request_json(
    session: requests.Session, method: str, url: str, *, headers: Mapping[str, str],
    body: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
) -> requests.Response:  # fmt: skip
    """One request with a JSON `body` (if any); the response for 2xx and 4xx, Retry for 5xx, 429 (with its
    Retry-After) and transport errors."""
    return _answered(
        lambda: session.request(
            method,
            url,
            json=None if body is None else dict(body),
            params=dict(params or {}),
            headers=dict(headers),
            timeout=TIMEOUT,
        )
    )


def _answered(send: Callable[[], requests.Response]) -> requests.Response:
    """What `send` got back, for 2xx and 4xx; Retry for 5xx, 429 (with its Retry-After) and transport errors."""
    try:
        response = send()
    except requests.RequestException as error:
        raise Retry(f"{type(error).__name__}: {error}") from error
    if response.status_code == 429 or response.status_code >= 500:
        raise retry_error(response, f"HTTP {response.status_code}")
    return response


def check(response: requests.Response) -> None:
    """Raise GiveUp for any non-2xx left after post_json's verdict."""
    if not response.ok:
        raise GiveUp(f"HTTP {response.status_code}: {response.text[:200]}")


def status_body(status: CommitStatus, states: Mapping[StatusState, str], *, context_key: str) -> dict[str, str]:
    """The JSON every forge's status endpoint takes, with the forge's own state name and context key."""
    body = {"state": states[StatusState(status.state)], context_key: status.context, "description": status.description}
    if status.target_url:
        body["target_url"] = status.target_url
    return body

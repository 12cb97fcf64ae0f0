"""What the forge clients share: one POST with a timeout, and the retry-or-give-up verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from deployer.model import CommitStatus, StatusState

__all__ = ["TIMEOUT", "GiveUp", "Retry", "check", "post_json", "status_body"]

TIMEOUT = 10.0


class Retry(Exception):
    """The forge may accept this later: try again with backoff."""


class GiveUp(Exception):
    """The forge will never accept this request as it is."""


def post_json(
    session: requests.Session, url: str, *, headers: Mapping[str, str], body: Mapping[str, Any]
) -> requests.Response:
    """POST `body`; return the response for 2xx and 4xx, raise Retry for 5xx, 429 and transport errors."""
    try:
        response = session.post(url, json=dict(body), headers=dict(headers), timeout=TIMEOUT)
    except requests.RequestException as error:
        raise Retry(f"{type(error).__name__}: {error}") from error
    if response.status_code == 429 or response.status_code >= 500:
        raise Retry(f"HTTP {response.status_code}")
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

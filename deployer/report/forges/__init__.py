"""Commit-status clients: one small module per forge API, one function each.

A client raises `Retry` for what may work later (5xx, 429, timeouts, connection errors; with the
forge's Retry-After, which the reporter waits out before it sends that forge anything) and
`GiveUp` for what never will (401, 403, 404, 422); anything else it sends is done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import requests

from deployer.model import CommitStatus
from deployer.report.forges import gitea, github, gitlab
from deployer.report.forges._http import GiveUp, Retry, retry_error

__all__ = ["POSTERS", "GiveUp", "Poster", "Retry", "retry_error"]

#: post(session, api_url, repo, token, status)
Poster = Callable[[requests.Session, str, str, str | None, CommitStatus], None]

POSTERS: Final[Mapping[str, Poster]] = {
    "github": github.post,
    "gitea": gitea.post,
    "forgejo": gitea.post,
    "gitlab": gitlab.post,
}

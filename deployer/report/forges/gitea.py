"""Gitea and Forgejo: POST /repos/{owner}/{repo}/statuses/{sha} under /api/v1.

Only the four states every version has (pending, success, failure, error) are used.
"""

from __future__ import annotations

import requests

from deployer.model import CommitStatus
from deployer.report.forges._http import check, post_json, status_body
from deployer.report.forges.github import STATES


def headers(token: str | None) -> dict[str, str]:
    """What every Gitea / Forgejo API request carries."""
    return {"Accept": "application/json"} | ({"Authorization": f"token {token}"} if token else {})


def post(session: requests.Session, api_url: str, repo: str, token: str | None, status: CommitStatus) -> None:
    body = status_body(status, STATES, context_key="context")
    url = f"{api_url.rstrip('/')}/repos/{repo}/statuses/{status.sha}"
    check(post_json(session, url, headers=headers(token), body=body))

"""GitHub: POST /repos/{owner}/{repo}/statuses/{sha} (states pending, success, failure, error)."""

from __future__ import annotations

import requests

from deployer.model import CommitStatus, StatusState
from deployer.report.forges._http import check, post_json, status_body

STATES = {
    StatusState.PENDING: "pending",
    StatusState.RUNNING: "pending",
    StatusState.SUCCESS: "success",
    StatusState.FAILURE: "failure",
    StatusState.ERROR: "error",
    StatusState.SUPERSEDED: "error",
}


def headers(token: str | None) -> dict[str, str]:
    """What every GitHub REST request carries."""
    found = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    return found | ({"Authorization": f"Bearer {token}"} if token else {})


def post(session: requests.Session, api_url: str, repo: str, token: str | None, status: CommitStatus) -> None:
    body = status_body(status, STATES, context_key="context")
    url = f"{api_url.rstrip('/')}/repos/{repo}/statuses/{status.sha}"
    check(post_json(session, url, headers=headers(token), body=body))

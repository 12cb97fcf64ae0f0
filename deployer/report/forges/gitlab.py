"""GitLab: POST /projects/:id/statuses/:sha under /api/v4.

A status is a job of an external pipeline with a state machine (pending -> running -> final).
Posting a state it already has, or cannot move to, is a 400 "Cannot transition status": that
status is already where we wanted it (or past it), so it counts as done.
"""

from __future__ import annotations

import urllib.parse

import requests

from deployer.model import CommitStatus, StatusState
from deployer.report.forges._http import check, post_json, status_body

STATES = {
    StatusState.PENDING: "pending",
    StatusState.RUNNING: "running",
    StatusState.SUCCESS: "success",
    StatusState.FAILURE: "failed",
    StatusState.ERROR: "failed",
    StatusState.SUPERSEDED: "canceled",
}


def headers(token: str | None) -> dict[str, str]:
    """What every GitLab API request carries."""
    return {"Accept": "application/json"} | ({"PRIVATE-TOKEN": token} if token else {})


def post(session: requests.Session, api_url: str, repo: str, token: str | None, status: CommitStatus) -> None:
    project = urllib.parse.quote(repo, safe="")
    body = status_body(status, STATES, context_key="name")
    response = post_json(session, f"{api_url.rstrip('/')}/projects/{project}/statuses/{status.sha}",
                         headers=headers(token), body=body)  # fmt: skip
    if response.status_code == 400 and "Cannot transition status" in response.text:
        return
    check(response)

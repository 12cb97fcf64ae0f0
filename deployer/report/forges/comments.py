"""The one preview comment on a pull / merge request, edited in place (protocols.md section 9.2).

GitHub and Gitea/Forgejo keep pull request comments as issue comments (`/repos/{o}/{r}/issues/{n}/comments`,
edited at `/repos/{o}/{r}/issues/comments/{id}` with PATCH); GitLab as merge request notes
(`/projects/:id/merge_requests/:iid/notes`, edited with PUT). The comment is found again by the
deployer's stored id, else by its hidden MARKER among the comments the token's own user wrote, so a
comment someone else wrote with the marker is never taken for ours.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import requests

from deployer.report.forges._http import TIMEOUT, GiveUp, Retry, retry_error
from deployer.report.preview import MARKER

__all__ = ["MARKER", "upsert_comment"]

#: pages of comments read at most while looking for ours (100 each)
MAX_PAGES = 20
_logins: dict[tuple[str, str | None], str | None] = {}
_logins_lock = threading.Lock()


def upsert_comment(  # noqa: PLR0917 -- the status posters' (session, api_url, repo, token, ...) order
    session: requests.Session, forge: str, api_url: str, repo: str, token: str | None, number: int, body: str,
    *, comment_id: int | None,
) -> int:  # fmt: skip
    """Make the preview comment on `number` say `body`; return its id. Raises Retry or GiveUp."""
    api = _Api(session, forge, api_url.rstrip("/"), repo, token)
    if comment_id is not None and api.edit(number, comment_id, body):
        return comment_id
    found = api.find(number)
    if found is not None and api.edit(number, found, body):
        return found
    return api.create(number, body)


class _Api:
    def __init__(self, session: requests.Session, forge: str, api_url: str, repo: str, token: str | None) -> None:
        self.session, self.forge, self.api_url, self.repo, self.token = session, forge, api_url, repo, token
        self.gitlab = forge == "gitlab"
        if self.gitlab:
            self.base = f"{api_url}/projects/{urllib.parse.quote(repo, safe='')}"
            self.headers = {"Accept": "application/json", **({"PRIVATE-TOKEN": token} if token else {})}
        elif forge == "github":
            self.base = f"{api_url}/repos/{repo}"
            self.headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                            **({"Authorization": f"Bearer {token}"} if token else {})}  # fmt: skip
        else:
            self.base = f"{api_url}/repos/{repo}"
            self.headers = {"Accept": "application/json", **({"Authorization": f"token {token}"} if token else {})}

    def _call(self, method: str, url: str, *, body: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None) -> requests.Response:  # fmt: skip
        try:
            response = self.session.request(method, url, json=None if body is None else dict(body),
                                            params=dict(params or {}), headers=self.headers,
                                            timeout=TIMEOUT)  # fmt: skip
        except requests.RequestException as error:
            raise Retry(f"{type(error).__name__}: {error}") from error
        if response.status_code == 429 or response.status_code >= 500:
            raise retry_error(response, f"HTTP {response.status_code}")
        return response

    def _comments_url(self, number: int) -> str:
        return f"{self.base}/merge_requests/{number}/notes" if self.gitlab else f"{self.base}/issues/{number}/comments"

    def edit(self, number: int, comment_id: int, body: str) -> bool:
        """Edit comment `comment_id`; False when it is gone (404)."""
        if self.gitlab:
            raise_for = self._call(
                "PUT", f"{self.base}/merge_requests/{number}/notes/{comment_id}", body={"body": body}
            )
        else:
            raise_for = self._call("PATCH", f"{self.base}/issues/comments/{comment_id}", body={"body": body})
        if raise_for.status_code == 404:
            return False
        _check(raise_for)
        return True

    def create(self, number: int, body: str) -> int:
        response = self._call("POST", self._comments_url(number), body={"body": body})
        _check(response)
        return int(response.json()["id"])

    def find(self, number: int) -> int | None:
        """The newest comment on `number` holding MARKER written by the token's user (any author if unknown)."""
        me = self._login()
        ours: list[int] = []
        for page in range(1, MAX_PAGES + 1):
            params = {"per_page": 100, "page": page} if self.forge != "gitea" else {"limit": 50, "page": page}
            response = self._call("GET", self._comments_url(number), params=params)
            _check(response)
            found = response.json()
            if not isinstance(found, list) or not found:
                break
            for comment in found:
                if not isinstance(comment, dict) or MARKER not in str(comment.get("body") or ""):
                    continue
                if self.gitlab and comment.get("system"):
                    continue
                author = (comment.get("author") if self.gitlab else comment.get("user")) or {}
                login = author.get("username" if self.gitlab else "login") if isinstance(author, dict) else None
                if me is None or login == me:
                    ours.append(int(comment["id"]))
            if len(found) < int(params.get("per_page", params.get("limit", 100))):
                break
        return max(ours) if ours else None

    def _login(self) -> str | None:
        key = (self.api_url, self.token)
        with _logins_lock:
            if key in _logins:
                return _logins[key]
        response = self._call("GET", f"{self.api_url}/user")
        login = None
        if response.ok:
            found = response.json()
            if isinstance(found, dict):
                value = found.get("username" if self.gitlab else "login")
                login = str(value) if value else None
        elif response.status_code != 404:
            _check(response)
        with _logins_lock:
            _logins[key] = login
        return login


def _check(response: requests.Response) -> None:
    if not response.ok:
        raise GiveUp(f"HTTP {response.status_code}: {response.text[:200]}")

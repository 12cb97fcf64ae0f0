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

from deployer.report.forges import gitea, github, gitlab
from deployer.report.forges._http import Retry, check, request_json
from deployer.report.preview import MARKER

__all__ = ["MARKER", "upsert_comment"]

#: pages of comments read at most while looking for ours (100 each)
MAX_PAGES = 20
#: marker comments tried at most, newest first, before a new one is written
MAX_TRIED = 3
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
    for found in api.find(number)[:MAX_TRIED]:
        if found != comment_id and api.edit(number, found, body):
            return found
    return api.create(number, body)


class _Api:
    def __init__(self, session: requests.Session, forge: str, api_url: str, repo: str, token: str | None) -> None:
        self.session, self.forge, self.api_url, self.repo, self.token = session, forge, api_url, repo, token
        self.gitlab = forge == "gitlab"
        self.paged = forge in ("github", "gitlab")  # Gitea/Forgejo list every comment in one answer
        self.headers = {"github": github.headers, "gitlab": gitlab.headers}.get(forge, gitea.headers)(token)
        if self.gitlab:
            self.base = f"{api_url}/projects/{urllib.parse.quote(repo, safe='')}"
        else:
            self.base = f"{api_url}/repos/{repo}"

    def _call(self, method: str, url: str, *, body: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None) -> requests.Response:  # fmt: skip
        return request_json(self.session, method, url, headers=self.headers, body=body, params=params)

    def _comments_url(self, number: int) -> str:
        return f"{self.base}/merge_requests/{number}/notes" if self.gitlab else f"{self.base}/issues/{number}/comments"

    def edit(self, number: int, comment_id: int, body: str) -> bool:
        """Edit comment `comment_id`; False when it is gone (404) or not ours to edit (403)."""
        if self.gitlab:
            raise_for = self._call(
                "PUT", f"{self.base}/merge_requests/{number}/notes/{comment_id}", body={"body": body}
            )
        else:
            raise_for = self._call("PATCH", f"{self.base}/issues/comments/{comment_id}", body={"body": body})
        if raise_for.status_code in (403, 404):
            return False
        check(raise_for)
        return True

    def create(self, number: int, body: str) -> int:
        response = self._call("POST", self._comments_url(number), body={"body": body})
        check(response)
        found = _json(response)
        if not isinstance(found, dict) or not isinstance(found.get("id"), int):
            raise Retry(f"HTTP {response.status_code}: the new comment's answer has no numeric id")
        return int(found["id"])

    def find(self, number: int) -> list[int]:
        """The comments on `number` holding MARKER, newest first, written by the token's user (by anyone
        when the forge will not say who that is: an edit of someone else's is then refused and skipped)."""
        me = self._login()
        ours: list[int] = []
        url: str | None = self._comments_url(number)
        params: dict[str, Any] | None = {"per_page": 100, "page": 1} if self.paged else None
        for _ in range(MAX_PAGES):
            if url is None:
                break
            response = self._call("GET", url, params=params)
            check(response)
            found = _json(response)
            if not isinstance(found, list):
                raise Retry(f"HTTP {response.status_code}: the comment list is not a JSON list")
            ours.extend(_marked(found, me, gitlab=self.gitlab))
            url, params = self._next(url, response, params, len(found))
        return sorted(set(ours), reverse=True)

    def _next(
        self, url: str, response: requests.Response, params: dict[str, Any] | None, count: int
    ) -> tuple[str | None, dict[str, Any] | None]:
        """Where the next page of comments is: the Link header's `next` (only on this forge's API, which
        holds the token), else the next page number while pages come back full; None when done."""
        if not self.paged or count == 0:
            return None, None
        if "link" in response.headers:
            following = response.links.get("next", {}).get("url")
            if following and following.startswith(self.api_url + "/"):
                return following, None
            return None, None
        if params is None or count < int(params["per_page"]):
            return None, None
        return url, {**params, "page": int(params["page"]) + 1}

    def _login(self) -> str | None:
        """The token's user name, cached per API and token; None when the forge will not say (a 401 or 403
        from /user, as GitHub App installation tokens get, or a 404)."""
        key = (self.api_url, self.token)
        with _logins_lock:
            if key in _logins:
                return _logins[key]
        response = self._call("GET", f"{self.api_url}/user")
        login = None
        if response.ok:
            found = _json(response)
            if isinstance(found, dict):
                value = found.get("username" if self.gitlab else "login")
                login = str(value) if value else None
        elif response.status_code not in (401, 403, 404):
            check(response)
        with _logins_lock:
            _logins[key] = login
        return login


def _marked(found: list[Any], me: str | None, *, gitlab: bool) -> list[int]:
    """The ids of the comments in one page that hold MARKER and were written by `me` (anyone if None)."""
    ids: list[int] = []
    for comment in found:
        if not isinstance(comment, dict) or MARKER not in str(comment.get("body") or ""):
            continue
        if gitlab and comment.get("system"):
            continue
        author = (comment.get("author") if gitlab else comment.get("user")) or {}
        login = author.get("username" if gitlab else "login") if isinstance(author, dict) else None
        if (me is None or login == me) and isinstance(comment.get("id"), int):
            ids.append(int(comment["id"]))
    return ids


def _json(response: requests.Response) -> Any:
    """The answer's JSON; Retry when it is not JSON (a proxy's error page answered for the forge)."""
    try:
        return response.json()
    except ValueError as error:
        raise Retry(f"HTTP {response.status_code}: the answer is not JSON") from error

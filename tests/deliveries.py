"""Webhook deliveries shaped like each forge's documented push and pull-request payloads and headers, signed as
that forge signs.

GitHub signs the raw body (also for form hooks); Gitea and Forgejo sign the JSON payload text (for
form hooks: the url-decoded `payload` field, not the body on the wire); GitLab sends the shared
secret in clear as X-Gitlab-Token. See ../shared/reference/protocols.md sections 1 and 9.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
import uuid
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

ZERO = "0" * 40

#: the event header's value for a pull (GitLab: merge) request, per forge; Gitea and Forgejo tell new commits apart
#: only by the event type (`sign(..., event_type=PULL_SYNC)`)
PULL_EVENTS = {"github": "pull_request", "gitea": "pull_request", "forgejo": "pull_request",
               "gitlab": "Merge Request Hook"}  # fmt: skip
PULL_SYNC = "pull_request_sync"
#: the action each forge names the opening of a pull request, and new commits pushed to one
OPENED = {"github": "opened", "gitea": "opened", "forgejo": "opened", "gitlab": "open"}
SYNCHRONIZED = {"github": "synchronize", "gitea": "synchronized", "forgejo": "synchronized", "gitlab": "update"}


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes


def push_payload(forge: str, *, after: str, before: str = "1" * 40, branch: str = "main", repo: str = "ops/config",
                 base_url: str = "https://git.example") -> dict[str, Any]:  # fmt: skip
    """A push payload with the fields each forge documents (commit lists shortened)."""
    ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
    commit = {"id": after, "message": "change", "timestamp": "2026-11-27T01:00:00Z", "url": f"{base_url}/c/{after}",
              "author": {"name": "Op", "email": "op@example.org"}, "added": [], "removed": [],
              "modified": ["x"]}  # fmt: skip
    if forge == "github":
        return {
            "ref": ref, "before": before, "after": after, "created": before == ZERO, "deleted": after == ZERO,
            "forced": False, "base_ref": None, "compare": f"https://github.com/{repo}/compare/x",
            "commits": [commit], "head_commit": None if after == ZERO else commit,
            "repository": {"id": 1, "name": repo.split("/")[1], "full_name": repo, "private": True,
                           "html_url": f"https://github.com/{repo}", "url": f"https://github.com/{repo}",
                           "statuses_url": f"https://api.github.com/repos/{repo}/statuses/{{sha}}",
                           "clone_url": f"https://github.com/{repo}.git", "default_branch": "main"},
            "pusher": {"name": "op", "email": "op@example.org"}, "sender": {"login": "op", "id": 7},
        }  # fmt: skip
    if forge in ("gitea", "forgejo"):
        return {
            "ref": ref, "before": before, "after": after, "compare_url": f"{base_url}/{repo}/compare/x",
            "commits": [commit], "total_commits": 1, "head_commit": commit,
            "repository": {"id": 1, "name": repo.split("/")[1], "full_name": repo, "html_url": f"{base_url}/{repo}",
                           "clone_url": f"{base_url}/{repo}.git", "default_branch": "main"},
            "pusher": {"login": "op", "username": "op"}, "sender": {"login": "op", "username": "op"},
        }  # fmt: skip
    if forge == "gitlab":
        return {
            "object_kind": "push" if ref.startswith("refs/heads/") else "tag_push", "event_name": "push",
            "before": before, "after": after, "ref": ref, "checkout_sha": None if after == ZERO else after,
            "user_id": 4, "user_name": "Op", "user_username": "op", "user_email": "", "project_id": 15,
            "project": {"id": 15, "name": repo.split("/")[1], "path_with_namespace": repo,
                        "web_url": f"{base_url}/{repo}", "git_http_url": f"{base_url}/{repo}.git",
                        "default_branch": "main"},
            "commits": [commit], "total_commits_count": 1,
        }  # fmt: skip
    raise ValueError(forge)


def pull_payload(forge: str, *, head: str, number: int = 7, action: str | None = None, base: str = "main",
                 repo: str = "ops/config", fork: bool = False, base_url: str = "https://git.example",
                 oldrev: str | EllipsisType | None = ...) -> dict[str, Any]:  # fmt: skip
    """A pull request (GitLab: merge request) event with the fields each forge documents, from branch `feature`
    of `repo` (of `fork/<name>` when `fork`) into `base` of `repo`. `action` defaults to the forge's "opened".

    `oldrev` is GitLab's object_attributes.oldrev: by default set ("1" * 40) for an update only, as GitLab sends
    it when an update brings commits; None leaves it out, a string sets it whatever the action.
    """
    action = action or OPENED[forge]
    head_repo, head_id = (f"fork/{repo.partition('/')[2]}", 2) if fork else (repo, 1)
    if forge == "github":
        payload: dict[str, Any] = {
            "action": action, "number": number,
            "pull_request": {
                "url": f"https://api.github.com/repos/{repo}/pulls/{number}", "id": 1000 + number,
                "html_url": f"https://github.com/{repo}/pull/{number}", "number": number, "state": "open",
                "locked": False, "title": "Change the config", "user": {"login": "op", "id": 7}, "body": None,
                "created_at": "2026-11-27T01:00:00Z", "updated_at": "2026-11-27T01:00:00Z", "draft": False,
                "merged": False, "merge_commit_sha": None,
                "head": {"label": f"{head_repo.partition('/')[0]}:feature", "ref": "feature", "sha": head,
                         "user": {"login": head_repo.partition("/")[0]}, "repo": _github_repo(head_repo, head_id)},
                "base": {"label": f"{repo.partition('/')[0]}:{base}", "ref": base, "sha": "1" * 40,
                         "user": {"login": repo.partition("/")[0]}, "repo": _github_repo(repo, 1)},
            },
            "repository": _github_repo(repo, 1), "sender": {"login": "op", "id": 7},
        }  # fmt: skip
        if action == "synchronize":
            payload |= {"before": "1" * 40, "after": head}
        return payload
    if forge in ("gitea", "forgejo"):
        object_format = "sha1" if len(head) == 40 else "sha256"
        return {
            "action": action, "number": number,
            "pull_request": {
                "id": 100 + number, "url": f"{base_url}/{repo}/pulls/{number}", "number": number,
                "user": {"login": "op", "username": "op"}, "title": "Change the config", "body": "",
                "labels": [], "state": "open", "is_locked": False, "comments": 0,
                "html_url": f"{base_url}/{repo}/pulls/{number}", "mergeable": True, "merged": False,
                "merge_commit_sha": None,
                "base": {"label": base, "ref": base, "sha": "1" * 40, "repo_id": 1,
                         "repo": _gitea_repo(repo, 1, base_url, object_format)},
                "head": {"label": "feature", "ref": "feature", "sha": head, "repo_id": head_id,
                         "repo": _gitea_repo(head_repo, head_id, base_url, object_format)},
                "merge_base": "1" * 40,
            },
            "requested_reviewer": None, "repository": _gitea_repo(repo, 1, base_url, object_format),
            "sender": {"login": "op", "username": "op"}, "commit_id": "", "review": None,
        }  # fmt: skip
    if forge == "gitlab":
        attributes: dict[str, Any] = {
            "id": 100 + number, "iid": number, "target_branch": base, "source_branch": "feature",
            "source_project_id": 14 + head_id, "target_project_id": 15, "author_id": 4,
            "title": "Change the config", "state": "opened", "merge_status": "unchecked",
            "url": f"{base_url}/{repo}/-/merge_requests/{number}",
            "source": _gitlab_project(head_repo, 14 + head_id, base_url), "target": _gitlab_project(repo, 15, base_url),
            "last_commit": {"id": head, "message": "change", "title": "change",
                            "timestamp": "2026-11-27T01:00:00Z", "url": f"{base_url}/{head_repo}/-/commit/{head}",
                            "author": {"name": "Op", "email": "op@example.org"}},
            "labels": [], "action": action,
        }  # fmt: skip
        if oldrev is ...:
            oldrev = "1" * 40 if action == "update" else None
        if oldrev is not None:
            attributes["oldrev"] = oldrev
        return {
            "object_kind": "merge_request", "event_type": "merge_request",
            "user": {"id": 4, "name": "Op", "username": "op", "email": "op@example.org"},
            "project": _gitlab_project(repo, 15, base_url),
            "repository": {"name": repo.partition("/")[2], "url": f"{base_url}/{repo}.git",
                           "homepage": f"{base_url}/{repo}"},
            "object_attributes": attributes, "labels": [], "changes": {},
        }  # fmt: skip
    raise ValueError(forge)


def _github_repo(full_name: str, repo_id: int) -> dict[str, Any]:
    owner, _, name = full_name.partition("/")
    return {"id": repo_id, "name": name, "full_name": full_name, "private": False, "owner": {"login": owner},
            "html_url": f"https://github.com/{full_name}", "url": f"https://api.github.com/repos/{full_name}",
            "statuses_url": f"https://api.github.com/repos/{full_name}/statuses/{{sha}}",
            "clone_url": f"https://github.com/{full_name}.git", "default_branch": "main"}  # fmt: skip


def _gitea_repo(full_name: str, repo_id: int, base_url: str, object_format: str) -> dict[str, Any]:
    owner, _, name = full_name.partition("/")
    return {"id": repo_id, "name": name, "full_name": full_name, "owner": {"login": owner, "username": owner},
            "html_url": f"{base_url}/{full_name}", "clone_url": f"{base_url}/{full_name}.git",
            "default_branch": "main", "object_format_name": object_format}  # fmt: skip


def _gitlab_project(path: str, project_id: int, base_url: str) -> dict[str, Any]:
    namespace, _, name = path.partition("/")
    return {"id": project_id, "name": name, "web_url": f"{base_url}/{path}", "path_with_namespace": path,
            "git_http_url": f"{base_url}/{path}.git", "namespace": namespace, "default_branch": "main"}  # fmt: skip


def sign(forge: str, payload: dict[str, Any] | bytes, secret: str, *, event: str | None = None,
         event_type: str | None = None, form: bool = False, delivery_id: str | None = None) -> Delivery:  # fmt: skip
    """Headers and body as `forge` sends them, with a valid signature under `secret`.

    `event` names the event (default a push: "push", GitLab "Push Hook"; a pull request's is PULL_EVENTS[forge]);
    `event_type` is Gitea's and Forgejo's finer X-*-Event-Type (PULL_SYNC for new commits), `event` by default.
    """
    text = payload if isinstance(payload, bytes) else json.dumps(payload, indent=2).encode()
    body = urllib.parse.urlencode({"payload": text.decode()}).encode() if form else text
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    delivery_id = delivery_id or str(uuid.uuid4())
    mac = hmac.new(secret.encode(), text if forge in ("gitea", "forgejo") else body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": content_type}
    event_type = event_type or event or "push"
    if forge == "github":
        headers |= {"X-GitHub-Event": event or "push", "X-GitHub-Delivery": delivery_id,
                    "X-GitHub-Hook-ID": "1", "X-Hub-Signature-256": f"sha256={mac}",
                    "User-Agent": "GitHub-Hookshot/abc"}  # fmt: skip
    elif forge == "gitea":
        headers |= {"X-Gitea-Event": event or "push", "X-Gitea-Event-Type": event_type,
                    "X-Gitea-Delivery": delivery_id, "X-Gitea-Signature": mac,
                    "X-Gogs-Event": event or "push", "X-Gogs-Signature": mac,
                    "X-GitHub-Event": event or "push", "X-GitHub-Delivery": delivery_id,
                    "X-Hub-Signature-256": f"sha256={mac}"}  # fmt: skip
    elif forge == "forgejo":
        headers |= {"X-Forgejo-Event": event or "push", "X-Forgejo-Event-Type": event_type,
                    "X-Forgejo-Delivery": delivery_id, "X-Forgejo-Signature": mac,
                    "X-Gitea-Event": event or "push", "X-Gitea-Delivery": delivery_id, "X-Gitea-Signature": mac,
                    "X-GitHub-Event": event or "push", "X-Hub-Signature-256": f"sha256={mac}"}  # fmt: skip
    elif forge == "gitlab":
        headers |= {"X-Gitlab-Event": event or "Push Hook", "X-Gitlab-Token": secret,
                    "X-Gitlab-Instance": "https://git.example", "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
                    "X-Gitlab-Event-UUID": delivery_id, "Idempotency-Key": delivery_id,
                    "User-Agent": "GitLab/17.0.0"}  # fmt: skip
    return Delivery(headers, body)


FORGES = ("github", "gitea", "forgejo", "gitlab")

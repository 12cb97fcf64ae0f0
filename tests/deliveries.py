"""Webhook deliveries shaped like each forge's documented push payloads and headers, signed as that forge signs.

GitHub signs the raw body (also for form hooks); Gitea and Forgejo sign the JSON payload text (for
form hooks: the url-decoded `payload` field, not the body on the wire); GitLab sends the shared
secret in clear as X-Gitlab-Token. See ../shared/reference/protocols.md section 1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

ZERO = "0" * 40


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


def sign(forge: str, payload: dict[str, Any] | bytes, secret: str, *, event: str | None = None,
         form: bool = False, delivery_id: str | None = None) -> Delivery:  # fmt: skip
    """Headers and body as `forge` sends them, with a valid signature under `secret`."""
    text = payload if isinstance(payload, bytes) else json.dumps(payload, indent=2).encode()
    body = urllib.parse.urlencode({"payload": text.decode()}).encode() if form else text
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    delivery_id = delivery_id or str(uuid.uuid4())
    mac = hmac.new(secret.encode(), text if forge in ("gitea", "forgejo") else body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": content_type}
    if forge == "github":
        headers |= {"X-GitHub-Event": event or "push", "X-GitHub-Delivery": delivery_id,
                    "X-GitHub-Hook-ID": "1", "X-Hub-Signature-256": f"sha256={mac}",
                    "User-Agent": "GitHub-Hookshot/abc"}  # fmt: skip
    elif forge == "gitea":
        headers |= {"X-Gitea-Event": event or "push", "X-Gitea-Event-Type": event or "push",
                    "X-Gitea-Delivery": delivery_id, "X-Gitea-Signature": mac,
                    "X-Gogs-Event": event or "push", "X-Gogs-Signature": mac,
                    "X-GitHub-Event": event or "push", "X-GitHub-Delivery": delivery_id,
                    "X-Hub-Signature-256": f"sha256={mac}"}  # fmt: skip
    elif forge == "forgejo":
        headers |= {"X-Forgejo-Event": event or "push", "X-Forgejo-Event-Type": event or "push",
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

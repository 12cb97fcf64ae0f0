"""Turn a verified delivery into a push to deploy, or a reason to ignore it.

Forges disagree on shapes: GitHub has `deleted`, Gitea and GitLab only a zero `after`; Gitea's
test delivery is a push with `before == after`; GitLab names tag pushes "Tag Push Hook". Anything
merely uninteresting is `Ignored` (answered 200: GitLab disables hooks that keep getting 4xx);
only a delivery we cannot read is an EventError (400).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployer.errors import EventError
from deployer.receive.forges import DELIVERY_HEADERS, EVENT_HEADER, PUSH_EVENT, Forge, HeaderMap

__all__ = ["Ignored", "PushEvent", "parse_delivery", "signed_bytes"]

_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_DEFAULT_API = {Forge.GITHUB: "https://api.github.com"}


@dataclass(frozen=True)
class PushEvent:
    """A push to the deploying branch, as the forge described it."""

    forge: Forge
    delivery_id: str | None
    ref: str
    before: str
    after: str
    repo: str | None  # owner/name, or GitLab's path_with_namespace
    api_url: str | None  # derived from the payload's repository URL
    actor: str | None


@dataclass(frozen=True)
class Ignored:
    reason: str


def signed_bytes(forge: Forge, headers: Mapping[str, str], body: bytes) -> bytes:
    """The bytes a forge signs: the raw body, or for Gitea/Forgejo the JSON text of a form hook.

    Raises EventError for a content type that carries no JSON payload.
    """
    headers = HeaderMap.of(headers)
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return body
    if content_type == "application/x-www-form-urlencoded":
        if forge in (Forge.GITEA, Forge.FORGEJO):
            return _form_payload(body)
        return body
    raise EventError(f"unsupported content type {content_type or '(none)'!r}: use application/json")


def parse_delivery(forge: Forge, headers: Mapping[str, str], signed: bytes, *, branch: str) -> PushEvent | Ignored:
    """Read a verified delivery. Raises EventError when the payload is not the JSON a push carries."""
    headers = HeaderMap.of(headers)
    event = headers.get(EVENT_HEADER[forge], "")
    if event != PUSH_EVENT[forge]:
        return Ignored(f"{event or 'unnamed'} event")
    payload = _json(forge, headers, signed)
    ref, before, after = (payload.get(k) for k in ("ref", "before", "after"))
    if not isinstance(ref, str) or not isinstance(before, str) or not isinstance(after, str):
        raise EventError("push payload lacks ref, before or after")
    if not ref.startswith("refs/heads/"):
        return Ignored(f"{ref} is not a branch")
    if ref != f"refs/heads/{branch}":
        return Ignored(f"branch {ref.removeprefix('refs/heads/')} does not deploy (only {branch})")
    if before == after:  # Gitea's "Test delivery" (all zeros on current versions): not a deletion
        return Ignored("test delivery (before == after)")
    if payload.get("deleted") is True or set(after) == {"0"}:
        return Ignored("branch deletion")
    if not _SHA.fullmatch(after):
        raise EventError(f"after is not a commit sha: {after[:80]!r}")
    return PushEvent(
        forge=forge,
        delivery_id=next((headers[h] for h in DELIVERY_HEADERS[forge] if headers.get(h)), None),
        ref=ref,
        before=before,
        after=after,
        repo=_repo(forge, payload),
        api_url=_api_url(forge, payload),
        actor=_actor(forge, payload),
    )


def _form_payload(body: bytes) -> bytes:
    try:
        fields = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise EventError("form body is not url-encoded") from None
    if len(fields.get("payload", [])) != 1:
        raise EventError("form body has no payload field")
    return fields["payload"][0].encode("utf-8")


def _json(forge: Forge, headers: Mapping[str, str], signed: bytes) -> dict[str, Any]:
    text = signed
    content_type = headers.get("Content-Type", "").lower()
    if forge is Forge.GITHUB and content_type.startswith("application/x-www-form-urlencoded"):
        text = _form_payload(signed)
    try:
        payload = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise EventError("payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise EventError("payload is not a JSON object")
    return payload


def _repo(forge: Forge, payload: Mapping[str, Any]) -> str | None:
    if forge is Forge.GITLAB:
        project = payload.get("project") or {}
        return project.get("path_with_namespace") or _text(payload.get("project_id"))
    repository = payload.get("repository") or {}
    return repository.get("full_name")


def _api_url(forge: Forge, payload: Mapping[str, Any]) -> str | None:
    if forge is Forge.GITHUB:
        repository = payload.get("repository") or {}
        # statuses_url is an API address on github.com (https://api.github.com/repos/o/r/statuses/{sha}) and
        # on GHES (https://host/api/v3/repos/...); repository.url may be the web address instead.
        for url in (repository.get("statuses_url") or "", repository.get("url") or ""):
            if "/repos/" in url and ("api." in url or "/api/" in url):
                return url.split("/repos/")[0]
        return _DEFAULT_API[forge]
    if forge is Forge.GITLAB:
        project = payload.get("project") or {}
        web, path = project.get("web_url") or "", project.get("path_with_namespace") or ""
        return web.removesuffix("/" + path) + "/api/v4" if web and path and web.endswith(path) else None
    repository = payload.get("repository") or {}
    html, name = repository.get("html_url") or "", repository.get("full_name") or ""
    return html.removesuffix("/" + name) + "/api/v1" if html and name and html.endswith(name) else None


def _actor(forge: Forge, payload: Mapping[str, Any]) -> str | None:
    if forge is Forge.GITLAB:
        return _text(payload.get("user_username") or payload.get("user_name"))
    sender = payload.get("sender") or {}
    pusher = payload.get("pusher") or {}
    return _text(sender.get("login") or sender.get("username") or pusher.get("name") or pusher.get("username"))


def _text(value: object) -> str | None:
    return None if value is None else str(value)

"""Turn a verified delivery into a push to deploy, or a reason to ignore it.

Forges disagree on shapes: GitHub has `deleted`, Gitea and GitLab only a zero `after`; Gitea's
test delivery is a push with `before == after`; GitLab names tag pushes "Tag Push Hook". Anything
merely uninteresting is `Ignored` (answered 200: GitLab disables hooks that keep getting 4xx);
only a delivery we cannot read is an EventError (400), whose one-line message names the field at
fault and never repeats the payload's values.

A push to the deploying branch is read in full: every field consulted must have its documented type
when present (`repository.full_name` a string, `sender` an object, `commits` a list of objects),
`before` and `after` must be object ids, and `after` must suit the repository's object format
(SHA-1 on GitHub; the caller's `object_format`, else Gitea's `repository.object_format_name`).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from deployer.errors import EventError
from deployer.receive.forges import DELIVERY_HEADERS, EVENT_HEADER, PUSH_EVENT, Forge, HeaderMap

__all__ = ["Ignored", "PushEvent", "parse_delivery", "signed_bytes"]

_T = TypeVar("_T")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_GIT_FORMATS = ("sha1", "sha256")
_OBJECT_FORMATS = (None, *_GIT_FORMATS)
_KINDS: dict[type, str] = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
_MAX_DIGITS = 100  # forge ids are 64-bit; Python itself stops at 4300 digits (sys.get_int_max_str_digits)
_ACTOR_PATHS = ("sender.login", "sender.username", "pusher.name", "pusher.username")
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
    """A verified delivery that deploys nothing: why, in words, and as one of a few words (`kind`, for metrics)."""

    reason: str
    kind: str = "other"


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
    shown = repr(content_type[:60]) if content_type.isascii() and content_type.isprintable() else "(unprintable)"
    raise EventError(f"unsupported content type {shown if content_type else '(none)'}: use application/json")


def parse_delivery(
    forge: Forge, headers: Mapping[str, str], signed: bytes, *, branch: str, object_format: str | None = None
) -> PushEvent | Ignored:
    """Read a verified delivery. Raises EventError, naming the field, when the payload is not the JSON a push carries.

    `object_format` is the repository's as git names it ("sha1", "sha256"), or None when unknown.
    """
    if object_format not in _OBJECT_FORMATS:
        raise ValueError(f"object_format must be one of {_OBJECT_FORMATS}, not {object_format!r}")
    headers = HeaderMap.of(headers)
    event = headers.get(EVENT_HEADER[forge], "")
    if event != PUSH_EVENT[forge]:
        return Ignored(f"{_shown(event) or 'unnamed'} event", "other_event")
    payload = _json(forge, headers, signed)
    ref, before, after = (_required(payload, key) for key in ("ref", "before", "after"))
    if not ref.startswith("refs/heads/"):
        return Ignored(f"{_shown(ref)} is not a branch", "not_a_branch")
    if ref != f"refs/heads/{branch}":
        shown = _shown(ref.removeprefix("refs/heads/"))
        return Ignored(f"branch {shown} does not deploy (only {branch})", "other_branch")
    _check_ids(forge, payload, before, after, object_format)
    repo, api_url, actor = _repo(forge, payload), _api_url(forge, payload), _actor(forge, payload)
    _check_commits(payload)
    if before == after:  # Gitea's "Test delivery" (all zeros on current versions): not a deletion
        return Ignored("test delivery (before == after)", "test_delivery")
    if _typed(payload, "deleted", bool) is True or set(after) == {"0"}:
        return Ignored("branch deletion", "branch_deletion")
    return PushEvent(
        forge=forge,
        delivery_id=next((headers[h] for h in DELIVERY_HEADERS[forge] if headers.get(h)), None),
        ref=ref,
        before=before,
        after=after,
        repo=repo,
        api_url=api_url,
        actor=actor,
    )


def _check_ids(forge: Forge, payload: Mapping[str, Any], before: str, after: str, object_format: str | None) -> None:
    """`before` and `after` are object ids, `after` of the repository's object format (SHA-1 only on GitHub)."""
    for name, value in (("before", before), ("after", after)):
        if not _SHA.fullmatch(value):
            raise EventError(f"{name} is not a commit id (40 or 64 lowercase hex digits)")
    if forge in (Forge.GITEA, Forge.FORGEJO):
        named = _typed(payload, "repository.object_format_name", str)
        if named is not None and named not in _GIT_FORMATS:
            raise EventError("repository.object_format_name is neither sha1 nor sha256")
        object_format = object_format or named  # the deployer's own mirror knows best
    if forge is Forge.GITHUB and len(after) == 64:
        raise EventError("after is a SHA-256 id but GitHub repositories use SHA-1")
    if object_format == "sha1" and len(after) == 64:
        raise EventError("after is a SHA-256 id but the repository uses SHA-1")
    if object_format == "sha256" and len(after) == 40:
        raise EventError("after is a SHA-1 id but the repository uses SHA-256")


def _check_commits(payload: Mapping[str, Any]) -> None:
    """The deployer never reads the commit list, but one of the wrong shape means a malformed payload."""
    for index, commit in enumerate(_typed(payload, "commits", list) or ()):
        if not isinstance(commit, dict):
            raise EventError(f"commits[{index}] is not an object")


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
        payload = json.loads(text, parse_int=_integer)
    except RecursionError:
        raise EventError("payload is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise EventError("payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise EventError("payload is not a JSON object")
    return payload


def _integer(digits: str) -> int:
    """A JSON integer; one longer than any id a forge sends is refused before int() spends time on it."""
    if len(digits) > _MAX_DIGITS:
        raise EventError(f"payload holds an integer of more than {_MAX_DIGITS} digits")
    return int(digits)


def _typed(payload: Mapping[str, Any], path: str, kind: type[_T]) -> _T | None:
    """The value at a dotted path, None if it or an object on the way is missing or null.

    Raises EventError naming the path when an object on the way, or the value itself, has another type.
    """
    value: Any = payload
    keys = path.split(".")
    for depth, key in enumerate(keys):
        if not isinstance(value, dict):
            raise EventError(f"{'.'.join(keys[:depth])} is not an object")
        value = value.get(key)
        if value is None:
            return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EventError(f"{path} is not {_KINDS[kind]}")
    return value


def _required(payload: Mapping[str, Any], key: str) -> str:
    value = _typed(payload, key, str)
    if value is None:
        raise EventError(f"push payload lacks {key}")
    return value


def _repo(forge: Forge, payload: Mapping[str, Any]) -> str | None:
    _typed(payload, "repository", dict)  # GitLab's deprecated copy of `project`: unread, but an object
    if forge is Forge.GITLAB:
        project_id = _project_id(payload)
        return _typed(payload, "project.path_with_namespace", str) or project_id
    return _typed(payload, "repository.full_name", str)


def _project_id(payload: Mapping[str, Any]) -> str | None:
    """GitLab's numeric project id, as text; sent as a number, accepted as a string of digits too."""
    value = payload.get("project_id")
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 2**63:
        raise EventError("project_id is not a positive 64-bit integer")
    return str(value)


def _api_url(forge: Forge, payload: Mapping[str, Any]) -> str | None:
    if forge is Forge.GITHUB:
        # statuses_url is an API address on github.com (https://api.github.com/repos/o/r/statuses/{sha}) and
        # on GHES (https://host/api/v3/repos/...); repository.url may be the web address instead.
        for url in [_typed(payload, f"repository.{key}", str) or "" for key in ("statuses_url", "url")]:
            if "/repos/" in url and ("api." in url or "/api/" in url):
                return url.split("/repos/")[0]
        return _DEFAULT_API[forge]
    if forge is Forge.GITLAB:
        web = _typed(payload, "project.web_url", str) or ""
        path = _typed(payload, "project.path_with_namespace", str) or ""
        return web.removesuffix("/" + path) + "/api/v4" if web and path and web.endswith(path) else None
    html = _typed(payload, "repository.html_url", str) or ""
    name = _typed(payload, "repository.full_name", str) or ""
    return html.removesuffix("/" + name) + "/api/v1" if html and name and html.endswith(name) else None


def _actor(forge: Forge, payload: Mapping[str, Any]) -> str | None:
    """Who pushed; every field that could name them is checked, not only the first one present."""
    keys = ("user_username", "user_name") if forge is Forge.GITLAB else _ACTOR_PATHS
    names = [_typed(payload, key, str) for key in keys]
    return next((name for name in names if name), None)


def _shown(text: str, limit: int = 100) -> str:
    """A name from the payload as it may appear in an answer or a log line: one line, printable, short."""
    flat = "".join(c if c.isprintable() else "?" for c in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

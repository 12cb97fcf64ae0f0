"""Turn a verified delivery into a push to deploy, a pull request to preview, or a reason to ignore it.

Forges disagree on shapes: GitHub has `deleted`, Gitea and GitLab only a zero `after`; Gitea's
test delivery is a push with `before == after`; GitLab names tag pushes "Tag Push Hook". Anything
merely uninteresting is `Ignored` (answered 200: GitLab disables hooks that keep getting 4xx);
only a delivery we cannot read is an EventError (400), whose one-line message names the field at
fault and never repeats the payload's values.

A push to the deploying branch is read in full: every field consulted must have its documented type
when present (`repository.full_name` a string, `sender` an object, `commits` a list of objects),
`before` and `after` must be object ids, and `after` must suit the repository's object format
(SHA-1 on GitHub; the caller's `object_format`, else Gitea's `repository.object_format_name`).

A pull request (GitLab: merge request) is previewed, never deployed, when it is opened, reopened or given
new commits (GitHub "synchronize", Gitea and Forgejo "synchronized", GitLab "update" with
`object_attributes.oldrev`) and asks to merge into the deploying branch. Such a delivery is read in full
the same way: `number` (GitLab `iid`) a positive integer, the head commit held to the rules of `after`.
Its head is fetched from the forge's own ref for it (refs/pull/N/head, GitLab refs/merge-requests/N/head),
which also holds a fork's commits; whether it comes from a fork is compared, never assumed.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from deployer.errors import EventError
from deployer.receive.forges import (
    DELIVERY_HEADERS,
    EVENT_HEADER,
    PREVIEW_ACTIONS,
    PULL_EVENT,
    PUSH_EVENT,
    Forge,
    HeaderMap,
)

__all__ = ["Ignored", "PullRequestEvent", "PushEvent", "parse_delivery", "signed_bytes"]

_T = TypeVar("_T")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_COMMIT_ID = "a commit id (40 or 64 lowercase hex digits)"
_GIT_FORMATS = ("sha1", "sha256")
_OBJECT_FORMATS = (None, *_GIT_FORMATS)
_KINDS: dict[type, str] = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
_MAX_DIGITS = 100  # forge ids are 64-bit; Python itself stops at 4300 digits (sys.get_int_max_str_digits)
_ACTOR_PATHS = ("sender.login", "sender.username", "pusher.name", "pusher.username")
_PULL_ACTOR_PATHS = ("sender.login", "sender.username")
_MAX_ID = 2**63  # forges keep ids and numbers in signed 64-bit integers
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
class PullRequestEvent:
    """A pull/merge request's new head, to preview (never deploy)."""

    forge: Forge
    delivery_id: str | None
    number: int  # GitHub/Gitea `number`, GitLab `object_attributes.iid`
    action: str  # as the forge named it: opened/reopened/synchronize/synchronized, GitLab open/reopen/update
    head: str  # the head commit's id: GitHub/Gitea pull_request.head.sha, GitLab object_attributes.last_commit.id
    head_ref: str  # the ref to fetch it from: refs/pull/N/head, GitLab refs/merge-requests/N/head
    source_branch: str | None  # the head's branch as the payload names it (display only)
    base_branch: str
    from_fork: bool  # also when the head's repository is gone or unnamed: only a known same-repository head is not
    repo: str | None  # the BASE repository: owner/name, or GitLab's path_with_namespace (or project id)
    api_url: str | None  # derived from the payload's repository URL, as for pushes
    actor: str | None
    title: str | None  # one printable line (display only)


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
) -> PushEvent | PullRequestEvent | Ignored:
    """Read a verified delivery: a push, a pull request, or anything else (Ignored).

    Raises EventError, naming the field, when the payload is not the JSON a push or pull request carries.
    `object_format` is the repository's as git names it ("sha1", "sha256"), or None when unknown.
    """
    if object_format not in _OBJECT_FORMATS:
        raise ValueError(f"object_format must be one of {_OBJECT_FORMATS}, not {object_format!r}")
    headers = HeaderMap.of(headers)
    event = headers.get(EVENT_HEADER[forge], "")
    if event == PUSH_EVENT[forge]:
        return _push(forge, headers, _json(forge, headers, signed), branch=branch, object_format=object_format)
    if event == PULL_EVENT[forge]:
        payload = _json(forge, headers, signed)
        return _pull_request(forge, headers, payload, branch=branch, object_format=object_format)
    return Ignored(f"{_shown(event) or 'unnamed'} event", "other_event")


def _push(
    forge: Forge, headers: HeaderMap, payload: Mapping[str, Any], *, branch: str, object_format: str | None
) -> PushEvent | Ignored:
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
        delivery_id=_delivery_id(forge, headers),
        ref=ref,
        before=before,
        after=after,
        repo=repo,
        api_url=api_url,
        actor=actor,
    )


def _pull_request(
    forge: Forge, headers: HeaderMap, payload: Mapping[str, Any], *, branch: str, object_format: str | None
) -> PullRequestEvent | Ignored:
    """A pull request's new head into `branch`; GitLab keeps its merge request in `object_attributes`."""
    gitlab = forge is Forge.GITLAB
    pull = "object_attributes" if gitlab else "pull_request"
    if _typed(payload, pull, dict) is None:
        raise EventError(f"pull request payload lacks {pull}")
    action = _required(payload, f"{pull}.action" if gitlab else "action", what="pull request payload")
    if action not in PREVIEW_ACTIONS[forge]:
        return Ignored(f"pull request {_shown(action)}: nothing to preview", "pr_other_action")
    if gitlab and action == "update" and not _oldrev(payload):
        return Ignored("merge request updated without new commits", "pr_no_new_commits")
    base = _required(
        payload, f"{pull}.target_branch" if gitlab else "pull_request.base.ref", what="pull request payload"
    )
    if base != branch:
        return Ignored(f"pull request into {_shown(base)} (only {branch} deploys)", "pr_other_branch")
    number = _positive(payload, f"{pull}.iid" if gitlab else "number", what="pull request payload")
    head_path = f"{pull}.last_commit.id" if gitlab else "pull_request.head.sha"
    head = _required(payload, head_path, what="pull request payload")
    _check_commit_id(forge, payload, head_path, head, object_format)
    title = _typed(payload, f"{pull}.title", str)
    return PullRequestEvent(
        forge=forge,
        delivery_id=_delivery_id(forge, headers),
        number=number,
        action=action,
        head=head,
        head_ref=f"refs/merge-requests/{number}/head" if gitlab else f"refs/pull/{number}/head",
        source_branch=_typed(payload, f"{pull}.source_branch" if gitlab else "pull_request.head.ref", str),
        base_branch=base,
        from_fork=_from_fork(forge, payload),
        repo=_repo(forge, payload, project_id="project.id" if gitlab else "project_id"),
        api_url=_api_url(forge, payload),
        actor=_first_name(payload, ("user.username",) if gitlab else _PULL_ACTOR_PATHS),
        title=None if title is None else _shown(title),
    )


def _oldrev(payload: Mapping[str, Any]) -> str | None:
    """GitLab's commit before an update, set only when the update brought commits; when set, an object id."""
    oldrev = _typed(payload, "object_attributes.oldrev", str)
    if oldrev and not _SHA.fullmatch(oldrev):
        raise EventError(f"object_attributes.oldrev is not {_COMMIT_ID}")
    return oldrev or None


def _from_fork(forge: Forge, payload: Mapping[str, Any]) -> bool:
    """Whether the head lives outside the base repository; a deleted or unnamed head repository counts as a fork
    (GitHub sends `head.repo: null`, Gitea `head.repo_id: -1` once it is gone)."""
    sides: tuple[str | int | None, ...]
    if forge is Forge.GITLAB:
        sides = tuple(_typed(payload, f"object_attributes.{side}_project_id", int) for side in ("source", "target"))
    elif forge is Forge.GITHUB:
        sides = tuple(_typed(payload, f"pull_request.{side}.repo.full_name", str) for side in ("head", "base"))
    else:
        sides = tuple(_typed(payload, f"pull_request.{side}.repo_id", int) for side in ("head", "base"))
    head, base = sides
    return head is None or head != base


def _delivery_id(forge: Forge, headers: HeaderMap) -> str | None:
    return next((headers[h] for h in DELIVERY_HEADERS[forge] if headers.get(h)), None)


def _check_ids(forge: Forge, payload: Mapping[str, Any], before: str, after: str, object_format: str | None) -> None:
    """`before` and `after` are object ids, `after` of the repository's object format (SHA-1 only on GitHub)."""
    if not _SHA.fullmatch(before):
        raise EventError(f"before is not {_COMMIT_ID}")
    _check_commit_id(forge, payload, "after", after, object_format)


def _check_commit_id(
    forge: Forge, payload: Mapping[str, Any], name: str, value: str, object_format: str | None
) -> None:
    """`value`, the payload's field `name`, is an object id of the repository's object format: SHA-1 on GitHub,
    else the caller's `object_format`, else (Gitea, Forgejo) the payload's `repository.object_format_name`."""
    if not _SHA.fullmatch(value):
        raise EventError(f"{name} is not {_COMMIT_ID}")
    if forge in (Forge.GITEA, Forge.FORGEJO):
        named = _typed(payload, "repository.object_format_name", str)
        if named is not None and named not in _GIT_FORMATS:
            raise EventError("repository.object_format_name is neither sha1 nor sha256")
        object_format = object_format or named  # the deployer's own mirror knows best
    if forge is Forge.GITHUB and len(value) == 64:
        raise EventError(f"{name} is a SHA-256 id but GitHub repositories use SHA-1")
    if object_format == "sha1" and len(value) == 64:
        raise EventError(f"{name} is a SHA-256 id but the repository uses SHA-1")
    if object_format == "sha256" and len(value) == 40:
        raise EventError(f"{name} is a SHA-1 id but the repository uses SHA-256")


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


def _required(payload: Mapping[str, Any], key: str, *, what: str = "push payload") -> str:
    value = _typed(payload, key, str)
    if value is None:
        raise EventError(f"{what} lacks {key}")
    return value


def _positive(payload: Mapping[str, Any], key: str, *, what: str) -> int:
    """A count the payload must hold, such as a pull request's number: a positive 64-bit integer."""
    value = _typed(payload, key, int)
    if value is None:
        raise EventError(f"{what} lacks {key}")
    if not 0 < value <= _MAX_ID:
        raise EventError(f"{key} is not a positive 64-bit integer")
    return value


def _repo(forge: Forge, payload: Mapping[str, Any], *, project_id: str = "project_id") -> str | None:
    """owner/name, or GitLab's path_with_namespace, else its numeric id at `project_id` (a push's top-level
    `project_id`, a merge request's `project.id`)."""
    _typed(payload, "repository", dict)  # GitLab's deprecated copy of `project`: unread, but an object
    if forge is Forge.GITLAB:
        numeric = _project_id(payload, project_id)
        return _typed(payload, "project.path_with_namespace", str) or numeric
    return _typed(payload, "repository.full_name", str)


def _project_id(payload: Mapping[str, Any], path: str = "project_id") -> str | None:
    """GitLab's numeric project id at a dotted `path`, as text; sent as a number, accepted as a string of digits."""
    parent, _, key = path.rpartition(".")
    holder = _typed(payload, parent, dict) if parent else payload
    value = None if holder is None else holder.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_ID:
        raise EventError(f"{path} is not a positive 64-bit integer")
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
    """Who pushed."""
    return _first_name(payload, ("user_username", "user_name") if forge is Forge.GITLAB else _ACTOR_PATHS)


def _first_name(payload: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first non-empty string at `keys`; every one of them is checked, not only the first one present."""
    names = [_typed(payload, key, str) for key in keys]
    return next((name for name in names if name), None)


def _shown(text: str, limit: int = 100) -> str:
    """A name from the payload as it may appear in an answer or a log line: one line, printable, short."""
    flat = "".join(c if c.isprintable() else "?" for c in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

"""The forges deployer understands, and the headers by which each announces itself.

Forgejo also sends every Gitea, Gogs and GitHub header, and Gitea also sends GitHub's: detection
asks for the most specific forge first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

__all__ = [
    "DELIVERY_HEADERS", "EVENT_HEADER", "PREVIEW_ACTIONS", "PULL_EVENT", "PUSH_EVENT", "SIGNATURE_HEADERS", "Forge",
    "HeaderMap", "any_delivery_id", "detect_forge",
]  # fmt: skip


class HeaderMap(Mapping[str, str]):
    """HTTP headers looked up case-insensitively, from any (name, value) pairs; repeated names keep the first."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, str] = {}
        for name, value in pairs:
            self._values.setdefault(name.lower(), value)

    @classmethod
    def from_environ(cls, environ: Mapping[str, object]) -> HeaderMap:
        """The request headers of a WSGI environ (`HTTP_X_GITHUB_EVENT` is `X-GitHub-Event`)."""
        headers = cls(())
        for key, value in environ.items():
            if key.startswith("HTTP_") and isinstance(value, str):
                headers._values.setdefault(key[5:].replace("_", "-").lower(), value)
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            value = environ.get(key)
            if isinstance(value, str) and value:
                headers._values.setdefault(key.replace("_", "-").lower(), value)
        return headers

    @classmethod
    def of(cls, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> HeaderMap:
        if isinstance(headers, HeaderMap):
            return headers
        return cls(headers.items() if isinstance(headers, Mapping) else headers)

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class Forge(enum.StrEnum):
    GITHUB = "github"
    GITEA = "gitea"
    FORGEJO = "forgejo"
    GITLAB = "gitlab"


#: the header naming the event, per forge
EVENT_HEADER: Final[Mapping[Forge, str]] = {
    Forge.FORGEJO: "X-Forgejo-Event",
    Forge.GITEA: "X-Gitea-Event",
    Forge.GITLAB: "X-Gitlab-Event",
    Forge.GITHUB: "X-GitHub-Event",
}

#: the event value of a branch push, per forge
PUSH_EVENT: Final[Mapping[Forge, str]] = {
    Forge.FORGEJO: "push",
    Forge.GITEA: "push",
    Forge.GITLAB: "Push Hook",
    Forge.GITHUB: "push",
}

#: the event value of a pull (GitLab: merge) request, per forge. Gitea and Forgejo name new commits in one
#: the same way, telling them apart only in X-Gitea-Event-Type (pull_request_sync), which is not read
PULL_EVENT: Final[Mapping[Forge, str]] = {
    Forge.FORGEJO: "pull_request",
    Forge.GITEA: "pull_request",
    Forge.GITLAB: "Merge Request Hook",
    Forge.GITHUB: "pull_request",
}

#: the pull-request actions that bring a head worth previewing, as each forge names them. GitLab's "update"
#: also fires for edits of the title or labels: only one with `object_attributes.oldrev` brings new commits
PREVIEW_ACTIONS: Final[Mapping[Forge, frozenset[str]]] = {
    Forge.FORGEJO: frozenset({"opened", "reopened", "synchronized", "synchronize"}),
    Forge.GITEA: frozenset({"opened", "reopened", "synchronized", "synchronize"}),
    Forge.GITLAB: frozenset({"open", "reopen", "update"}),
    Forge.GITHUB: frozenset({"opened", "reopened", "synchronize"}),
}

#: headers identifying one delivery, most stable first (GitLab's Idempotency-Key survives retries)
DELIVERY_HEADERS: Final[Mapping[Forge, tuple[str, ...]]] = {
    Forge.FORGEJO: ("X-Forgejo-Delivery", "X-Gitea-Delivery"),
    Forge.GITEA: ("X-Gitea-Delivery",),
    Forge.GITLAB: ("Idempotency-Key", "X-Gitlab-Event-UUID", "X-Gitlab-Webhook-UUID"),
    Forge.GITHUB: ("X-GitHub-Delivery",),
}


def any_delivery_id(header: Callable[[str], str | None]) -> str | None:
    """The delivery id a request names under any forge's header, looked up with `header` (a headers
    object's `get`); for logs and refusals, where no forge is trusted yet."""
    return next((found for names in DELIVERY_HEADERS.values() for h in names if (found := header(h))), None)


#: signature headers in the order they are trusted; the first one present decides, alone
SIGNATURE_HEADERS: Final[Mapping[Forge, tuple[str, ...]]] = {
    Forge.FORGEJO: ("X-Forgejo-Signature", "X-Gitea-Signature", "X-Hub-Signature-256"),
    Forge.GITEA: ("X-Gitea-Signature", "X-Hub-Signature-256"),
    Forge.GITLAB: ("X-Gitlab-Token",),
    Forge.GITHUB: ("X-Hub-Signature-256",),
}


def detect_forge(headers: Mapping[str, str]) -> Forge | None:
    """The forge that sent a delivery, from its event or signature headers; None if unknown."""
    headers = HeaderMap.of(headers)
    for forge, event_header in EVENT_HEADER.items():
        if event_header in headers or SIGNATURE_HEADERS[forge][0] in headers:
            return forge
    return None

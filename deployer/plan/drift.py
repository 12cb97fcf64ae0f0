"""Drift: how what a stack runs now differs from what it ran right after its last good deploy. Pure: values in.

Both sides are `GET /containers/json?all=1` summaries of one compose project (Id, Names, Image, ImageID,
Labels, State, Status); the engine read lives in deployer.apply.engine. Compose stamps each container with
its project, service and a hash of the service's resolved configuration, so a hand edit (`docker compose up`
with another file, `docker run` into the project, `docker rm`) shows without the compose file at hand.
One-off containers (`docker compose run`) come and go by design and are never drift.

Details are written for people and may reach logs, the API and notifications, so they name only the
container, its service, its state, image ids and a config-hash prefix: never its environment or other labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

__all__ = [
    "DETAIL_LIMIT",
    "KINDS",
    "Baseline",
    "Finding",
    "ServiceBaseline",
    "baseline_of",
    "findings",
    "group_by_project",
    "unreachable",
]

#: what a finding can say, in the order findings are listed
KINDS: Final = ("missing", "stopped", "unhealthy", "config_changed", "image_changed", "extra", "unknown")
#: the longest detail, "…" included
DETAIL_LIMIT: Final = 200

PROJECT: Final = "com.docker.compose.project"
SERVICE: Final = "com.docker.compose.service"
CONFIG_HASH: Final = "com.docker.compose.config-hash"
ONEOFF: Final = "com.docker.compose.oneoff"
_SHORT = 12

#: how a container that is not running is described, by its State
_NOT_RUNNING: Final[Mapping[str, str]] = {
    "exited": "exited",
    "created": "was created but never started",
    "restarting": "is restarting",
    "paused": "is paused",
    "dead": "is dead",
    "removing": "is being removed",
}

_Summary = TypeVar("_Summary", bound=Mapping[str, Any])


@dataclass(frozen=True)
class ServiceBaseline:
    """One service after a good deploy: its containers' config-hash label, their image id, how many there were,
    and whether any of them ran (a one-shot job, `restart: "no"`, has exited by then: its exit is not drift)."""

    config_hash: str
    image: str | None
    containers: int
    running: bool = True
    #: the image as the containers were created with it (a tag, e.g. "grafana/grafana:11"): the engine shows
    #: the bare image id instead once that tag names another image
    image_ref: str | None = None


@dataclass(frozen=True)
class Baseline:
    """What a stack ran right after its last good deploy: per service, the config-hash compose labelled its
    containers with, the image id they ran, and how many containers (replicas) it had."""

    services: Mapping[str, ServiceBaseline]

    def as_dict(self) -> dict[str, dict[str, object]]:
        """What the state store keeps: {service: {"config_hash", "image", "containers", "running"}}."""
        return {
            name: {
                "config_hash": s.config_hash,
                "image": s.image,
                "containers": s.containers,
                "running": s.running,
                "image_ref": s.image_ref,
            }
            for name, s in sorted(self.services.items())
        }

    @classmethod
    def from_dict(cls, found: Mapping[str, Any]) -> Baseline:
        """The baseline `as_dict` gave (unknown keys ignored, missing ones at their defaults)."""
        services = {}
        for name, value in found.items():
            if not isinstance(value, Mapping):
                continue
            image, ref = value.get("image"), value.get("image_ref")
            services[str(name)] = ServiceBaseline(
                config_hash=str(value.get("config_hash") or ""),
                image=str(image) if image else None,
                containers=int(value.get("containers") or 0),
                running=bool(value.get("running", True)),
                image_ref=str(ref) if ref else None,
            )
        return cls(services=services)


@dataclass(frozen=True)
class Finding:
    """One way a stack differs from its baseline; `kind` is one of KINDS, `detail` one line for people."""

    kind: str
    service: str | None
    container: str | None
    detail: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a finding's kind is one of {', '.join(KINDS)}, not {self.kind!r}")

    def as_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "service": self.service, "container": self.container, "detail": self.detail}


def baseline_of(containers: Iterable[Mapping[str, Any]]) -> Baseline:
    """The baseline of one project's containers, taken right after a good deploy; one-off containers ignored.

    Replicas of a service share one config hash and image after `compose up`; should they not, the value most
    of them have is kept (the smallest of a tie), so the same containers always give the same baseline.
    """
    hashes: dict[str, Counter[str]] = {}
    images: dict[str, Counter[str]] = {}
    refs: dict[str, Counter[str]] = {}
    running: set[str] = set()
    for container in containers:
        labels = _labels(container)
        service = labels.get(SERVICE)
        if not service or labels.get(ONEOFF) == "True":
            continue
        if _text(container.get("State")).lower() == "running":
            running.add(service)
        hashes.setdefault(service, Counter())[labels.get(CONFIG_HASH, "")] += 1
        images.setdefault(service, Counter())
        if image := _text(container.get("ImageID")):
            images[service][image] += 1
        refs.setdefault(service, Counter())
        if ref := _text(container.get("Image")):
            refs[service][ref] += 1
    return Baseline(
        services={
            service: ServiceBaseline(
                config_hash=_most_common(counted) or "",
                image=_most_common(images[service]),
                containers=counted.total(),
                running=service in running,
                image_ref=_most_common(refs[service]),
            )
            for service, counted in sorted(hashes.items())
        }
    )


def findings(baseline: Baseline, containers: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """How one project's containers now differ from `baseline`, sorted by kind (KINDS order), service, container.

    Every rule is checked on its own, so one container may give several findings (stopped and config_changed).
    A service with more replicas than at its baseline is not drift here: only fewer ("missing") is.
    """
    found: list[Finding] = []
    present: Counter[str] = Counter()
    for container in containers:
        labels = _labels(container)
        if labels.get(ONEOFF) == "True":
            continue
        service = labels.get(SERVICE) or None
        if service is not None:
            present[service] += 1
        expected = baseline.services.get(service) if service is not None else None
        if expected is None or expected.running:  # a one-shot job's exit is how it ends, not drift
            found += _state_findings(container, service)
        if expected is None:
            found.append(_extra(container, service))
        else:
            found += _changes(container, service, expected)
    for service, expected in baseline.services.items():
        now = present[service]
        detail = f"service {service} is missing a container: {now} of {expected.containers} left"
        found += [Finding("missing", service, None, _line(detail))] * max(expected.containers - now, 0)
    return sorted(found, key=_order)


def unreachable(error: str) -> list[Finding]:
    """The one finding there is when the engine could not be asked: drift is unknown, not absent."""
    return [Finding("unknown", None, None, _line(f"the engine could not be asked what runs: {error}"))]


def group_by_project(containers: Iterable[_Summary]) -> dict[str, list[_Summary]]:
    """Container summaries by their compose project label, projects sorted; those without the label left out.

    The engine is asked once for every project's containers; each stack's findings need only its own.
    """
    groups: dict[str, list[_Summary]] = {}
    for container in containers:
        if project := _labels(container).get(PROJECT):
            groups.setdefault(project, []).append(container)
    return dict(sorted(groups.items()))


def _state_findings(container: Mapping[str, Any], service: str | None) -> list[Finding]:
    """A container that is not running ("stopped", paused and restarting included), or running unhealthy."""
    name = _name(container)
    state = _text(container.get("State")).lower()
    status = _text(container.get("Status"))
    said = f" ({status})" if status else ""
    if state != "running":
        how = _NOT_RUNNING.get(state, f"is {state or 'in no known state'}")
        return [Finding("stopped", service, name, _line(f"container {name} {how}{said}"))]
    if "(unhealthy)" in status:
        return [Finding("unhealthy", service, name, _line(f"container {name} is unhealthy{said}"))]
    return []


def _changes(container: Mapping[str, Any], service: str | None, expected: ServiceBaseline) -> list[Finding]:
    """A container of a baseline service whose config hash or image is not the baseline's."""
    name = _name(container)
    changes = []
    config_hash = _labels(container).get(CONFIG_HASH, "")
    if config_hash != expected.config_hash:
        detail = (
            f"container {name} runs config {_short(config_hash) or 'without a hash'}, "
            f"the last good deploy {_short(expected.config_hash) or 'without a hash'}"
        )
        changes.append(Finding("config_changed", service, name, _line(detail)))
    image = _text(container.get("ImageID"))
    shown = _text(container.get("Image"))
    if expected.image and image and image != expected.image:
        named = _short(shown) if shown.startswith("sha256:") else shown or "image"
        detail = f"container {name} runs {named} {_short(expected.image)} -> {_short(image)}"
        changes.append(Finding("image_changed", service, name, _line(detail)))
    elif _tag_moved(expected.image_ref, shown):
        detail = f"container {name} runs {_short(image or shown)}, but {expected.image_ref} names another image now"
        changes.append(Finding("image_changed", service, name, _line(detail)))
    return changes


def _tag_moved(ref: str | None, shown: str) -> bool:
    """Whether the tag a container was created from names another image now: the engine then lists the
    container's image by its id (`sha256:...`) instead of the tag (a pull or build under the same tag)."""
    return bool(ref) and not str(ref).startswith("sha256:") and shown.startswith("sha256:")


def _extra(container: Mapping[str, Any], service: str | None) -> Finding:
    name = _name(container)
    if service is None:
        detail = f"container {name} is in the project but belongs to no compose service"
    else:
        detail = f"container {name} runs service {service}, which the last good deploy did not have"
    return Finding("extra", service, name, _line(detail))


def _order(finding: Finding) -> tuple[int, str, str, str]:
    return (KINDS.index(finding.kind), finding.service or "", finding.container or "", finding.detail)


def _labels(container: Mapping[str, Any]) -> dict[str, str]:
    labels = container.get("Labels")
    if not isinstance(labels, Mapping):
        return {}
    return {str(key): _text(value) for key, value in labels.items()}


def _name(container: Mapping[str, Any]) -> str:
    """The container's name without the leading "/", else its short id."""
    names = container.get("Names")
    if isinstance(names, list | tuple) and names and (name := _text(names[0]).lstrip("/")):
        return name
    return _short(_text(container.get("Id"))) or "without a name"


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _short(identifier: str) -> str:
    """An image id or hash as people see it: 12 hex digits, no "sha256:"."""
    return identifier.removeprefix("sha256:")[:_SHORT]


def _most_common(counted: Counter[str]) -> str | None:
    if not counted:
        return None
    return min(counted, key=lambda value: (-counted[value], value))


def _line(text: str) -> str:
    """`text` as one printable line of at most DETAIL_LIMIT characters, cut with "…"."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= DETAIL_LIMIT else line[: DETAIL_LIMIT - 1] + "…"

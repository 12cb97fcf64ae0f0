"""What `docker stack deploy` does with compose keys it does not treat as compose does: pure, from the document.

From docker/cli's stack loader and converter (../shared/reference/protocols.md, section 6.6): some service
keys are ignored with a warning, some refused outright, `depends_on` is accepted and never read, every
service needs an `image`, and a relative bind mount names a path on whichever node runs the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "swarm_findings"]

#: ignored by `docker stack deploy` ("Ignoring unsupported options"), with what to use instead
IGNORED = {
    "build": "Swarm never builds: push the image and name it in `image`",
    "cgroupns_mode": "",
    "cgroup_parent": "",
    "devices": "",
    "domainname": "",
    "external_links": "",
    "ipc": "",
    "links": "",
    "mac_address": "",
    "network_mode": "",
    "pid": "",
    "privileged": "",
    "restart": "use deploy.restart_policy",
    "security_opt": "",
    "shm_size": "",
    "userns_mode": "",
    "container_name": "Swarm names tasks itself",
    "expose": "",
}
#: refused: "Compose file contains unsupported options"
REFUSED = {
    "extends": "",
    "volume_driver": "",
    "volumes_from": "",
    "cpu_quota": "use deploy.resources",
    "cpu_shares": "use deploy.resources",
    "cpuset": "use deploy.resources",
    "mem_limit": "use deploy.resources",
    "memswap_limit": "use deploy.resources",
}


@dataclass(frozen=True, order=True)
class Finding:
    """One key of a swarm stack's compose file that Swarm treats differently: `refused` stops the stack."""

    field: str
    message: str
    refused: bool = False


def swarm_findings(document: Mapping[Any, Any], *, multi_node: bool = True) -> list[Finding]:
    """Every key of compose `document` (as written, before interpolation) that `docker stack deploy` ignores
    or refuses, by field (`services.<name>.<key>`). `multi_node`: warn about relative bind mounts."""
    findings = []
    services = document.get("services")
    for name, service in services.items() if isinstance(services, Mapping) else ():
        if not isinstance(service, Mapping):
            continue
        at = f"services.{name}"
        for key in sorted(set(map(str, service)) & set(REFUSED)):
            findings.append(Finding(f"{at}.{key}", _said("refused by docker stack deploy", REFUSED[key]), True))
        for key in sorted(set(map(str, service)) & set(IGNORED)):
            findings.append(Finding(f"{at}.{key}", _said("ignored by docker stack deploy", IGNORED[key])))
        if "image" not in service:
            findings.append(Finding(f"{at}.image", "missing: every service of a swarm stack needs an image", True))
        if "depends_on" in service:
            findings.append(Finding(f"{at}.depends_on", "ignored by docker stack deploy: Swarm has no start order "
                                    "(its conditions are never waited for); use healthchecks and retries"))  # fmt: skip
        if multi_node:
            findings += _relative_binds(at, service.get("volumes"))
    return sorted(findings)


def _relative_binds(at: str, volumes: object) -> list[Finding]:
    found = []
    for index, volume in enumerate(volumes if isinstance(volumes, list) else ()):
        source = volume.split(":", 1)[0] if isinstance(volume, str) and ":" in volume else None
        if isinstance(volume, Mapping) and volume.get("type") == "bind":
            source = str(volume.get("source", ""))
        if source is not None and source.startswith((".", "~")):
            found.append(Finding(f"{at}.volumes[{index}]", f"relative bind mount {source!r}: on a multi-node swarm "
                                 "it names a path on whichever node runs the task"))  # fmt: skip
    return found


def _said(what: str, hint: str) -> str:
    return f"{what}: {hint}" if hint else what

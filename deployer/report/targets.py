"""Where a deployment's statuses go. Kept apart from the forge clients so web workers need no HTTP client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from deployer.model import StatusTarget
from deployer.settings import Settings

__all__ = ["DEFAULT_API_URL", "status_target", "target_url"]

DEFAULT_API_URL: Final[Mapping[str, str]] = {"github": "https://api.github.com"}


def status_target(settings: Settings, *, repo: str | None = None, api_url: str | None = None) -> StatusTarget | None:
    """Where statuses go: settings first, then what a webhook said; None when statuses are off or unknown."""
    if settings.forge is None:
        return None
    url = settings.forge_api_url or api_url or DEFAULT_API_URL.get(settings.forge)
    name = settings.forge_repo or repo
    return StatusTarget(settings.forge, url, name) if url and name else None


def target_url(settings: Settings, deployment_id: str) -> str | None:
    """The deployment's page for a status's link, when DEPLOYER_PUBLIC_URL is set."""
    base = settings.public_url
    return f"{base.rstrip('/')}/api/deployments/{deployment_id}" if base else None

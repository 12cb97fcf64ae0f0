"""Stage 2, fetch: the config repository's commits on disk."""

from deployer.fetch.mirror import Mirror, redact_url

__all__ = ["Mirror", "redact_url"]

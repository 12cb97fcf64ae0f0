"""Secrets that must never deploy: files only the public example key protects, and committed placeholders.

The repository ships its secret files with placeholder values (`change-me-...`) encrypted to an
example age recipient whose private key is committed (examples/example-age-key.txt) so that the
examples and checks run anywhere. Outside `examples/`, such a file or value would deploy a password
anyone can read here: validation and deployment refuse both, naming the file and the key, and
`deployer secrets init` replaces them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath

from deployer.sopsfile import SopsFile

__all__ = [
    "EXAMPLE_IDENTITY", "EXAMPLE_RECIPIENT", "by_hand", "exempt", "is_placeholder", "only_the_example_key",
    "placeholder_keys",
]  # fmt: skip

#: the public example recipient, and its private key: both committed, so they protect nothing
EXAMPLE_RECIPIENT = "age16rnnw5v4evqwn8vpnsqjgcqywe083c3hmtgw0y5vxp700k7gxg4st8en8l"
EXAMPLE_IDENTITY = "AGE-SECRET-KEY-1GU02NRVT60ME6VUSFR08RDQXRL2NSQ63JHW5M4P8M4ZCVCPXEYJSQYSRZN"

#: a committed placeholder: any value that still says change-me
_PLACEHOLDER = re.compile(r"change-me", re.IGNORECASE)
#: a placeholder for a value that comes from somewhere else (Authentik, plex.tv, a DNS provider): never generated
_BY_HAND = re.compile(r"change-me-from-(?P<source>\S+)", re.IGNORECASE)


def exempt(path: PurePosixPath) -> bool:
    """Files under examples/ are examples: their placeholder values and example key are the point."""
    return path.parts[:1] == ("examples",)


def is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER.search(value))


def by_hand(value: str) -> str | None:
    """Where a placeholder's real value comes from (`change-me-from-<source>`), or None if it can be generated."""
    found = _BY_HAND.search(value)
    return found.group("source") if found else None


def placeholder_keys(values: Mapping[str, str]) -> list[str]:
    """The keys whose value is still a committed placeholder, sorted."""
    return sorted(key for key, value in values.items() if is_placeholder(value))


def only_the_example_key(parsed: SopsFile) -> bool:
    """Whether the public example key is the only key that can decrypt the file."""
    return parsed.age_recipients == (EXAMPLE_RECIPIENT,) and not parsed.other_keys

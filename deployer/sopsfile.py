"""Read a SOPS-encrypted file without decrypting it: its keys, its metadata, and any value left in clear.

SOPS keeps keys in clear and writes each encrypted value as `ENC[AES256_GCM,...]`; its metadata
lives under a top-level `sops` key (YAML, JSON) or flattened `sops_*` keys (dotenv). Values may be
left in clear on purpose, by the rules recorded in that metadata (`unencrypted_suffix`,
`encrypted_suffix`, `unencrypted_regex`, `encrypted_regex`); anything else in clear is a leak.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from deployer.yamlio import YAMLError, safe_load

__all__ = ["FORMATS", "SopsFile", "read_sops_file"]

FORMATS = {".env": "dotenv", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
_DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"
#: metadata keys of the other kinds of key that can hold a file's data key
_OTHER_KEY_KINDS = ("pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "key_groups")


@dataclass(frozen=True)
class SopsFile:
    keys: tuple[str, ...]  # top-level data keys
    encrypted: bool  # SOPS metadata with a MAC and a version is present
    in_clear: tuple[str, ...]  # dotted paths of values that should be encrypted and are not
    #: the age recipients the data key is encrypted to, from the metadata
    age_recipients: tuple[str, ...] = ()
    #: whether any other kind of key (pgp, kms, vault, key groups) can decrypt it too
    other_keys: bool = False

    @property
    def problems(self) -> list[str]:
        if not self.encrypted:
            return ["is not SOPS-encrypted (no sops metadata with a mac and a version)"]
        return [f"value of {path} is not encrypted" for path in self.in_clear]


def read_sops_file(path: PurePosixPath, text: str) -> SopsFile | None:
    """Parse `text` (the contents of `path`); None when the suffix is not a format deployer reads."""
    kind = FORMATS.get(path.suffix)
    if kind is None:
        return None
    if kind == "dotenv":
        return _dotenv(text)
    try:
        document = safe_load(text) if kind == "yaml" else json.loads(text)
    except (YAMLError, ValueError):
        return SopsFile(keys=(), encrypted=False, in_clear=())
    if not isinstance(document, dict):
        return SopsFile(keys=(), encrypted=False, in_clear=())
    meta = document.get("sops")
    data = {str(k): v for k, v in document.items() if k != "sops"}
    encrypted = isinstance(meta, dict) and bool(meta.get("mac")) and bool(meta.get("version"))
    rules = _Rules(meta if isinstance(meta, dict) else {})
    in_clear = tuple(p for p, key, value in _leaves(data) if rules.must_encrypt(key) and not _is_enc(value))
    meta = meta if isinstance(meta, dict) else {}
    ages = meta.get("age")
    ages = ages if isinstance(ages, list) else []
    recipients = tuple(str(a["recipient"]) for a in ages if isinstance(a, dict) and a.get("recipient"))
    others = any(meta.get(kind) for kind in _OTHER_KEY_KINDS)
    return SopsFile(keys=tuple(data), encrypted=encrypted, in_clear=in_clear, age_recipients=recipients,
                    other_keys=others)  # fmt: skip


def _dotenv(text: str) -> SopsFile:
    pairs = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#")]
    meta = {k.removeprefix("sops_"): v for k, v in pairs if k.startswith("sops_")}
    data = [(k, v) for k, v in pairs if not k.startswith("sops_")]
    encrypted = bool(meta.get("mac")) and bool(meta.get("version"))
    rules = _Rules(meta)
    in_clear = tuple(k for k, v in data if rules.must_encrypt(k) and not _is_enc(v))
    recipients = tuple(v for k, v in meta.items() if re.fullmatch(r"age__list_\d+__map_recipient", k) and v)
    others = any(k.split("__", 1)[0] in _OTHER_KEY_KINDS for k in meta)
    return SopsFile(keys=tuple(k for k, _ in data), encrypted=encrypted, in_clear=in_clear,
                    age_recipients=recipients, other_keys=others)  # fmt: skip


class _Rules:
    """Which keys sops encrypts, from the file's own metadata (the rules it was encrypted with)."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self.unencrypted_suffix = meta.get("unencrypted_suffix")
        self.encrypted_suffix = meta.get("encrypted_suffix")
        self.unencrypted_regex = _regex(meta.get("unencrypted_regex"))
        self.encrypted_regex = _regex(meta.get("encrypted_regex"))
        if not any((self.unencrypted_suffix, self.encrypted_suffix, self.unencrypted_regex, self.encrypted_regex)):
            self.unencrypted_suffix = _DEFAULT_UNENCRYPTED_SUFFIX

    def must_encrypt(self, key: str) -> bool:
        if self.unencrypted_suffix and key.endswith(self.unencrypted_suffix):
            return False
        if self.encrypted_suffix:
            return key.endswith(self.encrypted_suffix)
        if self.unencrypted_regex and self.unencrypted_regex.search(key):
            return False
        if self.encrypted_regex:
            return bool(self.encrypted_regex.search(key))
        return True


def _regex(value: object) -> re.Pattern[str] | None:
    return re.compile(value) if isinstance(value, str) and value else None


def _leaves(node: Any, prefix: str = "", key: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, nearest key, value) for every scalar below `node`."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _leaves(value, f"{prefix}.{name}" if prefix else str(name), str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{prefix}[{index}]", key)
    elif node is not None and node != "":
        yield prefix, key, node


def _is_enc(value: object) -> bool:
    return isinstance(value, str) and value.startswith("ENC[AES256_GCM,")

"""`deployer secrets`: encrypt, decrypt, edit, check and rotate the repository's SOPS files.

Every sops call runs in the repository root (so `.sops.yaml` is found and its creation rules match
the repository-relative path) through the runner seam. `check` reads files without decrypting and
needs no key, so it can run in CI and as a pre-commit hook.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deployer.errors import CatalogError, ConfigError, SecretError
from deployer.runner import CommandRunner
from deployer.secret_policy import EXAMPLE_IDENTITY, EXAMPLE_RECIPIENT, by_hand, exempt, is_placeholder
from deployer.sopsfile import FORMATS, SopsFile, read_sops_file

__all__ = ["Initialized", "check", "decrypt", "edit", "encrypt", "init", "rotate", "secret_files", "write_sops_config"]

#: files under secrets/ that are documentation, not secrets (the before-stop hook skips the same)
IGNORED_SUFFIXES = (".example", ".md", ".sample")
IGNORED_NAMES = (".gitkeep",)
AGE_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")
#: .sops.yaml as `deployer secrets init --recipient` writes it
SOPS_CONFIG = """\
# sops creation rules: which age recipients new secret files are encrypted to (written by
# `deployer secrets init`). examples/ stays on the public example key: it protects nothing.
creation_rules:
  - path_regex: ^examples/secrets/.*\\.(env|ya?ml|json)$
    age: {example}
  - path_regex: ^secrets/.*\\.(env|ya?ml|json)$
    age: {recipients}
"""


def secret_files(root: Path, paths: Iterable[str] = ("secrets",)) -> list[PurePosixPath]:
    """The files to check: each path that is a file, and every file below each path that is a folder."""
    found: list[PurePosixPath] = []
    for given in paths:
        full = (root / given) if not os.path.isabs(given) else Path(given)
        candidates = sorted(p for p in full.rglob("*") if p.is_file()) if full.is_dir() else [full]
        for path in candidates:
            if path.name in IGNORED_NAMES or path.name.endswith(IGNORED_SUFFIXES):
                continue
            found.append(PurePosixPath(os.path.relpath(path, root)))
    return found


def check(root: Path, files: Iterable[PurePosixPath]) -> list[str]:
    """One line per problem: a file that is not SOPS-encrypted, a value left in clear, an unknown format."""
    problems = []
    for path in files:
        full = root / path
        if not full.is_file():
            problems.append(f"{path}: does not exist")
            continue
        parsed = read_sops_file(path, full.read_text(encoding="utf-8", errors="replace"))
        if parsed is None:
            problems.append(f"{path}: not a format deployer reads (use .env, .yaml, .yml or .json)")
            continue
        problems.extend(f"{path}: {problem}" for problem in parsed.problems)
    return problems


def encrypt(root: Path, path: PurePosixPath, *, runner: CommandRunner, env: Mapping[str, str]) -> None:
    """Encrypt a plaintext file in place to the recipients `.sops.yaml` gives its path.

    Raises SecretError when it is already encrypted or sops refuses (no matching creation rule).
    """
    parsed = _parsed(root, path)
    if parsed.encrypted:
        raise SecretError(f"{path}: already encrypted (use `deployer secrets edit` or `rotate`)")
    kind = FORMATS[path.suffix]
    _sops(root, ["encrypt", "--input-type", kind, "--output-type", kind, "--in-place", str(path)], runner, env)


@dataclass(frozen=True)
class Initialized:
    """What `init` did to one file (key names only, never a value)."""

    path: PurePosixPath
    generated: tuple[str, ...]
    by_hand: tuple[tuple[str, str], ...]  # (key, where its value comes from)


def write_sops_config(root: Path, recipients: Sequence[str]) -> None:
    """Point `.sops.yaml`'s rule for secrets/ at `recipients`; examples/ stay on the example key.

    Raises ConfigError for a recipient that is not an age public key, or the example one.
    """
    for recipient in recipients:
        if not AGE_RECIPIENT.fullmatch(recipient):
            raise ConfigError(f"--recipient: {recipient!r} is not an age public key (age1..., from `age-keygen -y`)")
        if recipient == EXAMPLE_RECIPIENT:
            raise ConfigError("--recipient: that is the public example key; use your own (`age-keygen -o KEY`)")
    (root / ".sops.yaml").write_text(SOPS_CONFIG.format(example=EXAMPLE_RECIPIENT, recipients=",".join(recipients)))


def init(
    root: Path, files: Iterable[PurePosixPath], *, runner: CommandRunner, env: Mapping[str, str]
) -> list[Initialized]:
    """Replace every generable placeholder with a strong random value and encrypt each file to `.sops.yaml`'s
    recipients, in memory (plaintext goes to sops through a pipe, never to disk).

    A placeholder saying where its value comes from (`change-me-from-authentik-...`) is kept for the
    operator to set (`deployer secrets edit`); other values are kept as they are. The public example
    key is offered to sops alongside the operator's own, so files still encrypted to it can be read.
    Raises ConfigError when `.sops.yaml` still names only the example recipient, SecretError when sops fails.
    """
    rules = (root / ".sops.yaml").read_text(encoding="utf-8") if (root / ".sops.yaml").is_file() else ""
    if not set(AGE_RECIPIENT.findall(rules)) - {EXAMPLE_RECIPIENT}:
        raise ConfigError(".sops.yaml names no recipient of yours: pass --recipient age1... (age-keygen -y KEY)")
    with_example = {**env, "SOPS_AGE_KEY": "\n".join(filter(None, (env.get("SOPS_AGE_KEY"), EXAMPLE_IDENTITY)))}
    done = []
    for path in files:
        if exempt(path):
            continue
        kind = FORMATS.get(path.suffix)
        if kind is None:
            raise CatalogError(f"{path}: not a format deployer reads (use .env, .yaml, .yml or .json)")
        values = json.loads(_sops(root, ["decrypt", "--input-type", kind, "--output-type", "json", str(path)],
                                  runner, with_example))  # fmt: skip
        generated, manual = _replace_placeholders(values)
        plain = _render(path, kind, values)
        args = ["encrypt", "--input-type", kind, "--output-type", kind, "--filename-override", str(path)]
        encrypted = _sops(root, args, runner, with_example, stdin=plain)
        (root / path).write_text(encrypted, encoding="utf-8")
        done.append(Initialized(path, tuple(generated), tuple(manual)))
    return done


def _replace_placeholders(values: dict[str, object]) -> tuple[list[str], list[tuple[str, str]]]:
    generated, manual = [], []
    for key, value in values.items():
        if not isinstance(value, str) or not is_placeholder(value):
            continue
        source = by_hand(value)
        if source is not None:
            manual.append((key, source))
            continue
        short = key.upper().endswith(("_USER", "_ACCESS_KEY", "_USERNAME"))  # MinIO: access keys are 3-20 characters
        values[key] = secrets.token_hex(10) if short else secrets.token_urlsafe(45)
        generated.append(key)
    return generated, manual


def _render(path: PurePosixPath, kind: str, values: Mapping[str, object]) -> str:
    if kind != "dotenv":
        return json.dumps(values)  # JSON is YAML too
    lines = []
    for key, value in values.items():
        text = json.dumps(value) if isinstance(value, bool | int | float) else str(value)
        if "\n" in text:
            raise SecretError(f"{path}: {key}: a value with a line break cannot be written to a .env file")
        lines.append(f"{key}={text}\n")
    return "".join(lines)


def decrypt(root: Path, path: PurePosixPath, *, runner: CommandRunner, env: Mapping[str, str]) -> str:
    """The plaintext of one file, for the caller to print; nothing is written."""
    kind = FORMATS.get(path.suffix, "binary")
    return _sops(root, ["decrypt", "--input-type", kind, "--output-type", kind, str(path)], runner, env)


def edit(root: Path, path: PurePosixPath, *, runner: CommandRunner, env: Mapping[str, str]) -> int:
    """Open the file in $EDITOR through `sops edit` (plaintext only in sops' temporary file)."""
    return runner.interactive(["sops", "edit", str(path)], env=env, cwd=root)


def rotate(root: Path, path: PurePosixPath, *, runner: CommandRunner, env: Mapping[str, str]) -> None:
    """Re-encrypt with a fresh data key, to the recipients `.sops.yaml` now names.

    The data key is rotated first, while a key that can decrypt the file is at hand; then the
    recipients are brought in line with `.sops.yaml` (which may drop that very key).
    """
    _parsed(root, path)
    _sops(root, ["rotate", "--in-place", str(path)], runner, env)
    _sops(root, ["updatekeys", "--yes", str(path)], runner, env)


def _parsed(root: Path, path: PurePosixPath) -> SopsFile:
    if not (root / path).is_file():
        raise CatalogError(f"{path}: does not exist")
    parsed = read_sops_file(path, (root / path).read_text(encoding="utf-8", errors="replace"))
    if parsed is None:
        raise CatalogError(f"{path}: not a format deployer reads (use .env, .yaml, .yml or .json)")
    return parsed


def _sops(
    root: Path, args: list[str], runner: CommandRunner, env: Mapping[str, str], *, stdin: str | None = None
) -> str:
    result = runner.run(["sops", *args], env=env, cwd=root, timeout=120, stdin=stdin)
    if not result.ok:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise SecretError(f"{args[-1]}: sops {args[0]} failed: {lines[-1] if lines else result.returncode}")
    return result.stdout

"""`deployer secrets`: encrypt, decrypt, edit, check and rotate the repository's SOPS files.

Every sops call runs in the repository root (so `.sops.yaml` is found and its creation rules match
the repository-relative path) through the runner seam. `check` reads files without decrypting and
needs no key, so it can run in CI and as a pre-commit hook.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from deployer.errors import CatalogError, SecretError
from deployer.runner import CommandRunner
from deployer.sopsfile import FORMATS, SopsFile, read_sops_file

__all__ = ["check", "decrypt", "edit", "encrypt", "rotate", "secret_files"]

#: files under secrets/ that are documentation, not secrets (the before-stop hook skips the same)
IGNORED_SUFFIXES = (".example", ".md", ".sample")
IGNORED_NAMES = (".gitkeep",)


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


def _sops(root: Path, args: list[str], runner: CommandRunner, env: Mapping[str, str]) -> str:
    result = runner.run(["sops", *args], env=env, cwd=root, timeout=120)
    if not result.ok:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise SecretError(f"{args[-1]}: sops {args[0]} failed: {lines[-1] if lines else result.returncode}")
    return result.stdout

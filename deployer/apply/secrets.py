"""Decrypt exactly the SOPS files one stack names, into memory, with the `sops` binary.

Plaintext never touches disk: sops prints JSON to a pipe, and the values become the environment
of `docker compose` for interpolation. Errors name the file and the cause, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from deployer.errors import KeyUnavailableError, KnownSecretError, SecretError
from deployer.runner import CommandRunner
from deployer.secret_policy import exempt, placeholder_keys
from deployer.sopsfile import FORMATS

__all__ = ["decrypt_argv", "decrypt_files", "redact"]

#: sops exit codes worth a sentence of their own (cmd/sops/codes/codes.go)
_EXIT_CAUSES = {
    127: "the sops binary is not on PATH",
    128: "no age identity can decrypt it (check SOPS_AGE_KEY_FILE)",
    51: "MAC mismatch: the file was changed after it was encrypted",
    52: "MAC not found: the file is damaged",
    24: "the MAC could not be decrypted",
    25: "the values could not be decrypted",
}
#: values shorter than this are not redacted from output (they would mangle every line)
MIN_REDACTED_LENGTH = 4


def decrypt_argv(path: PurePosixPath) -> list[str]:
    """The sops command that prints one file's plaintext as JSON on stdout."""
    input_type = FORMATS.get(path.suffix, "binary")
    return ["sops", "decrypt", "--input-type", input_type, "--output-type", "json", str(path)]


def decrypt_files(
    paths: Iterable[PurePosixPath],
    *,
    repo_root: Path,
    runner: CommandRunner,
    env: Mapping[str, str],
) -> dict[str, str]:
    """Decrypt each file (and nothing else) and merge their keys; later files win on a clash.

    sops runs in the repository root so that `.sops.yaml` is found, with exactly `env` (where
    SOPS_AGE_KEY_FILE lives). Raises SecretError naming the file and the cause, and KnownSecretError
    naming the keys whose value is still a committed placeholder (outside examples/).
    """
    values: dict[str, str] = {}
    for path in paths:
        _require_identity(path, env)
        result = runner.run(decrypt_argv(path), env=env, cwd=repo_root, timeout=60)
        if not result.ok:
            raise SecretError(f"{path}: cannot decrypt: {_cause(result.returncode, result.stderr)}")
        found = _flat_values(path, result.stdout)
        placeholders = [] if exempt(path) else placeholder_keys(found)
        if placeholders:
            raise KnownSecretError(f"{path}: {', '.join(placeholders)}: still a committed placeholder, which anyone can"
                                   " read here (`deployer secrets init` generates values; set values that come from"
                                   " elsewhere with `deployer secrets edit`)")  # fmt: skip
        values |= found
    return values


def _require_identity(path: PurePosixPath, env: Mapping[str, str]) -> None:
    """Raise KeyUnavailableError when no age identity can even be read.

    sops answers a missing key file exactly as it answers a key that cannot decrypt (exit 128); the
    two differ for the operator: a key put back fixes the first by itself (transient), the second
    needs a new commit (terminal).
    """
    if env.get("SOPS_AGE_KEY") or env.get("SOPS_AGE_KEY_CMD") or env.get("SOPS_AGE_SSH_PRIVATE_KEY_FILE"):
        return
    named = env.get("SOPS_AGE_KEY_FILE")
    if named:
        key_file = Path(named)
    else:  # sops' default: $XDG_CONFIG_HOME/sops/age/keys.txt, else ~/.config/sops/age/keys.txt
        config = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
        key_file = Path(config) / "sops" / "age" / "keys.txt"
    try:
        with key_file.open("rb"):
            pass
    except OSError as error:
        where = "SOPS_AGE_KEY_FILE" if named else "no SOPS_AGE_KEY_FILE is set and sops' default"
        raise KeyUnavailableError(
            f"{path}: cannot decrypt: {where} {key_file} cannot be read ({error.strerror or error})"
        ) from None


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every place a secret value covers in `text` with `***`.

    Overlapping or adjacent occurrences of different values become one `***`, so no fragment of
    either is left between them. A value also counts without its surrounding white space and line by
    line (a PEM key, a value with a trailing newline), as tools print them that way.
    """
    values: set[str] = set()
    for secret in secrets:
        values.update((secret, secret.strip(), *(line.strip() for line in secret.splitlines())))
    spans: list[tuple[int, int]] = []
    for value in values:
        if len(value) < MIN_REDACTED_LENGTH or not value.strip():
            continue
        at = text.find(value)
        while at != -1:
            spans.append((at, at + len(value)))
            at = text.find(value, at + 1)
    if not spans:
        return text
    out, done = [], 0
    for start, end in _merged(spans):
        out += [text[done:start], "***"]
        done = end
    return "".join([*out, text[done:]])


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _cause(returncode: int, stderr: str) -> str:
    if returncode in _EXIT_CAUSES:
        return _EXIT_CAUSES[returncode]
    if "metadata not found" in stderr:
        return "it is not SOPS-encrypted (sops metadata not found)"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # sops' own messages describe keys and files, not values; keep the last line, and the exit code.
    return f"sops exited {returncode}: {lines[-1] if lines else 'no message'}"


def _flat_values(path: PurePosixPath, stdout: str) -> dict[str, str]:
    try:
        document = json.loads(stdout)
    except ValueError as error:
        raise SecretError(f"{path}: sops did not print JSON") from error
    if not isinstance(document, dict):
        raise SecretError(f"{path}: expected key/value pairs at the top level")
    values = {}
    for key, value in document.items():
        if isinstance(value, dict | list) or value is None:
            raise SecretError(f"{path}: key {key!r} is not a single value (nested values cannot be variables)")
        values[str(key)] = _text(value)
    return values


def _text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

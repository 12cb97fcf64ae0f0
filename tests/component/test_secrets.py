"""Decrypting with the real sops and age binaries, with keys made by the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest

from deployer.apply import decrypt_files
from deployer.errors import KeyUnavailableError, SecretError
from deployer.model import TRANSIENT, Reason
from deployer.reasons import reason_for
from deployer.runner import SubprocessRunner
from deployer.settings import Settings
from tests.conftest import AgeKey, tool_environ
from tests.helpers import ConfigRepo

PASSWORD = "correct-horse-battery-staple"


def sops_env(tmp_path: Path, key: AgeKey | None) -> dict[str, str]:
    return dict(Settings.from_env(tool_environ(tmp_path, key)).sops_env)


def decrypt(repo: ConfigRepo, tmp_path: Path, key: AgeKey | None, *files: str) -> dict[str, str]:
    return decrypt_files(
        [PurePosixPath(f) for f in files], repo_root=repo.path, runner=SubprocessRunner(), env=sops_env(tmp_path, key)
    )


@pytest.mark.parametrize("name", ["secrets/db.env", "secrets/db.yaml", "secrets/db.json"])
def test_each_format_decrypts_to_flat_values(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey, name: str) -> None:
    repo.secret(name, {"DB_PASSWORD": PASSWORD, "DB_USER": "app"})
    assert PASSWORD not in (repo.path / name).read_text()
    assert decrypt(repo, tmp_path, age_key, name) == {"DB_PASSWORD": PASSWORD, "DB_USER": "app"}


def test_values_with_spaces_quotes_and_equals_survive(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    tricky = "a b='c\"=d$e"
    repo.secret("secrets/t.env", {"TRICKY": tricky})
    assert decrypt(repo, tmp_path, age_key, "secrets/t.env") == {"TRICKY": tricky}


def test_only_the_named_files_are_decrypted_and_later_files_win(
    repo: ConfigRepo, tmp_path: Path, age_key: AgeKey, other_age_key: AgeKey
) -> None:
    repo.secret("secrets/a.env", {"SHARED": "from-a", "A": "1"})
    repo.secret("secrets/b.env", {"SHARED": "from-b"})
    # Another stack's file that this key cannot decrypt: it must not even be tried.
    repo.secret("secrets/other.env", {"X": "y"}, recipient=other_age_key.recipient)
    assert decrypt(repo, tmp_path, age_key, "secrets/a.env", "secrets/b.env") == {"SHARED": "from-b", "A": "1"}


def test_wrong_key_names_the_file_and_the_cause_without_values(
    repo: ConfigRepo, tmp_path: Path, age_key: AgeKey, other_age_key: AgeKey
) -> None:
    repo.secret("secrets/db.env", {"DB_PASSWORD": PASSWORD})
    with pytest.raises(SecretError) as caught:
        decrypt(repo, tmp_path, other_age_key, "secrets/db.env")
    assert (
        str(caught.value) == "secrets/db.env: cannot decrypt: no age identity can decrypt it (check SOPS_AGE_KEY_FILE)"
    )


def test_no_key_at_all_is_a_key_unavailable_not_a_bad_secret(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    """No identity anywhere is transient (the operator puts the key in place); a key that cannot decrypt is not."""
    repo.secret("secrets/db.env", {"DB_PASSWORD": PASSWORD})
    with pytest.raises(KeyUnavailableError, match=r"no SOPS_AGE_KEY_FILE is set and sops' default .*keys\.txt cannot"):
        decrypt(repo, tmp_path, None, "secrets/db.env")


def test_a_key_file_that_is_gone_is_a_key_unavailable(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    repo.secret("secrets/db.env", {"DB_PASSWORD": PASSWORD})
    gone = AgeKey(tmp_path / "removed-key.txt", age_key.recipient)
    with pytest.raises(KeyUnavailableError) as caught:
        decrypt(repo, tmp_path, gone, "secrets/db.env")
    assert str(caught.value) == (
        f"secrets/db.env: cannot decrypt: SOPS_AGE_KEY_FILE {gone.path} cannot be read (No such file or directory)"
    )
    assert reason_for(caught.value) is Reason.KEY_UNAVAILABLE and Reason.KEY_UNAVAILABLE in TRANSIENT


def test_tampered_file_is_a_mac_mismatch(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    path = repo.secret("secrets/db.env", {"DB_PASSWORD": PASSWORD, "DB_USER": "app"})
    lines = [line for line in path.read_text().splitlines() if not line.startswith("DB_USER=")]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SecretError, match=r"secrets/db\.env: cannot decrypt: MAC mismatch"):
        decrypt(repo, tmp_path, age_key, "secrets/db.env")


def test_plaintext_file_is_refused(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    repo.write("secrets/plain.env", f"DB_PASSWORD={PASSWORD}\n")
    with pytest.raises(SecretError) as caught:
        decrypt(repo, tmp_path, age_key, "secrets/plain.env")
    assert "secrets/plain.env: cannot decrypt:" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_nested_values_are_refused_by_key_name(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    repo.write("plain.yaml", f"db:\n  password: {PASSWORD}\n")
    encrypted = subprocess.run(
        ["sops", "encrypt", "--age", age_key.recipient, "--filename-override", "secrets/n.yaml", "plain.yaml"],
        cwd=repo.path, capture_output=True, text=True, check=True, env={**sops_env(tmp_path, age_key)},
    ).stdout  # fmt: skip
    repo.write("secrets/n.yaml", encrypted)
    with pytest.raises(SecretError, match="key 'db' is not a single value") as caught:
        decrypt(repo, tmp_path, age_key, "secrets/n.yaml")
    assert PASSWORD not in str(caught.value)

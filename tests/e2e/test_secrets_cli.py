"""`deployer secrets` with the real sops and age binaries and keys made by the tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import AgeKey, tool_environ
from tests.helpers import ROOT, ConfigRepo

PLAIN = "DB_PASSWORD=hunter2-but-longer\nDB_USER=app\n"


def secrets(tmp_path: Path, key: AgeKey | None, repo: ConfigRepo, *args: str, **env: str):  # type: ignore[no-untyped-def]
    environ = tool_environ(tmp_path, key, **env)
    return subprocess.run(["deployer", "secrets", "--repo", repo.url, *args], capture_output=True, text=True,
                          env=environ, timeout=120, check=False)  # fmt: skip


def test_encrypt_then_check_then_decrypt_to_stdout(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    path = repo.write("secrets/db.env", PLAIN)
    result = secrets(tmp_path, age_key, repo, "encrypt", str(path))  # an absolute path works too
    assert result.returncode == 0, result.stderr
    assert "hunter2-but-longer" not in path.read_text()
    assert "sops_mac=" in path.read_text()

    checked = secrets(tmp_path, None, repo, "check")
    assert (checked.returncode, checked.stdout.strip()) == (0, "ok: 1 secret files, every value encrypted")

    plain = secrets(tmp_path, age_key, repo, "decrypt", "secrets/db.env")
    assert plain.returncode == 0 and plain.stdout == PLAIN
    assert "hunter2-but-longer" not in path.read_text()

    again = secrets(tmp_path, age_key, repo, "encrypt", "secrets/db.env")
    assert again.returncode == 2 and "already encrypted" in again.stderr


def test_check_refuses_plaintext_files_and_values_left_in_clear(
    repo: ConfigRepo, tmp_path: Path, age_key: AgeKey
) -> None:
    repo.secret("secrets/ok.env", {"A": "1"})
    leaked = repo.secret("secrets/leaky.yaml", {"token": "abc", "user": "x"})
    leaked.write_text(leaked.read_text().replace(leaked.read_text().split("token: ")[1].split("\n")[0], "abc"))
    repo.write("secrets/plain.env", PLAIN)
    repo.write("secrets/README.md", "how to add a secret\n")
    repo.write("secrets/app.env.example", "DB_PASSWORD=\n")

    result = secrets(tmp_path, None, repo, "check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "deployer: error: secrets/leaky.yaml: value of token is not encrypted",
        "deployer: error: secrets/plain.env: is not SOPS-encrypted (no sops metadata with a mac and a version)",
    ]
    assert "hunter2" not in result.stderr
    # as a pre-commit hook: only the files it is given
    assert secrets(tmp_path, None, repo, "check", "secrets/ok.env").returncode == 0


def test_rotate_re_encrypts_to_the_recipients_sops_yaml_names_now(
    repo: ConfigRepo, tmp_path: Path, age_key: AgeKey, other_age_key: AgeKey
) -> None:
    repo.secret("secrets/db.env", {"DB_PASSWORD": "v"})
    repo.write(".sops.yaml", f"creation_rules:\n  - age: {other_age_key.recipient}\n")
    assert secrets(tmp_path, other_age_key, repo, "decrypt", "secrets/db.env").returncode != 0

    rotated = secrets(tmp_path, age_key, repo, "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip() == "rotated secrets/db.env"
    assert secrets(tmp_path, other_age_key, repo, "decrypt", "secrets/db.env").stdout == "DB_PASSWORD=v\n"
    assert secrets(tmp_path, age_key, repo, "decrypt", "secrets/db.env").returncode != 0


def test_edit_runs_the_editor_and_re_encrypts(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    repo.secret("secrets/db.env", {"DB_PASSWORD": "old"})
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nsed -i "s/=old/=new-value/" "$1"\n')
    editor.chmod(0o755)
    result = secrets(tmp_path, age_key, repo, "edit", "secrets/db.env", EDITOR=str(editor))
    assert result.returncode == 0, result.stderr
    assert "new-value" not in (repo.path / "secrets/db.env").read_text()
    assert secrets(tmp_path, age_key, repo, "decrypt", "secrets/db.env").stdout == "DB_PASSWORD=new-value\n"


def test_this_repositorys_secrets_pass_the_check(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(["deployer", "secrets", "--repo", str(root), "check", "secrets", "examples/secrets"],
                            capture_output=True, text=True, env={**os.environ}, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_init_makes_a_fork_of_this_repository_deployable_in_one_step(tmp_path: Path, age_key: AgeKey) -> None:
    """The operator's first step: the shipped placeholders become strong values of their own, encrypted to
    their key only; what must come from elsewhere is listed; validation (with their key) then names it."""
    fork = ConfigRepo(tmp_path / "fork")
    for name in ("secrets", "examples", "stacks", ".sops.yaml"):
        subprocess.run(["cp", "-r", str(ROOT / name), str(fork.path)], check=True)
    fork.commit("fork")
    refused = secrets(tmp_path, age_key, fork, "init")
    assert refused.returncode == 2 and "names no recipient of yours" in refused.stderr

    done = secrets(tmp_path, age_key, fork, "init", "--recipient", age_key.recipient)
    assert done.returncode == 0, done.stderr
    assert "secrets/auth.env: generated AUTHENTIK_SECRET_KEY, AUTHENTIK_POSTGRESQL_PASSWORD," in done.stdout
    assert "set by hand: GRAFANA_OAUTH_CLIENT_SECRET (from authentik-grafana-provider-client-secret)" in done.stderr
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=fork.path, capture_output=True, text=True,
                             check=True).stdout.split("\n")  # fmt: skip
    assert sorted(line[3:] for line in changed if line) == [".sops.yaml", *(f"secrets/{n}.env" for n in
                                                           ("auth", "mediaserver", "minio", "monitoring", "traefik",
                                                            "zot"))]  # fmt: skip
    plain = secrets(tmp_path, age_key, fork, "decrypt", "secrets/minio.env").stdout
    assert "change-me" not in plain and "MINIO_ROOT_PASSWORD=" in plain
    for text in (done.stdout, done.stderr):
        assert plain.split("MINIO_ROOT_PASSWORD=")[1].split()[0] not in text  # values are never printed
    env = tool_environ(tmp_path, age_key)
    validate = ["deployer", "validate", "--repo", fork.url]
    validated = subprocess.run(validate, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert validated.stderr.splitlines() == [
        "deployer: error: stacks/shared.env: ACME_EMAIL: still the committed placeholder: set it for your installation",
        "deployer: error: stacks/shared.env: DOMAIN: still the committed placeholder: set it for your installation",
    ]
    fork.write("stacks/shared.env", "DOMAIN=home.example.net\nACME_EMAIL=ops@home.example.net\nTZ=Etc/UTC\n")
    validated = subprocess.run(validate, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert validated.returncode == 2
    assert "secrets/monitoring.env: GRAFANA_OAUTH_CLIENT_ID, GRAFANA_OAUTH_CLIENT_SECRET: still a committed" in (
        validated.stderr
    )
    assert "encrypted only to the public example key" not in validated.stderr

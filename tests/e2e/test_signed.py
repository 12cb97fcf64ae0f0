"""DEPLOYER_REQUIRE_SIGNED through a real `deployer serve`: real keys (ssh-keygen, gpg), real `git commit -S`.

A commit deploys only when `git verify-commit` verifies it against the operator's allowed signers (an SSH
allowed_signers file, a GnuPG home holding only the allowed keys); anything else gets the status `error`
"commit not signed by an allowed signer", a `commit.unsigned` audit event, and nothing deployed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import container_env, http, wait_for
from tests.helpers import ConfigRepo, git, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def ssh_key(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def ssh_signed(repo: ConfigRepo, key: Path, message: str) -> str:
    git(repo.path, "add", "--all")
    git(repo.path, "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "--quiet", "-S", "-m", message)
    return git(repo.path, "rev-parse", "HEAD")


def change(repo: ConfigRepo, name: str, value: str) -> None:
    repo.stack(name, {"main": service(environment={"VERSION": value})})


def posted(forge: ForgeServer, sha: str) -> str:
    return [p.description for p in forge.posted if (p.sha, p.context) == (sha, "deployer")][-1]


def test_only_commits_an_allowed_ssh_key_signed_deploy(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, tmp_path: Path
) -> None:
    name = f"{prefix}-app"
    allowed, stranger = ssh_key(tmp_path / "ops", "ops"), ssh_key(tmp_path / "stranger", "stranger")
    signers = tmp_path / "allowed_signers"
    public = (tmp_path / "ops.pub").read_text().split()
    signers.write_text(f'ops@example.org namespaces="git" {public[0]} {public[1]}\n')
    change(repo, name, "1")
    good = ssh_signed(repo, allowed, "v1, signed by ops")
    served = serve(DEPLOYER_REQUIRE_SIGNED="true", DEPLOYER_ALLOWED_SIGNERS=str(signers))
    first = served.finished(served.push(good))
    assert first["state"] == "succeeded", json.dumps(first)
    assert container_env(name)["VERSION"] == "1"

    commits = {}
    for value, why in (("2", "no signature"), ("3", "signed by a key that is not an allowed signer")):
        change(repo, name, value)
        sha = repo.commit("v2, not signed") if value == "2" else ssh_signed(repo, stranger, "v3, by a stranger")
        commits[value] = sha
        done = served.finished(served.push(sha, before=good))
        assert (done["state"], done["error_reason"], done["stacks"]) == ("failed", "Unsigned", []), done
        assert done["error"] == f"commit not signed by an allowed signer: {sha[:12]}: {why}"
        wait_for(lambda sha=sha: forge.latest(sha).get("deployer") == "error", timeout=30, what="the error status")
        assert posted(forge, sha).startswith("not deployed: commit not signed by an allowed signer")
        events = [e for e in served.audit() if e["event"] == "commit.unsigned" and e["commit"] == sha]
        assert len(events) == 1 and events[0]["trigger"] == "webhook", events
    assert container_env(name)["VERSION"] == "1"  # nothing unsigned ran

    # a person asking for the unsigned commit by hand is refused the same way
    status, answer = http("POST", f"{served.base}/api/deployments", body=json.dumps({"ref": commits["2"]}).encode(),
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 202, answer
    manual = served.finished(answer["deployment_id"])
    assert (manual["state"], manual["error_reason"]) == ("failed", "Unsigned"), manual
    assert container_env(name)["VERSION"] == "1"
    assert served.deployed(name) == good


def test_a_gpg_keyring_of_allowed_keys_and_nothing_else(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, tmp_path: Path
) -> None:
    name = f"{prefix}-app"
    signer_home, stranger_home, keyring = (tmp_path / n for n in ("signer-gnupg", "stranger-gnupg", "keyring"))
    for home, who in ((signer_home, "Ops <ops@example.org>"), (stranger_home, "Eve <eve@example.org>")):
        home.mkdir(mode=0o700)
        argv = ["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", who, "ed25519", "sign", "never"]
        subprocess.run(argv, check=True, env={**os.environ, "GNUPGHOME": str(home)}, capture_output=True)
    keyring.mkdir(mode=0o700)
    exported = subprocess.run(["gpg", "--batch", "--export", "ops@example.org"], check=True, capture_output=True,
                              env={**os.environ, "GNUPGHOME": str(signer_home)}).stdout  # fmt: skip
    subprocess.run(["gpg", "--batch", "--quiet", "--import"], input=exported, check=True, capture_output=True,
                   env={**os.environ, "GNUPGHOME": str(keyring)})  # fmt: skip

    def gpg_signed(home: Path, who: str, message: str) -> str:
        git(repo.path, "add", "--all")
        argv = ["git", "-c", f"user.signingkey={who}", "commit", "--quiet", "-S", "-m", message]
        subprocess.run(argv, cwd=repo.path, check=True, capture_output=True, env={**os.environ, "GNUPGHOME": str(home)})
        return git(repo.path, "rev-parse", "HEAD")

    change(repo, name, "1")
    good = gpg_signed(signer_home, "ops@example.org", "v1, signed by ops")
    served = serve(DEPLOYER_REQUIRE_SIGNED="true", DEPLOYER_GPG_KEYRING=str(keyring))
    assert served.finished(served.push(good))["state"] == "succeeded"
    change(repo, name, "2")
    foreign = gpg_signed(stranger_home, "eve@example.org", "v2, signed by a key not in the keyring")
    done = served.finished(served.push(foreign, before=good))
    assert (done["state"], done["error_reason"]) == ("failed", "Unsigned"), done
    assert done["error"].startswith(f"commit not signed by an allowed signer: {foreign[:12]}: "), done
    assert container_env(name)["VERSION"] == "1"


def test_require_signed_without_signers_is_a_configuration_error(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DEPLOYER_STATE_DIR": str(tmp_path / "state"),
           "DEPLOYER_REQUIRE_SIGNED": "true"}  # fmt: skip
    result = subprocess.run(["deployer", "status"], capture_output=True, text=True, env=env, check=False, timeout=60)
    assert result.returncode == 2, result
    assert "DEPLOYER_REQUIRE_SIGNED: true needs DEPLOYER_ALLOWED_SIGNERS or DEPLOYER_GPG_KEYRING" in result.stderr

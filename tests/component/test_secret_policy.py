"""No known secret deploys: files only the public example key protects, and committed placeholders.

Real sops and age throughout: the example key is the committed one (examples/example-age-key.txt),
the operator's keys are made by the tests.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from deployer.errors import CatalogError, ConfigError, KnownSecretError
from deployer.model import Reason, StackState
from deployer.pipeline import Deps, Request, deploy, validate_tree
from deployer.runner import SubprocessRunner
from deployer.secret_policy import EXAMPLE_RECIPIENT, by_hand, is_placeholder
from deployer.secrets_ops import init, secret_files, write_sops_config
from deployer.sopsfile import read_sops_file
from tests.conftest import AgeKey
from tests.helpers import ROOT, ConfigRepo, service


def test_the_committed_example_key_is_the_one_the_policy_knows() -> None:
    key = (ROOT / "examples/example-age-key.txt").read_text()
    assert f"# public key: {EXAMPLE_RECIPIENT}" in key


def test_validate_refuses_a_secret_file_only_the_example_key_protects(repo: ConfigRepo, deps: Deps) -> None:
    repo.secret("secrets/app.env", {"TOKEN": "a-real-looking-value"}, recipient=EXAMPLE_RECIPIENT)
    repo.secret("examples/secrets/demo.env", {"TOKEN": "demo"}, recipient=EXAMPLE_RECIPIENT)
    repo.stack("app", {"main": service(environment={"T": "${TOKEN}"})}, deployer={"secrets": ["secrets/app.env"]})
    repo.stack("demo", {"main": service(environment={"T": "${TOKEN}"})},
               deployer={"secrets": ["examples/secrets/demo.env"]})  # fmt: skip
    with pytest.raises(CatalogError) as caught:
        validate_tree(deps, repo.path)
    assert caught.value.details == (
        "stacks/app/compose.yaml: x-deployer.secrets[0]: secrets/app.env is encrypted only to the public example key"
        f" {EXAMPLE_RECIPIENT[:16]}..., which anyone can read: run `deployer secrets init`",
    )
    assert len(validate_tree(deps, repo.path, allow_placeholders=True)) == 2


def test_validate_refuses_placeholders_the_example_key_can_still_read(
    repo: ConfigRepo, deps: Deps, age_key: AgeKey
) -> None:
    """A file re-encrypted to the operator's key as well (sops updatekeys) but never given real values."""
    repo.secret("secrets/app.env", {"PASSWORD": "change-me-app-password", "USER": "app"},
                recipient=f"{EXAMPLE_RECIPIENT},{age_key.recipient}")  # fmt: skip
    repo.stack("app", {"main": service(environment={"P": "${PASSWORD}"})}, deployer={"secrets": ["secrets/app.env"]})
    with pytest.raises(KnownSecretError, match=r"^secrets/app\.env: PASSWORD: still a committed placeholder"):
        validate_tree(deps, repo.path)


def test_validate_refuses_placeholders_with_the_operators_key_at_hand(
    repo: ConfigRepo, deps: Deps, age_key: AgeKey
) -> None:
    repo.secret("secrets/app.env", {"CLIENT_SECRET": "change-me-from-authentik"})
    repo.stack("app", {"main": service(environment={"P": "${CLIENT_SECRET}"})},
               deployer={"secrets": ["secrets/app.env"]})  # fmt: skip
    with pytest.raises(KnownSecretError, match=r"secrets/app\.env: CLIENT_SECRET: still a committed placeholder"):
        validate_tree(deps, repo.path)
    without_key = replace(deps, settings=replace(deps.settings, sops_env={"PATH": "/usr/bin:/bin"}))
    assert len(validate_tree(without_key, repo.path)) == 1  # CI has no key: the deployment checks the values


def test_a_placeholder_in_shared_env_is_refused_naming_file_and_key(repo: ConfigRepo, deps: Deps) -> None:
    repo.write("stacks/shared.env", "DOMAIN=change-me.example.org\nTZ=UTC\n")
    repo.stack("app", {"main": service(environment={"D": "${DOMAIN:?set DOMAIN in stacks/shared.env}"})})
    with pytest.raises(CatalogError) as caught:
        validate_tree(deps, repo.path)
    assert caught.value.details == (
        "stacks/shared.env: DOMAIN: still the committed placeholder: set it for your installation",
    )
    repo.write("stacks/shared.env", "TZ=UTC\n")
    with pytest.raises(CatalogError, match=r"\$\{DOMAIN\} has no default and is not a key of no secret file"):
        validate_tree(deps, repo.path)


@pytest.mark.usefixtures("engine")
def test_deploy_refuses_a_placeholder_value_and_changes_nothing(repo: ConfigRepo, deps: Deps, prefix: str) -> None:
    name = f"{prefix}-app"
    repo.secret("secrets/app.env", {"PASSWORD": "change-me-app-password"})
    repo.stack(name, {"main": service(environment={"P": "${PASSWORD}"})}, deployer={"secrets": ["secrets/app.env"]})
    repo.commit("a placeholder")
    outcome = deploy(deps, Request(repo_url=repo.url, ref="main"))
    assert (outcome.exit_code, outcome.reason) == (2, Reason.KNOWN_SECRET)
    [result] = outcome.results
    assert (result.state, result.reason) == (StackState.FAILED, Reason.KNOWN_SECRET)
    assert "secrets/app.env: PASSWORD: still a committed placeholder" in str(result.error)
    assert "change-me-app-password" not in str(outcome)
    ps = ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={name}", "--format", "{{.ID}}"]
    assert subprocess.run(ps, capture_output=True, text=True, check=True).stdout == ""


def shipped_copy(tmp_path: Path) -> Path:
    """This repository's secrets and .sops.yaml as shipped (placeholders, example key), in a scratch folder."""
    root = tmp_path / "fork"
    root.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "secrets"), str(ROOT / "examples"), str(ROOT / ".sops.yaml"), str(root)],
                   check=True)  # fmt: skip
    return root


def test_secrets_init_generates_every_placeholder_and_encrypts_to_the_operator_only(
    tmp_path: Path, age_key: AgeKey, deps: Deps
) -> None:
    root = shipped_copy(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    runner, env = SubprocessRunner(), dict(deps.settings.sops_env)
    with pytest.raises(ConfigError, match=r"names no recipient of yours: pass --recipient"):
        init(root, secret_files(root), runner=runner, env=env)

    write_sops_config(root, [age_key.recipient])
    done = {d.path.name: d for d in init(root, secret_files(root), runner=runner, env=env)}

    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # no plaintext left anywhere
    minio = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_MONITORING_ACCESS_KEY", "MINIO_MONITORING_SECRET_KEY"}
    assert set(done["minio.env"].generated) == minio
    assert dict(done["monitoring.env"].by_hand) == {
        "GRAFANA_OAUTH_CLIENT_ID": "authentik-grafana-provider-client-id",
        "GRAFANA_OAUTH_CLIENT_SECRET": "authentik-grafana-provider-client-secret",
    }
    for path in secret_files(root):
        parsed = read_sops_file(path, (root / path).read_text())
        assert parsed is not None and parsed.age_recipients == (age_key.recipient,), path
        plain = subprocess.run(["sops", "decrypt", str(path)], cwd=root, capture_output=True, text=True, check=True,
                               env={**env, "SOPS_AGE_KEY_FILE": str(age_key.path)}).stdout  # fmt: skip
        values = dict(line.split("=", 1) for line in plain.splitlines())
        for key, value in values.items():
            assert not is_placeholder(value) or by_hand(value), (path, key)
            if key in done[path.name].generated:
                assert len(value) >= 20 and value.isascii(), (path, key)
        assert "ZOT_SYNC_CREDENTIALS" not in done[path.name].generated  # not a placeholder: kept as it was
    [example] = secret_files(root, ["examples/secrets"])
    demo = read_sops_file(example, (root / example).read_text())
    assert demo is not None and demo.age_recipients == (EXAMPLE_RECIPIENT,)  # examples stay examples
    assert f"age: {age_key.recipient}" in (root / ".sops.yaml").read_text()


@pytest.mark.parametrize(
    ("recipient", "message"),
    [
        (EXAMPLE_RECIPIENT, "that is the public example key"),
        ("age1notakey", "is not an age public key"),
        ("ssh-ed25519 AAAA", "is not an age public key"),
    ],
)
def test_secrets_init_refuses_a_recipient_that_is_not_the_operators(
    tmp_path: Path, recipient: str, message: str
) -> None:
    root = shipped_copy(tmp_path)
    sops_yaml = (root / ".sops.yaml").read_text()
    with pytest.raises(ConfigError, match=message):
        write_sops_config(root, [recipient])
    assert (root / ".sops.yaml").read_text() == sops_yaml

"""DEPLOYER_REQUIRE_SIGNED and its signers: read, resolved, and refused with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.errors import ConfigError
from deployer.settings import Settings


def test_off_by_default_and_the_paths_resolved(tmp_path: Path) -> None:
    assert Settings.from_env({}).require_signed is False
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    found = Settings.from_env({"DEPLOYER_REQUIRE_SIGNED": "true", "DEPLOYER_ALLOWED_SIGNERS": str(signers),
                               "DEPLOYER_GPG_KEYRING": str(tmp_path)})  # fmt: skip
    assert (found.require_signed, found.allowed_signers, found.gpg_keyring) == (True, signers, tmp_path)


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        ({"DEPLOYER_REQUIRE_SIGNED": "true"}, "DEPLOYER_REQUIRE_SIGNED: true needs DEPLOYER_ALLOWED_SIGNERS or"),
        ({"DEPLOYER_REQUIRE_SIGNED": "yes please"}, "DEPLOYER_REQUIRE_SIGNED: expected true or false"),
        ({"DEPLOYER_ALLOWED_SIGNERS": "/nonexistent/allowed_signers"}, "DEPLOYER_ALLOWED_SIGNERS: /nonexistent"),
        ({"DEPLOYER_GPG_KEYRING": "/nonexistent/gnupg"}, "DEPLOYER_GPG_KEYRING: /nonexistent/gnupg is not a directory"),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(environ)
    assert raised.value.message.startswith(said), raised.value.message

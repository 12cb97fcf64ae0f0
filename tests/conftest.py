"""Layered fixtures: tools -> age keys -> config repo -> settings -> deps, plus engine clean-up.

Every docker object a test creates is named with a per-test prefix (`dt` + random hex), so tests
never collide with a real deployment on the same engine, and the prefix is what clean-up removes.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployer.pipeline import Deps
from deployer.settings import Settings
from tests.helpers import ROOT, TEST_IMAGE, ConfigRepo, require_tool


@dataclass(frozen=True)
class AgeKey:
    path: Path
    recipient: str


def _make_age_key(folder: Path) -> AgeKey:
    require_tool("age-keygen")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "key.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True)
    return AgeKey(path, recipient.stdout.strip())


@pytest.fixture(scope="session")
def age_key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    """An age identity made for this test session; it decrypts nothing else."""
    require_tool("sops")
    return _make_age_key(tmp_path_factory.mktemp("age"))


@pytest.fixture(scope="session")
def other_age_key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    """A second identity, which cannot decrypt what `age_key` can."""
    return _make_age_key(tmp_path_factory.mktemp("age-other"))


@pytest.fixture(scope="session")
def engine() -> None:
    """A reachable Docker engine with compose v2 and the busybox test image."""
    require_tool("docker")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        message = "no Docker engine is reachable (scripts/bootstrap starts dockerd)"
        if os.environ.get("DEPLOYER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run(["docker", "compose", "version"], check=True, capture_output=True)
    image = subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True, check=False)
    if image.returncode != 0:
        subprocess.run([str(ROOT / "scripts" / "build-busybox-image"), TEST_IMAGE], check=True)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique name prefix for this test's stacks and networks; removes what carries it afterwards."""
    name = f"dt{uuid.uuid4().hex[:6]}"
    yield name
    if "engine" in request.fixturenames:
        remove_docker_objects(name)


def remove_docker_objects(prefix: str) -> None:
    """Remove containers (by compose project), networks and volumes whose name starts with prefix."""

    def run(*argv: str) -> list[str]:
        out = subprocess.run(["docker", *argv], capture_output=True, text=True, check=False).stdout
        return [line for line in out.split() if line]

    containers = [
        cid
        for cid, project in (
            line.split("|", 1)
            for line in run("ps", "-a", "--format", '{{.ID}}|{{.Label "com.docker.compose.project"}}')
        )
        if project.startswith(prefix)
    ]
    if containers:
        run("rm", "--force", "--volumes", *containers)
    networks = [n for n in run("network", "ls", "--format", "{{.Name}}") if n.startswith(prefix)]
    if networks:
        run("network", "rm", *networks)
    volumes = [v for v in run("volume", "ls", "--format", "{{.Name}}") if v.startswith(prefix)]
    if volumes:
        run("volume", "rm", "--force", *volumes)


@pytest.fixture
def repo(tmp_path: Path, age_key: AgeKey) -> ConfigRepo:
    return ConfigRepo(tmp_path / "config", recipient=age_key.recipient)


def tool_environ(tmp_path: Path, key: AgeKey | None, **extra: str) -> dict[str, str]:
    """The environment a deployer process gets in tests: this machine's PATH and engine, the test key.

    The API is opened explicitly (DEPLOYER_INSECURE_OPEN_API) for tests that are not about identity;
    the flag is ignored once DEPLOYER_TRUSTED_PROXIES or DEPLOYER_AUTHENTIK_JWKS_URL is given.
    """
    environ = {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_HOST") if name in os.environ}
    # An empty XDG config dir, so that sops never finds an operator's own ~/.config/sops/age/keys.txt.
    xdg = tmp_path / "xdg"
    xdg.mkdir(exist_ok=True)
    environ["XDG_CONFIG_HOME"] = str(xdg)
    environ["DEPLOYER_STATE_DIR"] = str(tmp_path / "state")
    environ["DEPLOYER_INSECURE_OPEN_API"] = "true"
    if key is not None:
        environ["SOPS_AGE_KEY_FILE"] = str(key.path)
    environ.update(extra)
    return environ


@pytest.fixture
def settings(tmp_path: Path, age_key: AgeKey) -> Settings:
    return Settings.from_env(tool_environ(tmp_path, age_key))


@pytest.fixture
def deps(settings: Settings) -> Iterator[Deps]:
    built = Deps.from_settings(settings)
    yield built
    built.store.close()

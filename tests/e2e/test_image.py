"""The deployer's own image (deploy/Dockerfile) started by deploy/compose.yaml on the real engine.

No registry is reachable here, so the two base images are built from Debian's packages and this
machine's docker CLI by scripts/build-offline-bases (debootstrap + `docker import`), and the image by
scripts/build-image, as deploy/README.md tells an operator without a registry to do. Everything in
the container is real: gunicorn, the deploy worker, git, sops, age, docker compose, the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from tests.authentik import AUDIENCE, ISSUER, ClientSecret, claims
from tests.conftest import AgeKey
from tests.deliveries import push_payload, sign
from tests.e2e.served import SECRET, wait_for
from tests.helpers import ROOT, ConfigRepo, require_tool, service

#: the engine fixture also makes `prefix` remove this test's stacks (the deployed `<prefix>files` too)
pytestmark = pytest.mark.usefixtures("engine")

CLIENT_SECRET = ClientSecret()
UID = 10001  # the image's user (deploy/Dockerfile)
OFFLINE_BASES = ("deployer-local/python:3.11-bookworm", "deployer-local/docker-cli:local")


def docker(*argv: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *argv], capture_output=True, text=True, check=check, env=env, timeout=300)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    require_tool("docker")
    subprocess.run([ROOT / "scripts" / "build-offline-bases"], check=True, timeout=900)
    tag = f"deployer-test/deployer:{uuid.uuid4().hex[:10]}"
    python_image, cli_image = OFFLINE_BASES
    subprocess.run([ROOT / "scripts" / "build-image", "--tag", tag, "--python-image", python_image,
                    "--docker-cli-image", cli_image], check=True, timeout=900)  # fmt: skip
    yield tag
    docker("image", "rm", "--force", tag, check=False)


def socket_gid() -> int:
    return os.stat("/var/run/docker.sock").st_gid


def owned_file(path: Path, text: str) -> Path:
    """A file only the image's user may read, as deploy/README.md asks for the Docker secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, UID, UID)
    path.chmod(0o400)
    return path


def get(url: str, **headers: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 -- a container of this test's engine
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status, json.loads(response.read())


class Composed:
    """deploy/compose.yaml brought up as an operator does, plus a test override (the repository's
    folder mounted read-only, a short health interval)."""

    def __init__(self, tmp_path: Path, prefix: str, image: str, repo: ConfigRepo, age_key: AgeKey) -> None:
        self.project = f"{prefix}-deployer"
        self.network = f"{prefix}-proxy"
        docker("network", "create", "--label", "io.deployer.test=1", self.network)
        subnet = docker("network", "inspect", "--format", "{{(index .IPAM.Config 0).Subnet}}", self.network).stdout
        self.state = tmp_path / "state"
        self.state.mkdir()
        os.chown(self.state, UID, UID)
        secrets = tmp_path / "etc"
        override = tmp_path / "override.yaml"
        gitconfig = owned_file(secrets / "gitconfig", f"[safe]\n\tdirectory = {repo.path}/.git\n")
        override.write_text(json.dumps({"services": {"deployer": {
            # the test's repository at its own path, and git told that a root-owned folder is fine
            "volumes": [f"{repo.path}:{repo.path}:ro", f"{gitconfig}:/home/deployer/.gitconfig:ro"],
            "healthcheck": {"interval": "1s", "start_period": "30s"},
        }}}))  # fmt: skip
        self.env = {
            **{name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_HOST") if name in os.environ},
            "COMPOSE_PROJECT_NAME": self.project,
            "DEPLOYER_IMAGE": image,
            "DOCKER_GID": str(socket_gid()),
            "DEPLOYER_STATE_DIR": str(self.state),
            "DEPLOYER_REPO_URL": repo.url,
            "DEPLOYER_POLL_INTERVAL": "0",
            "DEPLOYER_PROXY_NETWORK": self.network,
            "DEPLOYER_HOST": "deployer.test.invalid",
            "DEPLOYER_TRUSTED_PROXIES": subnet.strip(),
            "DEPLOYER_AUTHENTIK_ISSUER": ISSUER,
            "DEPLOYER_AUTHENTIK_AUDIENCE": AUDIENCE,
            "DEPLOYER_AUTHENTIK_CLIENT_SECRET_PATH": str(owned_file(secrets / "client-secret", CLIENT_SECRET.secret)),
            "DEPLOYER_WEBHOOK_SECRET_PATH": str(owned_file(secrets / "webhook-secret", SECRET)),
            "DEPLOYER_AGE_KEY_PATH": str(owned_file(secrets / "age.txt", age_key.path.read_text())),
            "DEPLOYER_FORGE_TOKEN_PATH": str(owned_file(secrets / "forge-token", "")),
        }
        self.files = ["-f", str(ROOT / "deploy" / "compose.yaml"), "-f", str(override)]
        self.compose("up", "--detach", "--wait", "--wait-timeout", "120")
        self.container = docker("compose", *self.files, "ps", "--quiet", "deployer", env=self.env).stdout.strip()
        address = docker("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
                         self.container).stdout.strip()  # fmt: skip
        self.base = f"http://{address}:8000"

    def compose(self, *argv: str) -> subprocess.CompletedProcess[str]:
        result = docker("compose", *self.files, *argv, check=False, env=self.env)
        assert result.returncode == 0, result.stderr + self.logs()
        return result

    def logs(self) -> str:
        return docker("compose", *self.files, "logs", "--no-color", check=False, env=self.env).stdout

    def down(self) -> None:
        docker("compose", *self.files, "down", "--timeout", "60", check=False, env=self.env)
        docker("network", "rm", self.network, check=False)


@pytest.fixture
def composed(tmp_path: Path, prefix: str, image: str, repo: ConfigRepo, age_key: AgeKey) -> Iterator[Composed]:
    started = Composed(tmp_path, prefix, image, repo, age_key)
    yield started
    logs = started.logs()
    print(logs)  # shown when the test fails
    started.down()
    assert SECRET not in logs and CLIENT_SECRET.secret not in logs


def test_the_image_runs_as_its_own_user_and_deploys_with_bind_mounts_the_engine_sees(
    composed: Composed, repo: ConfigRepo, prefix: str
) -> None:
    """deploy/compose.yaml: healthy by the image's HEALTHCHECK, not root, the webhook secret and the age
    key as Docker secrets (not in the container's environment), the API closed without an identity;
    a signed push deploys a stack whose relative bind mount the engine resolves inside the state dir."""
    assert docker("inspect", "--format", "{{.State.Health.Status}}", composed.container).stdout.strip() == "healthy"
    ids = docker("exec", composed.container, "id", "-u").stdout.strip()
    assert ids == str(UID)
    environment = docker("inspect", "--format", "{{json .Config.Env}}", composed.container).stdout
    assert SECRET not in environment and "AGE-SECRET-KEY" not in environment
    assert CLIENT_SECRET.secret not in environment
    assert get(f"{composed.base}/api/stacks")[0] == 401  # behind Authentik: no identity, no answer
    # tokens as Authentik signs a proxy provider's: HS256 with its client secret (a Docker secret here)
    guest = CLIENT_SECRET.sign(claims("gus", ("guests",)))
    assert get(f"{composed.base}/api/stacks", Authorization=f"Bearer {guest}") == (403, ANY)
    viewer = CLIENT_SECRET.sign(claims("vera", ("viewers",)))
    assert get(f"{composed.base}/api/stacks", Authorization=f"Bearer {viewer}") == (200, [])
    assert "same path" in composed.logs()  # the start-up check ran and found the state dir where the engine sees it

    stack = f"{prefix}files"
    repo.stack(stack, {"main": service(command="echo written-by-the-stack > /data/proof && exec sleep 3600",
                                       volumes=["./data:/data"])})  # fmt: skip
    head = repo.commit("a stack with a relative bind mount")
    delivery = sign("gitea", push_payload("gitea", after=head, before="1" * 40, branch="main"), SECRET)
    status, answer = post(f"{composed.base}/webhook", delivery.body, delivery.headers)
    assert status == 202, answer
    proofs = wait_for(lambda: list(composed.state.rglob("data/proof")), timeout=120, what="the stack to write its file")
    assert proofs[0].read_text().strip() == "written-by-the-stack"
    assert proofs[0].is_relative_to(composed.state)

    # the deployment itself is recorded as succeeded (read through the API of the container; 401 to a
    # stranger, so read the state the container wrote through `deployer status` inside it)
    def state() -> str:
        shown = json.loads(docker("exec", composed.container, "deployer", "status", "--json").stdout)
        return str(shown["deployments"][0]["state"])

    assert wait_for(lambda: state() != "running" and state(), timeout=120, what="the deployment") == "succeeded"


def run_image(image: str, *argv: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env_args = [arg for name, value in environment.items() for arg in ("--env", f"{name}={value}")]
    return docker("run", "--rm", "--volume", "/var/run/docker.sock:/var/run/docker.sock", *env_args, *argv,
                  image, check=False)  # fmt: skip


@pytest.mark.parametrize("mounted", ["elsewhere", "volume", "not at all"])
def test_the_container_refuses_to_start_where_the_engine_would_see_other_files(
    image: str, tmp_path: Path, prefix: str, mounted: str
) -> None:
    """A state dir mounted from another host path, from a named volume, or not mounted: the deployer
    says why and how to mount it, and exits before serving anything."""
    host = tmp_path / "elsewhere"
    host.mkdir()
    os.chown(host, UID, UID)
    mount = {
        "elsewhere": ["--volume", f"{host}:/var/lib/deployer"],
        "volume": ["--volume", f"{prefix}-state:/var/lib/deployer"],
        "not at all": [],
    }[mounted]
    try:
        result = run_image(image, "--group-add", str(socket_gid()), *mount,
                           DEPLOYER_REPO_URL="/nowhere", DEPLOYER_WEBHOOK_SECRET="x" * 16)  # fmt: skip
    finally:
        docker("volume", "rm", "--force", f"{prefix}-state", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "deployer: error: DEPLOYER_STATE_DIR /var/lib/deployer is " in result.stderr
    expected = {"elsewhere": f"mounted from {host} on the Docker host", "volume": f"the volume {prefix}-state",
                "not at all": "is not mounted from the Docker host"}[mounted]  # fmt: skip
    assert expected in result.stderr
    assert "Listening at" not in result.stderr


def test_the_container_without_the_sockets_group_says_which_group_to_add(image: str, tmp_path: Path) -> None:
    result = run_image(image, "--volume", f"{tmp_path}:{tmp_path}", DEPLOYER_STATE_DIR=str(tmp_path),
                       DEPLOYER_REPO_URL="/nowhere", DEPLOYER_WEBHOOK_SECRET="x" * 16)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"uid {UID}" in result.stderr and f"group_add: ['{socket_gid()}']" in result.stderr

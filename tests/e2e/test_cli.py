"""The `deployer` command as an operator runs it: a real process, real git, sops, age and engine."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import AgeKey, tool_environ
from tests.helpers import ROOT, ConfigRepo, service


def deployer(tmp_path: Path, key: AgeKey | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = tool_environ(tmp_path, key)
    return subprocess.run(["deployer", *args], capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.usefixtures("engine")
def test_deploy_shows_progress_then_a_summary(repo: ConfigRepo, prefix: str, tmp_path: Path, age_key: AgeKey) -> None:
    repo.secret("secrets/a.env", {"A_TOKEN": "token-value-for-cli-test"})
    repo.stack(f"{prefix}-a", {"main": service(healthy_after=1, environment={"T": "${A_TOKEN}"})},
               deployer={"secrets": ["secrets/a.env"]})  # fmt: skip
    repo.stack(f"{prefix}-b", deployer={"depends_on": [f"{prefix}-a"]})
    sha = repo.commit()

    result = deployer(tmp_path, age_key, "deploy", "--repo", repo.url)

    assert result.returncode == 0, result.stderr
    progress = result.stderr
    assert f"deploying {sha[:12]}: {prefix}-a -> {prefix}-b" in progress
    assert f"{prefix}-a: decrypting secrets/a.env" in progress
    assert f"{prefix}-a deploy started" in progress
    assert progress.index(f"{prefix}-a deploy ok in") < progress.index(f"{prefix}-b deploy started")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["STACK", "ACTION", "RESULT", "TIME", "DETAIL"]
    assert lines[-1].endswith(f"succeeded at {sha[:12]}: 2 of 2 stacks succeeded")
    assert "token-value-for-cli-test" not in result.stdout + result.stderr

    again = deployer(tmp_path, age_key, "deploy", "--repo", repo.url)
    assert again.returncode == 0
    assert "nothing to deploy" in again.stderr


@pytest.mark.usefixtures("engine")
def test_failed_deploy_exits_1_and_shows_compose_output(
    repo: ConfigRepo, prefix: str, tmp_path: Path, age_key: AgeKey
) -> None:
    repo.stack(f"{prefix}-a", {"main": service(healthcheck=False) | {
        "healthcheck": {"test": ["CMD", "false"], "interval": "1s", "retries": 1}}},
        deployer={"wait_timeout": 20})  # fmt: skip
    repo.commit()
    result = deployer(tmp_path, age_key, "deploy", "--repo", repo.url)
    assert result.returncode == 1
    assert f"--- {prefix}-a: last lines of compose output ---" in result.stdout
    assert f"stacks/{prefix}-a/compose.yaml: did not become healthy" in result.stdout


def test_validate_names_file_and_field_one_line_each(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    repo.stack("web", deployer={"depends_on": ["nope"], "wait_timeout": -1})
    result = deployer(tmp_path, age_key, "validate", "--repo", repo.url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "deployer: error: stacks/web/compose.yaml: x-deployer.depends_on[0]: unknown stack 'nope'",
        "deployer: error: stacks/web/compose.yaml: x-deployer.wait_timeout: -1 is not a number of seconds >= 0",
    ]


@pytest.mark.usefixtures("engine")
def test_validate_runs_compose_config_with_placeholder_secrets(repo: ConfigRepo, tmp_path: Path) -> None:
    repo.secret("secrets/web.env", {"PORT_SECRET": "8080"})
    repo.stack("web", {"main": service(environment={"P": "${PORT_SECRET:?required}"})},
               deployer={"secrets": ["secrets/web.env"]})  # fmt: skip
    repo.stack("typo", {"main": service(ports=["eighty"])})
    result = deployer(tmp_path, None, "validate", "--repo", repo.url)
    assert result.returncode == 2
    assert result.stderr.startswith("deployer: error: stacks/typo/compose.yaml: docker compose config rejected it")
    repo.remove("stacks/typo")
    result = deployer(tmp_path, None, "validate", "--repo", repo.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 stacks valid")


def seed_host_policy() -> str:
    """DEPLOYER_ALLOWED_BIND_ROOTS as deploy/compose.yaml gives it to the deployer by default."""
    environment = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]["deployer"]["environment"]
    default = re.fullmatch(r"\$\{DEPLOYER_ALLOWED_BIND_ROOTS:-(.+)\}", environment["DEPLOYER_ALLOWED_BIND_ROOTS"])
    assert default, environment["DEPLOYER_ALLOWED_BIND_ROOTS"]
    return default[1]


def test_ci_validates_the_seed_under_the_host_policy_the_deployer_image_ships() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    step = next(s for s in workflow["jobs"]["validate"]["steps"] if "--allow-placeholders" in s.get("run", ""))
    assert step["env"]["DEPLOYER_ALLOWED_BIND_ROOTS"] == seed_host_policy()


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("stacks_dir", ["stacks", "examples/stacks"])
def test_validate_passes_on_this_repository(tmp_path: Path, stacks_dir: str) -> None:
    """As this repository's CI runs it: the shipped placeholders and example key are accepted on purpose,
    under the host policy deploy/compose.yaml ships (the seed's data roots and its few host paths)."""
    env = tool_environ(tmp_path, None, DEPLOYER_STACKS_DIR=stacks_dir, DEPLOYER_ALLOWED_BIND_ROOTS=seed_host_policy())
    result = subprocess.run(["deployer", "validate", "--repo", str(ROOT), "--allow-placeholders"], capture_output=True,
                            text=True, env=env, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("engine")
def test_validate_refuses_this_repositorys_stacks_as_shipped(tmp_path: Path) -> None:
    """Deployed as they are, the seed stacks would run with passwords anyone can read here."""
    env = tool_environ(tmp_path, None, DEPLOYER_STACKS_DIR="stacks")
    result = subprocess.run(["deployer", "validate", "--repo", str(ROOT)], capture_output=True, text=True, env=env,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 2
    for name in ("auth", "minio", "monitoring", "traefik", "zot", "mediaserver"):
        assert f"secrets/{name}.env is encrypted only to the public example key" in result.stderr
    env["DEPLOYER_STACKS_DIR"] = "examples/stacks"
    examples = subprocess.run(["deployer", "validate", "--repo", str(ROOT)], capture_output=True, text=True, env=env,
                              timeout=300, check=False)  # fmt: skip
    assert examples.returncode == 0, examples.stderr


def test_plan_json_follows_the_contract(repo: ConfigRepo, tmp_path: Path, age_key: AgeKey) -> None:
    repo.stack("a")
    repo.stack("b", deployer={"depends_on": ["a"]})
    first = repo.commit()
    repo.stack("b", {"main": service(environment={"X": "1"})}, deployer={"depends_on": ["a"]})
    repo.stack("c")
    second = repo.commit()

    full = json.loads(deployer(tmp_path, age_key, "plan", "--repo", repo.url, "--json").stdout)
    assert full == {
        "from": None,
        "to": second,
        "stacks": [
            {"name": "a", "action": "deploy", "reasons": ["first deploy"]},
            {"name": "b", "action": "deploy", "reasons": ["first deploy"]},
            {"name": "c", "action": "deploy", "reasons": ["first deploy"]},
        ],
        "order": [["a", "c"], ["b"]],
    }
    step = json.loads(deployer(tmp_path, age_key, "plan", "--repo", repo.url, "--from", first, "--json").stdout)
    assert step["from"] == first
    assert step["stacks"] == [
        {"name": "b", "action": "deploy", "reasons": ["stacks/b/compose.yaml"]},
        {"name": "c", "action": "deploy", "reasons": ["first deploy"]},
    ]
    assert step["order"] == [["b", "c"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deploy", "--ref", "0123456789abcdef0123456789abcdef01234567"], "commit '0123456789abcdef"),
        (["plan", "--to", "no-such-branch"], "branch, tag or commit 'no-such-branch' does not exist"),
        (["deploy", "nosuchstack"], "no such stack: nosuchstack"),
    ],
)
def test_bad_refs_and_names_exit_2(repo: ConfigRepo, tmp_path: Path, args: list[str], message: str) -> None:
    repo.stack("a")
    repo.commit()
    result = deployer(tmp_path, None, *args, "--repo", repo.url)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_held_deploy_lock_refuses_a_second_deployment(repo: ConfigRepo, tmp_path: Path) -> None:
    repo.stack("a")
    repo.commit()
    state = tmp_path / "state"
    state.mkdir()
    with open(state / "deploy.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = deployer(tmp_path, None, "deploy", "--repo", repo.url)
    assert result.returncode == 1
    assert "another deployment is running" in result.stdout + result.stderr


def test_help_for_every_command() -> None:
    for command in ("plan", "deploy", "validate", "status"):
        result = subprocess.run(["deployer", command, "--help"], capture_output=True, text=True, check=False,
                                env={**os.environ})  # fmt: skip
        assert result.returncode == 0
        assert "usage: deployer" in result.stdout


@pytest.mark.usefixtures("engine")
def test_a_relative_state_dir_works_from_any_folder(repo: ConfigRepo, prefix: str, tmp_path: Path) -> None:
    repo.stack(f"{prefix}-a")
    repo.commit()
    work = tmp_path / "cwd"
    work.mkdir()
    env = tool_environ(tmp_path, None, DEPLOYER_STATE_DIR=".deployer")
    result = subprocess.run(["deployer", "deploy", "--repo", repo.url], capture_output=True, text=True, env=env,
                            cwd=work, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{prefix}-a" in result.stdout
    assert (work / ".deployer" / "stacks" / f"{prefix}-a" / "stacks" / f"{prefix}-a" / "compose.yaml").is_file()


@pytest.mark.usefixtures("engine")
def test_plan_against_deployed_and_a_tag_deployed_by_name(
    repo: ConfigRepo, prefix: str, tmp_path: Path, age_key: AgeKey
) -> None:
    """`plan --against-deployed` starts from each stack's last good commit; `deploy --ref TAG` fetches the tag,
    which the mirror (the deploying branch only) does not hold otherwise."""
    a, b = f"{prefix}-a", f"{prefix}-b"
    repo.stack(a, {"main": service(environment={"V": "1"})})
    repo.stack(b)
    first = repo.commit("two stacks")
    subprocess.run(["git", "tag", "v1"], cwd=repo.path, check=True)
    assert deployer(tmp_path, age_key, "deploy", "--repo", repo.url, "--ref", "v1").returncode == 0
    repo.stack(a, {"main": service(environment={"V": "2"})})
    second = repo.commit("a v2")

    ahead = json.loads(deployer(tmp_path, age_key, "plan", "--repo", repo.url, "--against-deployed", "--json").stdout)
    assert (ahead["to"], ahead["stacks"]) == (second, [{"name": a, "action": "deploy",
                                                        "reasons": [f"stacks/{a}/compose.yaml"]}])  # fmt: skip
    assert deployer(tmp_path, age_key, "deploy", "--repo", repo.url).returncode == 0
    subprocess.run(["git", "reset", "--quiet", "--hard", first], cwd=repo.path, check=True)
    back = json.loads(deployer(tmp_path, age_key, "plan", "--repo", repo.url, "--against-deployed", "--json").stdout)
    rewound = [f"history rewound from {second[:12]}", f"stacks/{a}/compose.yaml"]
    assert back["stacks"] == [{"name": a, "action": "deploy", "reasons": rewound}]
    both = deployer(tmp_path, age_key, "plan", "--repo", repo.url, "--against-deployed", "--from", first)
    assert both.returncode == 2 and "takes no --from" in both.stderr

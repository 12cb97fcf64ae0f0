"""The GitHub workflows are clean under actionlint (with shellcheck for run: steps when installed)."""

from __future__ import annotations

import subprocess

import yaml

from tests.helpers import ROOT, require_tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def test_actionlint_finds_nothing() -> None:
    actionlint = require_tool("actionlint")
    assert WORKFLOWS
    result = subprocess.run([actionlint, "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True,
                            cwd=ROOT, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_tests_validation_and_the_secrets_check_on_push_and_pull_request() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    steps = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(".ci/run" in run for run in steps)
    assert any("deployer validate" in run for run in steps)
    assert any("deployer secrets check" in run for run in steps)

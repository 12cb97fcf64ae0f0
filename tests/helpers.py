"""Vocabulary for tests: config repositories made with real git, secrets made with real sops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

#: the image every test stack runs: Debian's static busybox FROM scratch (scripts/build-busybox-image)
TEST_IMAGE = "deployer-example/busybox:1"
ROOT = Path(__file__).resolve().parents[1]


def require_tool(name: str) -> str:
    """The path of a tool; a missing tool fails under CI (DEPLOYER_REQUIRE_TOOLS=1) and skips locally."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/bootstrap installs it)"
        if os.environ.get("DEPLOYER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def service(
    *,
    command: str = "while :; do sleep 3600; done",
    healthy_after: float = 0,
    healthcheck: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A busybox service; with `healthy_after`, its healthcheck passes only after that many seconds."""
    marker = f"sleep {healthy_after} && touch /tmp/healthy" if healthy_after else "touch /tmp/healthy"
    spec: dict[str, Any] = {
        "image": TEST_IMAGE,
        "pull_policy": "never",
        "command": ["sh", "-c", f"({marker}) & {command}"],
        "stop_grace_period": "1s",
        "init": True,
    }
    if healthcheck:
        spec["healthcheck"] = {
            "test": ["CMD", "test", "-f", "/tmp/healthy"],
            "interval": "1s",
            "timeout": "2s",
            "retries": 120,
            "start_period": "0s",
        }
    spec.update(extra)
    return spec


class ConfigRepo:
    """A config repository in a temporary folder, built with the real git CLI."""

    def __init__(self, path: Path, *, recipient: str | None = None) -> None:
        self.path = path
        self.recipient = recipient
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "--quiet", "--initial-branch=main")
        git(path, "config", "user.email", "tests@deployer.invalid")
        git(path, "config", "user.name", "deployer tests")
        git(path, "config", "commit.gpgsign", "false")
        if recipient:
            self.write(".sops.yaml", f"creation_rules:\n  - age: {recipient}\n")

    @property
    def url(self) -> str:
        return str(self.path)

    def write(self, relative: str, text: str) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text) if text.startswith("\n") else text)
        return target

    def remove(self, relative: str) -> None:
        target = self.path / relative
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    def stack(
        self,
        name: str,
        services: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        deployer: Mapping[str, Any] | None = None,
        **top_level: Any,
    ) -> Path:
        """Write stacks/<name>/compose.yaml with the given services and x-deployer block."""
        document: dict[str, Any] = {}
        if deployer is not None:
            document["x-deployer"] = dict(deployer)
        document["services"] = {key: dict(value) for key, value in (services or {"main": service()}).items()}
        document.update(top_level)
        return self.write(f"stacks/{name}/compose.yaml", yaml.safe_dump(document, sort_keys=False))

    def secret(self, relative: str, values: Mapping[str, str], *, recipient: str | None = None) -> Path:
        """Encrypt `values` as a dotenv (or YAML/JSON, by suffix) SOPS file with the real sops binary."""
        recipient = recipient or self.recipient
        assert recipient, "ConfigRepo needs an age recipient to encrypt secrets"
        suffix = Path(relative).suffix
        kind = {".env": "dotenv", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}[suffix]
        if kind == "dotenv":
            plain = "".join(f"{k}={v}\n" for k, v in values.items())
        else:
            plain = json.dumps(dict(values)) if kind == "json" else yaml.safe_dump(dict(values))
        result = subprocess.run(
            ["sops", "encrypt", "--age", recipient, "--input-type", kind, "--output-type", kind,
             "--filename-override", relative],
            input=plain, capture_output=True, text=True, check=True, cwd=self.path,
            env={**os.environ, "SOPS_DISABLE_VERSION_CHECK": "1"},
        )  # fmt: skip
        return self.write(relative, result.stdout)

    def commit(self, message: str = "change") -> str:
        git(self.path, "add", "--all")
        git(self.path, "commit", "--quiet", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")


def audit_trail(state_dir: Path) -> list[dict[str, Any]]:
    """Every audit event a deployer recorded in `state_dir`, oldest first, as the JSON lines it ships."""
    database = state_dir / "state.db"
    if not database.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        try:
            rows = db.execute("SELECT line FROM audit_events ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # a state store from before the audit trail
            return []
    return [json.loads(line) for (line,) in rows]


def laughs(levels: int = 10) -> str:
    """A compose file that is a YAML bomb (billion laughs): 9**levels nodes once its aliases are resolved."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nservices:\n  main:\n    image: busybox\n    command: *a{levels - 1}\n"

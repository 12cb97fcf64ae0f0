"""SwarmBackend's command lines, with a runner that records them (the convergence it reads from the engine is
tried against a real swarm in tests/e2e/test_swarm.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from deployer.apply.swarm import SwarmBackend
from deployer.model import Stack
from deployer.runner import Completed


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None,
            timeout: float | None = None) -> Completed:  # fmt: skip
        self.calls.append((list(argv), dict(env)))
        return Completed(tuple(argv), 0, "deployed\n", "", 0.01)


def test_wait_timeout_zero_deploys_detached_and_judges_nothing(tmp_path: Path) -> None:
    """As for compose, `wait_timeout: 0` means do not wait: `--detach=true`, and no engine question at all
    (the engine here does not exist: asking it would fail)."""
    (tmp_path / "stacks" / "web").mkdir(parents=True)
    (tmp_path / "stacks" / "web" / ".env").write_text("FROM_DOTENV=1\n")
    stack = Stack("web", PurePosixPath("stacks/web"), PurePosixPath("stacks/web/compose.yaml"), wait_timeout=0,
                  engine="swarm", variables={"SHARED": "x"})  # fmt: skip
    runner = Recorded()
    backend = SwarmBackend(runner=runner, docker_env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert backend.up(stack, workdir=tmp_path, env={"TOKEN": "t"}) == "deployed"
    [(argv, env)] = runner.calls
    assert argv[:7] == ["docker", "stack", "deploy", "--prune", "--with-registry-auth", "--detach=true",
                        "--resolve-image"]  # fmt: skip
    assert argv[-1] == "web"
    # docker stack deploy reads no .env: the deployer hands over what compose would read, then the secrets
    assert (env["SHARED"], env["FROM_DOTENV"], env["TOKEN"]) == ("x", "1", "t")

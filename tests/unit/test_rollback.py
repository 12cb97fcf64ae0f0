"""pipeline/rollback.py's decisions that need no engine (the rollback itself: tests/e2e/test_rollback.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from deployer.errors import HealthCheckError
from deployer.fetch import Mirror
from deployer.pipeline import Deps
from deployer.pipeline.record import Recorder
from deployer.pipeline.rollback import roll_back
from deployer.settings import Settings

FAILED = HealthCheckError("stacks/app/compose.yaml: did not become healthy: main unhealthy", output="tail")


def deps(**environ: str) -> Deps:
    settings = Settings.from_env({"DEPLOYER_WEBHOOK_SECRET": "x" * 32, **environ})
    return cast(Deps, SimpleNamespace(settings=settings))


def test_deployer_rollback_is_on_by_default_and_false_turns_it_off() -> None:
    assert deps().settings.rollback is True
    assert deps(DEPLOYER_ROLLBACK="false").settings.rollback is False


def test_with_rollback_off_the_failure_is_raised_as_it_was() -> None:
    with pytest.raises(HealthCheckError) as raised:
        roll_back(
            deps(DEPLOYER_ROLLBACK="false"), cast(Recorder, None), cast(Mirror, None), "app", FAILED, good="a" * 40
        )
    assert raised.value is FAILED


def test_a_first_deploy_has_nothing_to_roll_back_to_and_says_so() -> None:
    with pytest.raises(HealthCheckError, match="first deploy: nothing to roll back to") as raised:
        roll_back(deps(), cast(Recorder, None), cast(Mirror, None), "app", FAILED, good=None)
    assert raised.value.output == "tail", "the output of the failed up is kept"

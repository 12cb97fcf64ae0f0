"""The deploy pipeline: fetch -> plan -> preflight -> apply -> report, for one commit.

This is the one package that imports more than one stage:
- `wiring`: what a deployment talks to (Deps), what it was asked (Request), how it shows progress;
- `deploy`: the use case, as numbered steps;
- `record`: the one recorder of a deployment's state changes and their audit events;
- `preview`: a pull request's plan and validation, nothing decrypted or deployed;
- `drift_check`: what deployed stacks run now against their last good deploy, and its repair;
- `queries`: what the CLI and the worker ask of the repository without deploying (branch head,
  plans, whether what runs is what the branch says).
"""

from deployer.pipeline.deploy import deploy
from deployer.pipeline.drift_check import DriftPass, check_drift
from deployer.pipeline.preview import preview
from deployer.pipeline.queries import (
    PLACEHOLDER,
    branch_head,
    converged,
    plan_against_deployed,
    plan_between,
    validate_tree,
)
from deployer.pipeline.record import superseded_statuses
from deployer.pipeline.wiring import BRANCH_TRIGGERS, Deps, Progress, Request, SilentProgress

__all__ = [
    "BRANCH_TRIGGERS", "PLACEHOLDER", "Deps", "DriftPass", "Progress", "Request", "SilentProgress", "branch_head",
    "check_drift", "converged", "deploy", "plan_against_deployed", "plan_between", "preview", "superseded_statuses",
    "validate_tree",
]  # fmt: skip

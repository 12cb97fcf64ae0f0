"""The one table from the errors deployer expects to the closed set of reasons (model.Reason).

Logs, the state store, commit statuses and the reconcile loop all go by the reason, and the reason
says whether a failure is transient (retry the same commit later) or terminal (model.TRANSIENT).
"""

from __future__ import annotations

from typing import Final

from deployer.errors import (
    BusyError,
    CatalogError,
    ComposeError,
    ComposeInvalidError,
    DeployerError,
    EngineError,
    FetchError,
    HealthCheckError,
    KeyUnavailableError,
    KnownSecretError,
    NotOnBranchError,
    PlanError,
    RefNotFoundError,
    SecretError,
    UnsignedCommitError,
)
from deployer.model import Reason

__all__ = ["REASON_OF", "reason_for"]

#: most specific first: the first class the error is an instance of decides
REASON_OF: Final[tuple[tuple[type[DeployerError], Reason], ...]] = (
    (KeyUnavailableError, Reason.KEY_UNAVAILABLE),
    (KnownSecretError, Reason.KNOWN_SECRET),
    (SecretError, Reason.SECRET_DECRYPT_FAILED),
    (RefNotFoundError, Reason.REF_NOT_FOUND),
    (FetchError, Reason.FETCH_FAILED),
    (BusyError, Reason.LOCK_HELD),
    (EngineError, Reason.ENGINE_UNREACHABLE),
    (NotOnBranchError, Reason.NOT_ON_BRANCH),
    (UnsignedCommitError, Reason.UNSIGNED),
    (HealthCheckError, Reason.HEALTH_CHECK_FAILED),
    (ComposeError, Reason.COMPOSE_FAILED),
    (ComposeInvalidError, Reason.COMPOSE_INVALID),
    (CatalogError, Reason.PLAN_INVALID),
    (PlanError, Reason.PLAN_INVALID),
)

#: what git, compose and the engine print when a disk is full, whatever failed
_DISK_FULL = ("no space left on device", "disk quota exceeded")


def reason_for(error: BaseException) -> Reason:
    """The reason a failure is recorded under; a full disk wins over whatever step it broke."""
    text = (str(error) + " " + str(getattr(error, "output", ""))).lower()
    if any(marker in text for marker in _DISK_FULL) or getattr(error, "errno", None) == 28:  # ENOSPC
        return Reason.DISK_FULL
    for kind, reason in REASON_OF:
        if isinstance(error, kind):
            return reason
    return Reason.COMPOSE_FAILED

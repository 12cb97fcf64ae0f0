"""The failures deployer expects and knows how to report.

Every error carries a stable `code` (for the state store, the audit log and commit statuses) and an
`exit_code` for the command line: 2 when the input was at fault and nothing was deployed, 1 when a
deployment ran and failed.
"""

from __future__ import annotations

from typing import ClassVar


class DeployerError(Exception):
    """A failure we expect and know how to report."""

    code: ClassVar[str] = "deployer_error"
    exit_code: ClassVar[int] = 2

    def __init__(self, message: str, *, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        #: further one-line problems of the same kind (validation reports all it finds)
        self.details = details


class SignatureError(DeployerError):
    """A webhook delivery is unsigned or its signature does not match."""

    code = "signature_invalid"


class EventError(DeployerError):
    """A webhook delivery is malformed: not JSON, wrong content type, fields missing."""

    code = "event_invalid"


class ConfigError(DeployerError):
    """The deployer's own configuration (environment, flags) is unusable."""

    code = "config_invalid"


class CatalogError(DeployerError):
    """A stack's compose file or x-deployer block is invalid."""

    code = "catalog_invalid"


class PlanError(DeployerError):
    """The stacks cannot be ordered or selected (cycle, unknown stack)."""

    code = "plan_invalid"


class FetchError(DeployerError):
    """The repository could not be fetched or the commit does not exist."""

    code = "fetch_failed"


class SecretError(DeployerError):
    """A SOPS file could not be decrypted (no key, wrong key, tampered file)."""

    code = "secret_decrypt_failed"


class KeyUnavailableError(SecretError):
    """The age identity is missing or unreadable: no file can be decrypted until it is back."""

    code = "key_unavailable"


class KnownSecretError(SecretError):
    """A secret anyone can read: a committed placeholder value, or a file only the public example key protects."""

    code = "known_secret"


class RefNotFoundError(FetchError):
    """The repository was fetched, but no branch, tag or commit has that name."""

    code = "ref_not_found"


class UnknownStackError(PlanError):
    """A request names a stack the commit does not have."""

    code = "unknown_stack"


class NotOnBranchError(DeployerError):
    """A push named a commit that the deploying branch, as fetched, does not contain."""

    code = "not_on_branch"


class UnsignedCommitError(DeployerError):
    """DEPLOYER_REQUIRE_SIGNED is on and git does not verify the commit's signature against an allowed signer."""

    code = "commit_unsigned"


class EngineError(DeployerError):
    """The Docker engine did not answer; nothing was changed."""

    code = "engine_unreachable"
    exit_code = 1


class ComposeInvalidError(DeployerError):
    """`docker compose config` rejected a stack."""

    code = "compose_invalid"


class PolicyError(ComposeInvalidError):
    """A stack's resolved compose config takes from the host what the host policy does not allow."""

    code = "policy_refused"


class ComposeError(DeployerError):
    """`docker compose up` or `down` failed."""

    code = "compose_failed"
    exit_code = 1

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        #: the tail of compose's output, secrets already redacted
        self.output = output


class HealthCheckError(ComposeError):
    """The stack came up but did not become healthy in time."""

    code = "health_check_failed"


class SwarmRolledBackError(ComposeError):
    """A swarm stack's update failed and Swarm rolled its services back to their previous spec."""

    code = "swarm_rolled_back"


class BusyError(DeployerError):
    """Another deployment holds the deploy lock."""

    code = "busy"
    exit_code = 1


class RolledBackError(DeployerError):
    """A stack that failed was brought back to its last good commit: `cause` is why it failed."""

    code = "rolled_back"
    exit_code = 1

    def __init__(self, message: str, *, cause: DeployerError, commit: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.commit = commit
        self.output = getattr(cause, "output", None)


class StateUnavailableError(DeployerError):
    """The state store cannot be written (disk full, read-only, I/O error): nothing is started unrecorded."""

    code = "state_unavailable"
    exit_code = 1


class AuthenticationError(DeployerError):
    """A request to the API or the pages carries no identity that can be believed (401)."""

    code = "unauthenticated"


class AuthorizationError(DeployerError):
    """A known identity lacks the group the request needs (403)."""

    code = "forbidden"

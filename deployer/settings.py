"""Settings, read once from the environment: the only module that looks at os.environ's contents.

Every secret also accepts a `NAME_FILE` twin holding the path of a file with the value (Docker and
Compose secrets); the file wins over the plain variable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from deployer.errors import ConfigError
from deployer.host_policy import HostPolicy

__all__ = ["DOCKER_PASSTHROUGH", "NOTIFY_EVENTS", "Settings"]

#: variables that tools need to find their binaries, config and engine; nothing else is inherited
DOCKER_PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
)
_SOPS_PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "SOPS_AGE_KEY_FILE",
    "SOPS_AGE_KEY",
    "SOPS_AGE_KEY_CMD",
    "SOPS_AGE_SSH_PRIVATE_KEY_FILE",
    "SOPS_AGE_RECIPIENTS",
    "EDITOR",
    "SOPS_EDITOR",
    "TERM",
)
#: what DEPLOYER_NOTIFY_ON may choose (deployer.report.notify says which events tell which)
NOTIFY_EVENTS = ("failure", "rollback", "recovery", "success")
_NOTIFY_DEFAULT = frozenset({"failure", "rollback", "recovery"})
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    repo_url: str | None = None
    bind: str = "127.0.0.1:8000"
    branch: str = "main"
    state_dir: Path = Path(".deployer")
    stacks_dir: PurePosixPath = PurePosixPath("stacks")
    webhook_secret: str | None = field(default=None, repr=False)
    forge: str | None = None
    forge_api_url: str | None = None
    forge_token: str | None = field(default=None, repr=False)
    forge_repo: str | None = None
    public_url: str | None = None
    loki_url: str | None = None
    loki_tenant: str | None = None
    loki_user: str | None = None
    loki_password: str | None = field(default=None, repr=False)
    loki_token: str | None = field(default=None, repr=False)
    #: days an event shipped to Loki is kept in the local trail (never pruned before it is shipped)
    audit_retention_days: int = 90
    #: Apprise URLs told of deployments (they hold tokens: logged by scheme only)
    notify_urls: tuple[str, ...] = field(default=(), repr=False)
    #: which outcomes they are told of, from NOTIFY_EVENTS
    notify_on: frozenset[str] = _NOTIFY_DEFAULT
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    authentik_jwks_url: str | None = None
    authentik_issuer: str | None = None
    authentik_audience: str | None = None
    #: the proxy provider's client secret: Authentik signs its outpost tokens HS256 with it when the
    #: provider has no signing key, which a proxy provider never has
    authentik_client_secret: str | None = field(default=None, repr=False)
    deploy_groups: tuple[str, ...] = ()
    view_groups: tuple[str, ...] = ()
    #: serve /api and the pages without identity (a loopback-only install); said in the log at start
    insecure_open_api: bool = False
    poll_interval: int = 300
    #: seconds a fetch of the config repository may take before it is killed (a remote that never answers)
    fetch_timeout: int = 120
    prune: bool = False
    #: bring a stack that fails at `up` or its health wait back to its last good commit and images
    rollback: bool = True
    #: what a stack may take from the host (DEPLOYER_ALLOWED_BIND_ROOTS, DEPLOYER_ALLOW_PRIVILEGED)
    host_policy: HostPolicy = field(default_factory=HostPolicy)
    max_parallel: int = 4
    #: stacks brought up (or down) at once on one engine other than the deployer's own
    max_per_host: int = 2
    #: seconds between checks of the other engines stacks run on (x-deployer.docker_host)
    host_check_interval: float = 30.0
    #: seconds before the first retry of a transient failure (doubled for each further one, at most 600)
    retry_backoff: float = 10.0
    #: what a drift check does with drift it finds: "report" it, or also "repair" it (redeploy the last good commit)
    drift: str = "report"
    #: seconds between drift checks of the deployed stacks (0: none)
    drift_interval: int = 300
    #: drift repairs of one stack in any hour, after which its drift is only reported (the flap guard)
    drift_max_repairs: int = 3
    #: deploy only commits whose signature git verifies against these (an SSH allowed_signers file, a GnuPG home)
    require_signed: bool = False
    allowed_signers: Path | None = None
    gpg_keyring: Path | None = None
    max_body: int = 1024 * 1024
    #: environment handed to `docker` and `docker compose` (secrets are added per stack)
    docker_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: environment handed to `sops` (age identities live here)
    sops_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from DEPLOYER_* variables.

        Raises ConfigError naming the variable when a value cannot be used.
        """
        return cls(
            repo_url=_get(environ, "DEPLOYER_REPO_URL"),
            bind=_get(environ, "DEPLOYER_BIND") or "127.0.0.1:8000",
            branch=_get(environ, "DEPLOYER_BRANCH") or "main",
            state_dir=Path(_get(environ, "DEPLOYER_STATE_DIR") or ".deployer"),
            stacks_dir=PurePosixPath(_get(environ, "DEPLOYER_STACKS_DIR") or "stacks"),
            webhook_secret=_secret(environ, "DEPLOYER_WEBHOOK_SECRET"),
            forge=_choice(environ, "DEPLOYER_FORGE", {"github", "gitea", "forgejo", "gitlab"}),
            forge_api_url=_get(environ, "DEPLOYER_FORGE_API_URL"),
            forge_token=_secret(environ, "DEPLOYER_FORGE_TOKEN"),
            forge_repo=_get(environ, "DEPLOYER_FORGE_REPO"),
            public_url=_get(environ, "DEPLOYER_PUBLIC_URL"),
            loki_url=_get(environ, "DEPLOYER_LOKI_URL"),
            loki_tenant=_get(environ, "DEPLOYER_LOKI_TENANT"),
            loki_user=_secret(environ, "DEPLOYER_LOKI_USER"),
            loki_password=_secret(environ, "DEPLOYER_LOKI_PASSWORD"),
            loki_token=_secret(environ, "DEPLOYER_LOKI_TOKEN"),
            audit_retention_days=_int(environ, "DEPLOYER_AUDIT_RETENTION_DAYS", 90, minimum=1),
            notify_urls=_urls(environ, "DEPLOYER_NOTIFY_URLS"),
            notify_on=_words(environ, "DEPLOYER_NOTIFY_ON", NOTIFY_EVENTS, default=_NOTIFY_DEFAULT),
            trusted_proxies=_networks(environ, "DEPLOYER_TRUSTED_PROXIES"),
            authentik_jwks_url=_get(environ, "DEPLOYER_AUTHENTIK_JWKS_URL"),
            authentik_issuer=_get(environ, "DEPLOYER_AUTHENTIK_ISSUER"),
            authentik_audience=_get(environ, "DEPLOYER_AUTHENTIK_AUDIENCE"),
            authentik_client_secret=_client_secret(environ, "DEPLOYER_AUTHENTIK_CLIENT_SECRET"),
            deploy_groups=_names(environ, "DEPLOYER_DEPLOY_GROUPS"),
            view_groups=_names(environ, "DEPLOYER_VIEW_GROUPS"),
            insecure_open_api=_bool(environ, "DEPLOYER_INSECURE_OPEN_API", default=False),
            poll_interval=_int(environ, "DEPLOYER_POLL_INTERVAL", 300, minimum=0),
            fetch_timeout=_int(environ, "DEPLOYER_FETCH_TIMEOUT", 120, minimum=1),
            prune=_bool(environ, "DEPLOYER_PRUNE", default=False),
            rollback=_bool(environ, "DEPLOYER_ROLLBACK", default=True),
            host_policy=HostPolicy.parse(
                environ.get("DEPLOYER_ALLOWED_BIND_ROOTS"), _get(environ, "DEPLOYER_ALLOW_PRIVILEGED")
            ),
            max_parallel=_int(environ, "DEPLOYER_MAX_PARALLEL", 4, minimum=1),
            max_per_host=_int(environ, "DEPLOYER_MAX_PER_HOST", 2, minimum=1),
            host_check_interval=_int(environ, "DEPLOYER_HOST_CHECK_INTERVAL", 30, minimum=1),
            retry_backoff=_int(environ, "DEPLOYER_RETRY_BACKOFF", 10, minimum=1),
            drift=_choice(environ, "DEPLOYER_DRIFT", {"report", "repair"}) or "report",
            drift_interval=_int(environ, "DEPLOYER_DRIFT_INTERVAL", 300, minimum=0),
            drift_max_repairs=_int(environ, "DEPLOYER_DRIFT_MAX_REPAIRS", 3, minimum=0),
            **_signing(environ),
            max_body=_int(environ, "DEPLOYER_MAX_BODY", 1024 * 1024, minimum=1),
            docker_env=_pick(environ, DOCKER_PASSTHROUGH),
            sops_env=_sops_env(environ),
        )


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _secret(environ: Mapping[str, str], name: str) -> str | None:
    path = _get(environ, f"{name}_FILE")
    if path is None:
        return _get(environ, name)
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError as error:
        raise ConfigError(f"{name}_FILE: cannot read {path}: {error.strerror}") from error


#: the shortest client secret accepted as an HMAC key (Authentik generates 128 characters)
MIN_CLIENT_SECRET = 32


def _client_secret(environ: Mapping[str, str], name: str) -> str | None:
    value = _secret(environ, name)
    if value is not None and len(value.encode()) < MIN_CLIENT_SECRET:
        raise ConfigError(f"{name}: {len(value.encode())} bytes is too short for an HMAC key (at least"
                          f" {MIN_CLIENT_SECRET}): copy the provider's whole client secret")  # fmt: skip
    return value


def _int(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _signing(environ: Mapping[str, str]) -> dict[str, Any]:
    """DEPLOYER_REQUIRE_SIGNED and what it verifies against: at least one of an SSH allowed_signers file
    (DEPLOYER_ALLOWED_SIGNERS) and a GnuPG home holding only the allowed keys (DEPLOYER_GPG_KEYRING)."""
    required = _bool(environ, "DEPLOYER_REQUIRE_SIGNED", default=False)
    signers = _get(environ, "DEPLOYER_ALLOWED_SIGNERS")
    keyring = _get(environ, "DEPLOYER_GPG_KEYRING")
    if signers is not None and not Path(signers).is_file():
        raise ConfigError(f"DEPLOYER_ALLOWED_SIGNERS: {signers} is not a file (an SSH allowed_signers file)")
    if keyring is not None and not Path(keyring).is_dir():
        raise ConfigError(f"DEPLOYER_GPG_KEYRING: {keyring} is not a directory (a GnuPG home with the allowed keys)")
    if required and signers is None and keyring is None:
        raise ConfigError("DEPLOYER_REQUIRE_SIGNED: true needs DEPLOYER_ALLOWED_SIGNERS or DEPLOYER_GPG_KEYRING")
    return {"require_signed": required, "allowed_signers": Path(signers).resolve() if signers else None,
            "gpg_keyring": Path(keyring).resolve() if keyring else None}  # fmt: skip


def _bool(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _choice(environ: Mapping[str, str], name: str, choices: set[str]) -> str | None:
    raw = _get(environ, name)
    if raw is not None and raw.lower() not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(sorted(choices))}, got {raw!r}")
    return raw.lower() if raw else None


def _networks(environ: Mapping[str, str], name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = _get(environ, name)
    if raw is None:
        return ()
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


def _names(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _get(environ, name)
    return tuple(part.strip() for part in raw.split(",") if part.strip()) if raw else ()


def _urls(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """URLs separated by commas or white space (the `_FILE` twin may hold one a line), split as Apprise
    splits them: only before a `scheme://`, so a comma inside a URL (`?to=a@x,b@y`) stays. An error
    names the entry by its position, never its text: a URL holds a token."""
    raw = _secret(environ, name)
    parts = re.split(r"[\s,]+(?=[a-zA-Z0-9]{1,32}://)", raw.strip()) if raw else []
    urls = tuple(part.strip(", \t\r\n") for part in parts if part.strip(", \t\r\n"))
    for position, url in enumerate(urls, 1):
        if not re.match(r"^[a-zA-Z0-9]{1,32}://\S+$", url):
            raise ConfigError(f"{name}: entry {position} is not a URL (expected scheme://..., as Apprise reads them)")
    return urls


def _words(
    environ: Mapping[str, str], name: str, choices: tuple[str, ...], *, default: frozenset[str]
) -> frozenset[str]:
    raw = _get(environ, name)
    words = [part.strip().lower() for part in (raw or "").split(",") if part.strip()]
    for word in words:
        if word not in choices:
            raise ConfigError(f"{name}: unknown event {word!r}: expected a comma list of {', '.join(choices)}")
    return frozenset(words) or default


def _pick(environ: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: environ[name] for name in names if name in environ}


def _sops_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = _pick(environ, _SOPS_PASSTHROUGH)
    # sops asks GitHub for its latest version on some commands; a deployer never should.
    env["SOPS_DISABLE_VERSION_CHECK"] = "1"
    return env

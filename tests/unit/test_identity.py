"""The identity rules without Flask or a network: who headers and tokens say is asking, and when not to believe them.

Keys are made here with `cryptography`; the key set is handed to KeySet by a fetch function that
records every URL it is asked for, so "nothing is fetched from a URL the request names" is checked
on what was actually requested.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest

from deployer.errors import AuthenticationError, ConfigError
from deployer.settings import Settings
from deployer.web.identity import Identifier, Identity, KeySet, KeySetUnavailableError, parse_groups, peer_trusted
from tests.authentik import AUDIENCE, ISSUER, ClientSecret, SigningKey, claims, hs256_with, jwks, unsigned

JWKS_URL = "https://auth.example/application/o/deployer/jwks/"
CLIENT_SECRET = ClientSecret()
PROXY = "10.0.0.2"  # Traefik, the trusted proxy
OUTSIDER = "10.9.9.9"  # anyone else on the network
TRUSTED = (ipaddress.ip_network("10.0.0.0/29"), ipaddress.ip_network("fd00::/64"))


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@dataclass
class Fetcher:
    """Plays the JWKS endpoint for KeySet: what it serves can change; every URL asked for is kept."""

    served: list[bytes]
    urls: list[str] = field(default_factory=list)
    fail: bool = False

    def __call__(self, url: str, timeout: float) -> bytes:
        self.urls.append(url)
        if self.fail:
            raise OSError("connection refused")
        return self.served[min(len(self.urls), len(self.served)) - 1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def headers_only() -> Settings:
    return Settings(trusted_proxies=TRUSTED)


def with_jwks(**changes: Any) -> Settings:
    return Settings(**{"trusted_proxies": TRUSTED, "authentik_jwks_url": JWKS_URL, "authentik_issuer": ISSUER,
                       "authentik_audience": AUDIENCE, **changes})  # fmt: skip


def identifier(settings: Settings, fetcher: Fetcher, clock: Clock | None = None) -> Identifier:
    keys = KeySet(JWKS_URL, fetch=fetcher, clock=clock or Clock())
    return Identifier(settings, keys=keys)


def outpost(username: str = "alice", groups: str = "deployers", token: str | None = None) -> dict[str, str]:
    """The headers the outpost sets (Traefik copies them onto the request)."""
    found = {
        "X-authentik-username": username,
        "X-authentik-groups": groups,
        "X-authentik-email": f"{username}@example.org",
    }
    if token is not None:
        found["X-authentik-jwt"] = token
    return found


# --- peers and headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [("10.0.0.2", True), ("10.0.0.8", False), ("fd00::5", True), ("::ffff:10.0.0.3", True), ("fe80::1", False),
     ("not an address", False), ("", False), (None, False)],
)  # fmt: skip
def test_only_peers_in_the_trusted_networks_are_trusted(peer: str | None, trusted: bool) -> None:
    assert peer_trusted(peer, TRUSTED) is trusted


def test_groups_split_on_the_pipe_only() -> None:
    assert parse_groups("admins|ops team| |a,b|") == {"admins", "ops team", "a,b"}
    assert parse_groups("") == frozenset()


def test_headers_from_a_trusted_proxy_are_the_identity() -> None:
    found = Identifier(headers_only()).identify(PROXY, outpost("alice", "deployers|ops team"))
    assert found == Identity("alice", frozenset({"deployers", "ops team"}), "alice@example.org", "headers")


def test_header_names_are_case_insensitive_and_utf8_values_survive_wsgi() -> None:
    wsgi = "zoë".encode().decode("latin-1")  # what a WSGI server hands over for UTF-8 bytes
    found = Identifier(headers_only()).identify(PROXY, {"x-AUTHENTIK-username": wsgi, "X-Authentik-Groups": "v"})
    assert found is not None and found.username == "zoë" and found.groups == {"v"} and found.email is None


def test_headers_from_anyone_else_are_ignored_whatever_x_forwarded_for_says() -> None:
    spoofed = {**outpost("admin", "deployers"), "X-Forwarded-For": PROXY, "X-Real-Ip": PROXY}
    assert Identifier(headers_only()).identify(OUTSIDER, spoofed) is None
    assert Identifier(Settings()).identify(PROXY, spoofed) is None  # no trusted proxies: nobody's headers count


def test_a_trusted_proxy_that_names_nobody_gives_no_identity() -> None:
    assert Identifier(headers_only()).identify(PROXY, {"X-authentik-groups": "deployers"}) is None
    assert Identifier(headers_only()).identify(PROXY, {"X-authentik-username": "  "}) is None


def test_a_bearer_token_without_a_key_set_is_refused(rsa_key: SigningKey) -> None:
    with pytest.raises(AuthenticationError, match="neither DEPLOYER_AUTHENTIK_JWKS_URL nor"):
        Identifier(headers_only()).identify(OUTSIDER, {"Authorization": f"Bearer {rsa_key.sign(claims())}"})
    assert Identifier(headers_only()).identify(OUTSIDER, {"Authorization": "Basic YTpi"}) is None


# --- tokens --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_an_outpost_token_with_its_headers_is_believed(which: str, rsa_key: SigningKey, ec_key: SigningKey) -> None:
    key = rsa_key if which == "rsa" else ec_key
    fetcher = Fetcher([jwks(rsa_key, ec_key)])
    token = key.sign(claims("alice", ("deployers", "ops team")))
    found = identifier(with_jwks(), fetcher).identify(PROXY, outpost("alice", "deployers|ops team", token))
    assert found == Identity("alice", frozenset({"deployers", "ops team"}), "alice@example.org", "headers")
    assert fetcher.urls == [JWKS_URL]


def test_headers_without_a_token_are_refused_once_a_key_set_is_configured(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    with pytest.raises(AuthenticationError, match="without a token"):
        ident.identify(PROXY, outpost("alice"))
    assert ident.identify(OUTSIDER, outpost("alice")) is None  # spoofed from elsewhere: not even read


def test_an_outpost_token_from_an_untrusted_peer_is_ignored(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    assert ident.identify(OUTSIDER, outpost("alice", token=rsa_key.sign(claims("alice")))) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # made when the test runs, not when it is collected: the suite takes minutes to get here
        (lambda: claims(ttl=-120), "token expired"),  # past the 30 s leeway
        (lambda: claims(aud="another-app"), "Audience"),
        (lambda: claims(aud=None), "aud"),
        (lambda: claims(iss="https://evil.example/application/o/deployer/"), "Invalid issuer"),
        (lambda: claims(iss=None), "iss"),
        (lambda: claims(exp=None), "exp"),
        (lambda: claims(nbf=int(time.time()) + 600), "not yet valid"),
    ],
    ids=["expired", "wrong-audience", "no-audience", "wrong-issuer", "no-issuer", "no-exp", "not-yet-valid"],
)
def test_tokens_with_bad_claims_are_refused(
    payload: Callable[[], dict[str, Any]], message: str, rsa_key: SigningKey
) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    with pytest.raises(AuthenticationError, match=message):
        ident.identify(PROXY, outpost("alice", token=rsa_key.sign(payload())))


def test_a_token_just_past_exp_is_within_the_leeway(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    assert ident.identify(PROXY, outpost("alice", token=rsa_key.sign(claims(ttl=-5)))) is not None


def test_without_a_configured_audience_or_issuer_those_claims_are_not_checked(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(authentik_issuer=None, authentik_audience=None), Fetcher([jwks(rsa_key)]))
    token = rsa_key.sign(claims(aud="whatever", iss="https://other.example/"))
    assert ident.identify(PROXY, outpost("alice", token=token)) is not None


def test_alg_none_is_refused(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    with pytest.raises(AuthenticationError, match="its key's algorithm"):
        ident.identify(PROXY, outpost("alice", token=unsigned(claims("alice"), rsa_key.kid)))


@pytest.mark.parametrize("secret", [None, CLIENT_SECRET.secret])
def test_hs256_signed_with_the_public_key_is_refused(rsa_key: SigningKey, secret: str | None) -> None:
    """The key-confusion attack: the public PEM used as an HMAC secret. HS256 is checked with the
    configured client secret only, or not at all: never with a key of the key set."""
    ident = identifier(with_jwks(authentik_client_secret=secret), Fetcher([jwks(rsa_key)]))
    token = hs256_with(rsa_key.public_pem(), claims("alice"), rsa_key.kid)
    refusal = "Signature verification failed" if secret else "no DEPLOYER_AUTHENTIK_CLIENT_SECRET is set"
    with pytest.raises(AuthenticationError, match=refusal):
        ident.identify(PROXY, outpost("alice", token=token))


# --- tokens as Authentik signs a proxy provider's: HS256 with its client secret, no kid ------------------------


def with_client_secret(**changes: Any) -> Settings:
    return Settings(**{"trusted_proxies": TRUSTED, "authentik_client_secret": CLIENT_SECRET.secret,
                       "authentik_issuer": ISSUER, "authentik_audience": AUDIENCE, **changes})  # fmt: skip


def test_an_outpost_token_signed_with_the_client_secret_is_believed() -> None:
    token = CLIENT_SECRET.sign(claims("alice", ("deployers", "ops")))
    found = Identifier(with_client_secret()).identify(PROXY, outpost("alice", "deployers|ops", token=token))
    assert found == Identity("alice", frozenset({"deployers", "ops"}), "alice@example.org", "headers")
    bearer = {"Authorization": f"Bearer {CLIENT_SECRET.sign(claims('ak-ci', ('deployers',)))}"}
    assert Identifier(with_client_secret()).identify(OUTSIDER, bearer) == Identity(
        "ak-ci", frozenset({"deployers"}), "ak-ci@example.org", "bearer"
    )


@pytest.mark.parametrize(
    ("make", "refusal"),
    [  # made when the test runs: a token made at collection could expire before
        (lambda: ClientSecret().sign(claims("alice")), "Signature verification failed"),  # another provider's
        (lambda: CLIENT_SECRET.sign(claims("alice", aud="other-client")), "Audience doesn't match"),
        (lambda: CLIENT_SECRET.sign(claims("alice", iss="https://evil.example/")), "issuer"),
        (lambda: CLIENT_SECRET.sign(claims("alice", ttl=-3600)), "expired"),
        (lambda: unsigned(claims("alice"), "k"), "only HS256 with the client secret"),
        (lambda: SigningKey.rsa("rsa-x").sign(claims("alice")), "only HS256 with the client secret"),
    ],
    ids=["other secret", "audience", "issuer", "expired", "alg none", "rs256"],
)
def test_tokens_not_signed_with_the_client_secret_for_this_provider_are_refused(
    make: Callable[[], str], refusal: str
) -> None:
    with pytest.raises(AuthenticationError, match=refusal):
        Identifier(with_client_secret()).identify(PROXY, outpost("alice", token=make()))


def test_headers_without_a_token_are_refused_once_a_client_secret_is_configured() -> None:
    with pytest.raises(AuthenticationError, match="without a token"):
        Identifier(with_client_secret()).identify(PROXY, outpost("alice"))


def test_a_short_client_secret_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DEPLOYER_AUTHENTIK_CLIENT_SECRET: 8 bytes is too short"):
        Settings.from_env({"DEPLOYER_AUTHENTIK_CLIENT_SECRET": "12345678"})
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(CLIENT_SECRET.secret + "\n")
    settings = Settings.from_env({"DEPLOYER_AUTHENTIK_CLIENT_SECRET_FILE": str(secret_file)})
    assert settings.authentik_client_secret == CLIENT_SECRET.secret
    assert CLIENT_SECRET.secret not in repr(settings)


def test_a_token_in_another_asymmetric_algorithm_than_its_key_is_refused(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    token = jwt.encode(claims("alice"), rsa_key.private, algorithm="PS256", headers={"kid": rsa_key.kid})
    with pytest.raises(AuthenticationError, match="its key's algorithm"):
        ident.identify(PROXY, outpost("alice", token=token))


def test_a_forged_signature_under_a_known_kid_is_refused(rsa_key: SigningKey) -> None:
    forger = SigningKey.rsa(rsa_key.kid)
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    with pytest.raises(AuthenticationError, match="Signature verification failed"):
        ident.identify(PROXY, outpost("alice", token=forger.sign(claims("alice"))))


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", ""])
def test_garbage_tokens_are_refused(token: str, rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    with pytest.raises(AuthenticationError):
        ident.identify(OUTSIDER, {"Authorization": f"Bearer {token}x"})


def test_a_token_without_kid_is_refused(rsa_key: SigningKey) -> None:
    token = jwt.encode(claims("alice"), rsa_key.private, algorithm="RS256")
    with pytest.raises(AuthenticationError, match="kid"):
        identifier(with_jwks(), Fetcher([jwks(rsa_key)])).identify(PROXY, outpost("alice", token=token))


def test_a_jku_x5u_or_embedded_jwk_header_is_never_used(rsa_key: SigningKey) -> None:
    attacker = SigningKey.rsa("attacker-1")
    fetcher = Fetcher([jwks(rsa_key)])
    ident = identifier(with_jwks(), fetcher)
    token = attacker.sign(claims("mallory"), jku="https://attacker.example/jwks.json",
                          x5u="https://attacker.example/cert.pem", jwk=attacker.jwk())  # fmt: skip
    headers = {"Authorization": f"Bearer {token}", "X-authentik-meta-jwks": "https://attacker.example/jwks.json"}
    with pytest.raises(AuthenticationError, match="does not hold"):
        ident.identify(PROXY, headers)
    # the same attack under the real kid: the configured key checks it, and it fails
    forged = SigningKey(rsa_key.kid, "RS256", attacker.private).sign(claims("mallory"), jku="https://attacker.example/")
    with pytest.raises(AuthenticationError, match="Signature verification failed"):
        ident.identify(PROXY, {"Authorization": f"Bearer {forged}"})
    assert set(fetcher.urls) == {JWKS_URL}


def test_a_token_for_another_user_than_the_headers_is_refused(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    viewer_token = rsa_key.sign(claims("victor", ("viewers",)))
    with pytest.raises(AuthenticationError, match="'admin' is not the token's user"):
        ident.identify(PROXY, outpost("admin", "viewers", viewer_token))
    with pytest.raises(AuthenticationError, match="groups differ"):
        ident.identify(PROXY, outpost("victor", "viewers|deployers", viewer_token))


def test_a_machine_clients_bearer_token_names_it_and_its_groups(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    token = rsa_key.sign(claims("ak-deployer-client_credentials", ("ci", "deployers"), email=None))
    found = ident.identify(OUTSIDER, {"Authorization": f"Bearer {token}"})
    assert found == Identity("ak-deployer-client_credentials", frozenset({"ci", "deployers"}), None, "bearer")
    token = rsa_key.sign(claims("x", (), preferred_username=None, sub="svc-1"))
    found = ident.identify(OUTSIDER, {"authorization": f"bearer {token}"})
    assert found is not None and (found.username, found.groups) == ("svc-1", frozenset())


def test_a_bearer_token_from_an_untrusted_peer_ignores_its_spoofed_headers(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    token = rsa_key.sign(claims("victor", ("viewers",)))
    found = ident.identify(OUTSIDER, {**outpost("admin", "deployers"), "Authorization": f"Bearer {token}"})
    assert found is not None and (found.username, found.groups) == ("victor", frozenset({"viewers"}))


def test_a_groups_claim_that_is_not_a_list_of_names_is_refused(rsa_key: SigningKey) -> None:
    ident = identifier(with_jwks(), Fetcher([jwks(rsa_key)]))
    with pytest.raises(AuthenticationError, match="groups claim"):
        ident.identify(OUTSIDER, {"Authorization": f"Bearer {rsa_key.sign({**claims(), 'groups': 'deployers'})}"})


# --- the key set ---------------------------------------------------------------------------------------------


def test_an_unknown_kid_refreshes_the_key_set_once_then_waits(rsa_key: SigningKey, ec_key: SigningKey) -> None:
    clock = Clock()
    fetcher = Fetcher([jwks(rsa_key), jwks(rsa_key, ec_key)])
    ident = identifier(with_jwks(), fetcher, clock)
    assert ident.identify(OUTSIDER, {"Authorization": f"Bearer {rsa_key.sign(claims())}"}) is not None
    clock.now += 11  # Authentik rotated in the EC key
    assert ident.identify(OUTSIDER, {"Authorization": f"Bearer {ec_key.sign(claims())}"}) is not None
    assert len(fetcher.urls) == 2
    stranger = SigningKey.ec("unknown-kid")
    for _ in range(5):  # random kids do not make the deployer hammer Authentik
        with pytest.raises(AuthenticationError, match="does not hold"):
            ident.identify(OUTSIDER, {"Authorization": f"Bearer {stranger.sign(claims())}"})
    assert len(fetcher.urls) == 2
    clock.now += 11
    with pytest.raises(AuthenticationError, match="does not hold"):
        ident.identify(OUTSIDER, {"Authorization": f"Bearer {stranger.sign(claims())}"})
    assert len(fetcher.urls) == 3


def test_the_key_set_is_cached_then_fetched_again_when_stale(rsa_key: SigningKey) -> None:
    clock = Clock()
    fetcher = Fetcher([jwks(rsa_key), json.dumps({"keys": []}).encode()])
    ident = identifier(with_jwks(), fetcher, clock)
    bearer = {"Authorization": f"Bearer {rsa_key.sign(claims())}"}
    for _ in range(20):
        assert ident.identify(OUTSIDER, bearer) is not None
    assert len(fetcher.urls) == 1
    clock.now += 301  # stale; the new document is unusable, so the known keys are kept
    assert ident.identify(OUTSIDER, bearer) is not None
    assert len(fetcher.urls) == 2


def test_a_key_set_that_cannot_be_fetched_is_503_until_it_can(rsa_key: SigningKey) -> None:
    clock = Clock()
    fetcher = Fetcher([jwks(rsa_key)], fail=True)
    ident = identifier(with_jwks(), fetcher, clock)
    bearer = {"Authorization": f"Bearer {rsa_key.sign(claims())}"}
    with pytest.raises(KeySetUnavailableError):
        ident.identify(OUTSIDER, bearer)
    fetcher.fail = False
    with pytest.raises(KeySetUnavailableError):  # not asked again at once
        ident.identify(OUTSIDER, bearer)
    clock.now += 11
    assert ident.identify(OUTSIDER, bearer) is not None
    fetcher.fail = True
    clock.now += 400  # Authentik down later: the cached keys go on working
    assert ident.identify(OUTSIDER, bearer) is not None


def test_symmetric_and_encryption_keys_in_the_key_set_are_never_used(rsa_key: SigningKey) -> None:
    secret = b"s3cret-s3cret-s3cret-s3cret-s3cr"
    oct_key = {
        "kty": "oct",
        "kid": "hmac-1",
        "alg": "HS256",
        "k": base64.urlsafe_b64encode(secret).decode().rstrip("="),
    }
    enc_key = {**rsa_key.jwk(), "kid": "enc-1", "use": "enc"}
    fetcher = Fetcher([json.dumps({"keys": [oct_key, enc_key, rsa_key.jwk()]}).encode()])
    ident = identifier(with_jwks(), fetcher)
    tokens = {
        hs256_with(secret, claims(), "hmac-1"): "no DEPLOYER_AUTHENTIK_CLIENT_SECRET",  # never the key set's oct key
        SigningKey("enc-1", "RS256", rsa_key.private).sign(claims()): "does not hold",
    }
    for token, refusal in tokens.items():
        with pytest.raises(AuthenticationError, match=refusal):
            ident.identify(OUTSIDER, {"Authorization": f"Bearer {token}"})


def test_the_key_set_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        KeySet("file:///etc/passwd")

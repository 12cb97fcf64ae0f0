"""Identity end to end: a real Traefik, with the shipped middlewares.yml and deployer.yml, in front of a real
`deployer serve` that checks Authentik's tokens against a key set fetched over HTTP.

Authentik cannot run here. `Outpost` is a stand-in for its embedded outpost as Traefik's forward-auth
sees it: whoever the test client's `session=<name>` cookie names is logged in (200 with the
X-authentik-* headers and an X-authentik-jwt), nobody else is (401). The token is signed either RS256
with a key that tests/authentik.py's JwksServer publishes (a provider with a signing key), or HS256
with the provider's client secret and no kid, as Authentik signs a proxy provider's tokens. Git, gunicorn, the deploy
worker and the Docker engine are real.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.authentik import AUDIENCE, ISSUER, ClientSecret, JwksServer, SigningKey, claims, hs256_with, unsigned
from tests.conftest import AgeKey, tool_environ
from tests.deliveries import push_payload, sign
from tests.e2e.served import (
    FINISHED,
    SECRET,
    LoopbackServer,
    Served,
    Traefik,
    container_env,
    container_id,
    http,
    versions,
    wait_for,
)
from tests.helpers import ConfigRepo
from tests.servers import ForgeServer

DOMAIN = "example.test"
#: who the outpost stand-in knows, and their Authentik groups
USERS = {"vera": ("viewers",), "dora": ("deployers",)}


class Outpost(LoopbackServer):
    """A stand-in for Authentik's embedded outpost answering Traefik's forward-auth GET.

    The `session` cookie of the client's request (Traefik passes the client's headers on) names who is
    logged in; a known name gets 200 with X-authentik-username, -groups (pipe-joined), -email and an
    X-authentik-jwt signed with `key` for the deployer's issuer and audience. Anything else gets 401.
    """

    def __init__(self, key: SigningKey | ClientSecret) -> None:
        calls: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                calls.append(self.headers.get("X-Forwarded-Uri", ""))
                cookie = SimpleCookie(self.headers.get("Cookie", ""))
                name = cookie["session"].value if "session" in cookie else None
                if name not in USERS:
                    body = b"login required"
                    self.send_response(401)
                else:
                    body = b""
                    groups = USERS[name]
                    self.send_response(200)
                    self.send_header("X-authentik-username", name)
                    self.send_header("X-authentik-groups", "|".join(groups))
                    self.send_header("X-authentik-email", f"{name}@example.org")
                    self.send_header("X-authentik-jwt", key.sign(claims(name, groups)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.calls = calls
        super().__init__(Handler)


class Edge:
    """Traefik's entry point (`call`), the deployer behind it (`served`), and reads straight to the deployer."""

    def __init__(self, base: str, served: Served, outpost: Outpost, key: SigningKey | ClientSecret) -> None:
        self.base, self.served, self.outpost, self.key = base, served, outpost, key
        #: a machine client's token (viewers) for the test's own reads straight to the deployer
        self.reader = {"Authorization": f"Bearer {key.sign(claims('ak-reader', ('viewers',)))}"}

    def call(self, method: str, path: str, *, user: str | None = None, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        sent = {"Host": f"deployer.{DOMAIN}", **(headers or {})}
        if user:
            sent["Cookie"] = f"session={user}"
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        return loose(method, f"{self.base}{path}", body=data, headers=sent)

    def read(self, path: str) -> Any:
        status, answer = http("GET", f"{self.served.base}{path}", headers=self.reader)
        assert status == 200, (path, status, answer)
        return answer

    def deployments(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.read("/api/deployments?limit=100")
        return found

    def finished(self, deployment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (d := self.read(f"/api/deployments/{deployment_id}"))["state"] in FINISHED and d,
            timeout=120, what=f"deployment {deployment_id} to finish",
        )  # fmt: skip
        return found


def loose(method: str, url: str, *, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
    """`http`, but an answer that is not JSON (the outpost's login page) comes back as its bytes."""
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 -- loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 -- loopback http only
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.rsa("authentik-traefik-e2e")


def identity_env(tmp_path: Path, repo: ConfigRepo, key_file: AgeKey | None, jwks: JwksServer | None, *,
                 trusted: str, **extra: str) -> dict[str, str]:  # fmt: skip
    if jwks is not None:
        extra["DEPLOYER_AUTHENTIK_JWKS_URL"] = jwks.url
    return tool_environ(tmp_path, key_file, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                        DEPLOYER_POLL_INTERVAL="0", DEPLOYER_TRUSTED_PROXIES=trusted, DEPLOYER_AUTHENTIK_ISSUER=ISSUER,
                        DEPLOYER_AUTHENTIK_AUDIENCE=AUDIENCE, DEPLOYER_DEPLOY_GROUPS="deployers",
                        DEPLOYER_VIEW_GROUPS="viewers", DEPLOYER_INSECURE_OPEN_API="false", **extra)  # fmt: skip


@pytest.fixture
def edge(tmp_path: Path, repo: ConfigRepo, age_key: AgeKey, forge: ForgeServer,
         key: SigningKey) -> Iterator[Callable[..., Edge]]:  # fmt: skip
    """start(): the deployer on the repository as the test has written it, behind Traefik and the stand-ins;
    start(signer=ClientSecret()) for tokens signed with the provider's client secret instead of a JWKS key."""
    cleanups: list[Callable[[], None]] = []

    def start(signer: SigningKey | ClientSecret = key) -> Edge:
        extra = {
            "DEPLOYER_FORGE": "gitea",
            "DEPLOYER_FORGE_API_URL": forge.api_url,
            "DEPLOYER_FORGE_TOKEN": forge.token,
        }
        jwks = None
        if isinstance(signer, SigningKey):
            jwks = JwksServer(signer)
            cleanups.append(jwks.close)
        else:
            extra["DEPLOYER_AUTHENTIK_CLIENT_SECRET"] = signer.secret
        env = identity_env(tmp_path, repo, age_key, jwks, trusted="127.0.0.1/32", **extra)
        served = Served(env, log=tmp_path / "serve.log")
        cleanups.append(served.stop)
        cleanups.append(lambda: _no_secret_in(served, signer))
        outpost = Outpost(signer)
        cleanups.append(outpost.close)
        traefik = Traefik(tmp_path, outpost_url=outpost.url, deployer_url=served.base, domain=DOMAIN)
        cleanups.append(traefik.stop)
        found = Edge(traefik.base, served, outpost, signer)
        wait_for(lambda: _routed(found), timeout=30, what="traefik to load the deployer's routes")
        return found

    yield start
    for cleanup in reversed(cleanups):
        cleanup()


def _no_secret_in(served: Served, signer: SigningKey | ClientSecret) -> None:
    if isinstance(signer, ClientSecret):
        assert signer.secret not in served.log()
        assert all(signer.secret not in json.dumps(event) for event in served.audit())


def _routed(edge: Edge) -> bool:
    try:
        return edge.call("GET", "/api/deployments") == (401, b"login required")  # the outpost's (before: 404)
    except OSError:  # not listening yet
        return False


@pytest.mark.usefixtures("engine")
def test_a_viewer_reads_through_traefik_but_may_not_deploy(edge: Callable[..., Edge], repo: ConfigRepo,
                                                           prefix: str) -> None:  # fmt: skip
    versions(repo, f"{prefix}-a", value="1")
    running = edge()
    assert running.call("GET", "/api/deployments", user="mallory") == (401, b"login required")  # unknown session
    status, answer = running.call("GET", "/api/deployments", user="vera")
    assert (status, answer) == (200, [])
    status, answer = running.call("POST", "/api/deployments", user="vera", body={"reason": "let me"})
    assert status == 403 and answer["error"] == "forbidden", answer
    assert running.deployments() == []
    [refused] = [e for e in running.served.audit() if e["event"] == "request.refused"]
    assert (refused["actor"], refused["peer"], refused["via"]) == ("vera", "127.0.0.1", "headers")


@pytest.mark.usefixtures("engine")
def test_a_deployer_redeploys_exactly_the_named_stack_as_themself(edge: Callable[..., Edge], repo: ConfigRepo,
                                                                  prefix: str) -> None:  # fmt: skip
    a, b = f"{prefix}-a", f"{prefix}-b"
    head = versions(repo, a, b, value="1")
    running = edge()
    assert running.finished(running.served.push(head))["state"] == "succeeded"
    before = container_id(b)

    status, answer = running.call("POST", "/api/deployments", user="dora", body={"stacks": [a]})
    assert status == 202, answer
    done = running.finished(answer["deployment_id"])
    assert (done["state"], done["trigger"], done["actor"], done["commit"]) == ("succeeded", "manual", "dora", head)
    assert [s["name"] for s in done["stacks"]] == [a]
    assert container_id(b) == before  # not touched


@pytest.mark.usefixtures("engine")
def test_a_deployer_deploys_an_older_commit_which_is_held(edge: Callable[..., Edge], repo: ConfigRepo,
                                                          prefix: str) -> None:  # fmt: skip
    a, b = f"{prefix}-a", f"{prefix}-b"
    old = versions(repo, a, b, value="1")
    new = versions(repo, a, b, value="2")
    running = edge()
    assert running.finished(running.served.push(new, before=old))["state"] == "succeeded"

    status, answer = running.call("POST", "/api/deployments", user="dora",
                                  body={"ref": old, "stacks": [a], "reason": "back to v1"})  # fmt: skip
    assert status == 202, answer
    done = running.finished(answer["deployment_id"])
    assert (done["state"], done["trigger"], done["actor"], done["commit"]) == ("succeeded", "manual", "dora", old)
    assert container_env(a)["VERSION"] == "1" and container_env(b)["VERSION"] == "2"
    status, listed = running.call("GET", "/api/stacks", user="vera")
    assert status == 200, listed
    held = {s["name"]: s["held"] for s in listed}
    assert held == {a: {"commit": old, "actor": "dora", "reason": "back to v1"}, b: None}


@pytest.mark.usefixtures("engine")
def test_tokens_signed_as_authentik_signs_a_proxy_providers_with_its_client_secret(
    edge: Callable[..., Edge], repo: ConfigRepo, prefix: str
) -> None:
    """DEPLOYER_AUTHENTIK_CLIENT_SECRET: the outpost's HS256 token without a kid is the identity; a viewer
    reads and may not deploy, a deployer deploys; a token of another secret, or RS256 with no key set, is 401."""
    a, b = f"{prefix}-a", f"{prefix}-b"
    head = versions(repo, a, b, value="1")
    secret = ClientSecret()
    running = edge(secret)
    assert running.finished(running.served.push(head))["state"] == "succeeded"
    assert running.call("GET", "/api/stacks", user="vera")[0] == 200
    status, answer = running.call("POST", "/api/deployments", user="vera", body={"stacks": [a]})
    assert status == 403, answer
    status, answer = running.call("POST", "/api/deployments", user="dora", body={"stacks": [a], "force": True})
    assert status == 202, answer
    done = running.finished(answer["deployment_id"])
    assert (done["state"], done["actor"], [s["name"] for s in done["stacks"]]) == ("succeeded", "dora", [a])
    direct = f"{running.served.base}/api/deployments"
    for forged in (ClientSecret().sign(claims("dora", ("deployers",))), SigningKey.rsa().sign(claims("dora"))):
        headers = {"Authorization": f"Bearer {forged}", "Content-Type": "application/json"}
        assert http("POST", direct, body=b"{}", headers=headers)[0] == 401
    machine = {"Authorization": f"Bearer {secret.sign(claims('ak-ci', ('deployers',)))}",
               "Content-Type": "application/json"}  # fmt: skip
    status, answer = http("POST", direct, body=json.dumps({"stacks": [b], "reason": "from CI"}).encode(),
                          headers=machine)  # fmt: skip
    assert status == 202, answer
    assert running.finished(answer["deployment_id"])["actor"] == "ak-ci"


@pytest.mark.usefixtures("engine")
def test_identity_headers_sent_to_the_webhook_route_are_stripped(edge: Callable[..., Edge], repo: ConfigRepo,
                                                                 prefix: str) -> None:  # fmt: skip
    head = versions(repo, f"{prefix}-a", value="1")
    running = edge()
    calls = len(running.outpost.calls)
    delivery = sign("gitea", push_payload("gitea", after=head), SECRET)
    spoofed = {**delivery.headers, "X-authentik-username": "dora", "X-authentik-groups": "deployers",
               "X-authentik-jwt": running.key.sign(claims("dora", ("deployers",)))}  # fmt: skip
    status, answer = running.call("POST", "/webhook", body=delivery.body, headers=spoofed)
    assert status == 202, answer
    done = running.finished(answer["deployment_id"])
    assert (done["state"], done["trigger"], done["actor"]) == ("succeeded", "webhook", "op")  # the pusher
    assert len(running.outpost.calls) == calls  # the forge is never sent to the outpost


@pytest.fixture
def direct(tmp_path: Path, repo: ConfigRepo, key: SigningKey) -> Iterator[Callable[[str], Served]]:
    """start(trusted): a deployer with identity configured, no Traefik, no stacks (nothing here deploys)."""
    repo.write("README.md", "no stacks yet\n")
    repo.commit("empty")
    jwks = JwksServer(key)
    started: list[Served] = []

    def start(trusted: str) -> Served:
        served = Served(identity_env(tmp_path, repo, None, jwks, trusted=trusted), log=tmp_path / "serve.log")
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
    jwks.close()


def test_headers_from_an_untrusted_peer_are_ignored(direct: Callable[[str], Served], key: SigningKey) -> None:
    served = direct("10.0.0.0/8")  # the test's loopback address is not a trusted proxy
    groups = "deployers|viewers"
    spoofed = {"X-authentik-username": "dora", "X-authentik-groups": groups, "X-authentik-email": "dora@example.org",
               "X-authentik-jwt": key.sign(claims("dora", tuple(groups.split("|"))))}  # fmt: skip
    status, answer = http("GET", f"{served.base}/api/deployments", headers=spoofed)
    assert status == 401 and answer["error"] == "unauthenticated", answer
    status, answer = http("POST", f"{served.base}/api/deployments", body=b"{}",
                          headers={**spoofed, "Content-Type": "application/json"})  # fmt: skip
    assert status == 401, answer
    reader = {"Authorization": f"Bearer {key.sign(claims('ak-reader', ('viewers',)))}"}  # bearer counts from anyone
    assert http("GET", f"{served.base}/api/deployments", headers=reader) == (200, [])


def test_bad_bearer_tokens_are_refused_and_queue_nothing(direct: Callable[[str], Served], key: SigningKey) -> None:
    served = direct("127.0.0.1/32")
    dora = claims("dora", ("deployers",))
    tokens = {
        "forged signature": SigningKey.rsa(key.kid).sign(dora),
        "expired": key.sign(claims("dora", ("deployers",), ttl=-3600, iat=0)),
        "wrong audience": key.sign(claims("dora", ("deployers",), aud="another-client")),
        "wrong issuer": key.sign(claims("dora", ("deployers",), iss="https://evil.example/application/o/deployer/")),
        "alg none": unsigned(dora, key.kid),
        "HS256 with the public key": hs256_with(key.public_pem(), dora, key.kid),
    }
    answers = {}
    for what, token in tokens.items():
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        answers[what] = http("POST", f"{served.base}/api/deployments", body=b'{"reason": "x"}', headers=headers)[0]
    assert answers == dict.fromkeys(tokens, 401)
    reader = {"Authorization": f"Bearer {key.sign(claims('ak-reader', ('viewers',)))}"}
    assert http("GET", f"{served.base}/api/deployments", headers=reader) == (200, [])
    good = {"Authorization": f"Bearer {key.sign(dora)}", "Content-Type": "application/json"}
    status, answer = http("POST", f"{served.base}/api/deployments", body=b'{"reason": "x"}', headers=good)
    # the same request with a good token passes identity (and then finds no fetched repository: nothing pushed yet)
    assert (status, answer["error"]) == (404, "ref_not_found"), answer

"""Identity on the real `deployer serve`: gunicorn's REMOTE_ADDR, the key set fetched over HTTP, the audit trail.

The trusted proxy is 127.0.0.1 (where the test's requests come from, as Traefik's would);
tests/authentik.py's JwksServer stands in for Authentik's JWKS endpoint and signs the outpost tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.authentik import AUDIENCE, ISSUER, JwksServer, SigningKey, claims
from tests.conftest import tool_environ
from tests.e2e.served import SECRET, Served, http
from tests.helpers import ConfigRepo


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.rsa("authentik-e2e")


@pytest.fixture
def served(tmp_path: Path, repo: ConfigRepo, key: SigningKey) -> Iterator[tuple[Served, JwksServer]]:
    repo.write("README.md", "no stacks yet\n")
    repo.commit("empty")
    authentik = JwksServer(key)
    # tool_environ opens the API for other tests; with identity configured that flag is ignored
    env = tool_environ(tmp_path, None, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                       DEPLOYER_POLL_INTERVAL="0", DEPLOYER_TRUSTED_PROXIES="127.0.0.1/32",
                       DEPLOYER_AUTHENTIK_JWKS_URL=authentik.url, DEPLOYER_AUTHENTIK_ISSUER=ISSUER,
                       DEPLOYER_AUTHENTIK_AUDIENCE=AUDIENCE, DEPLOYER_DEPLOY_GROUPS="deployers",
                       DEPLOYER_VIEW_GROUPS="viewers")  # fmt: skip
    running = Served(env, log=tmp_path / "serve.log")
    try:
        yield running, authentik
    finally:
        running.stop()
        authentik.close()


def outpost(key: SigningKey, username: str, groups: str) -> dict[str, str]:
    return {"X-authentik-username": username, "X-authentik-groups": groups,
            "X-authentik-jwt": key.sign(claims(username, tuple(groups.split("|"))))}  # fmt: skip


def test_the_served_api_believes_only_verified_identities(served: tuple[Served, JwksServer], key: SigningKey) -> None:
    service, authentik = served
    base = service.base
    spoofed = {"X-authentik-username": "admin", "X-authentik-groups": "deployers"}
    status, answer = http("GET", f"{base}/api/deployments", headers=spoofed)
    assert status == 401 and answer["error"] == "unauthenticated", answer

    status, answer = http("GET", f"{base}/api/deployments", headers=outpost(key, "victor", "viewers"))
    assert (status, answer) == (200, [])
    bearer = {"Authorization": f"Bearer {key.sign(claims('ak-ci', ('deployers',)))}"}
    assert http("GET", f"{base}/api/stacks", headers=bearer)[0] == 200

    body = b'{"reason": "rotate the token"}'
    viewer = {**outpost(key, "victor", "viewers"), "Content-Type": "application/json"}
    status, answer = http("POST", f"{base}/api/deployments", body=body, headers=viewer)
    assert status == 403 and answer["error"] == "forbidden", answer
    [refused] = [event for event in service.audit() if event["event"] == "request.refused"]
    assert (refused["actor"], refused["peer"], refused["path"]) == ("victor", "127.0.0.1", "/api/deployments")
    assert http("GET", f"{base}/api/deployments", headers=outpost(key, "victor", "viewers"))[1] == []

    assert 1 <= authentik.fetches <= 2  # one per web worker that answered a token, then cached
    assert "DEPLOYER_INSECURE_OPEN_API ignored" in service.log()

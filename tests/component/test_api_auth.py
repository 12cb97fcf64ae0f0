"""Identity and groups on /api through the Flask app, with a JWKS served over HTTP.

tests/authentik.py's JwksServer is a stand-in for Authentik's JWKS endpoint (the real Authentik cannot
run here): the deployer fetches the keys from it over HTTP as it would from
`https://<authentik>/application/o/<slug>/jwks/`. The test client sets REMOTE_ADDR per request, so the
trusted proxy (Traefik) and an outsider on the same network are told apart as gunicorn tells them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, jsonify
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from deployer.settings import Settings
from deployer.web.app import create_app
from tests.authentik import AUDIENCE, ISSUER, JwksServer, SigningKey, claims
from tests.deliveries import push_payload, sign
from tests.helpers import audit_trail

SECRET = "hook-secret-value"
PROXY = "10.0.0.2"
OUTSIDER = "10.0.9.9"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.rsa("authentik-1")


@pytest.fixture
def authentik(key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer(key)
    yield server
    server.close()


def configured(tmp_path: Path, **changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "webhook_secret": SECRET, "state_dir": tmp_path / "state", "trusted_proxies": (ip_network(f"{PROXY}/32"),),
        "authentik_issuer": ISSUER, "authentik_audience": AUDIENCE,
        "deploy_groups": ("deployers",), "view_groups": ("viewers", "auditors"),
    }  # fmt: skip
    return Settings(**{**fields, **changes})


def with_probe(app: Flask) -> FlaskClient:
    """A write route that does nothing but say who the gate let through (the real ones queue deployments)."""

    def probe() -> Any:
        return jsonify(username=g.identity.username, groups=sorted(g.identity.groups), via=g.identity.via)

    app.add_url_rule("/api/probe", "probe", probe, methods=["GET", "POST", "DELETE"])
    return app.test_client()


@pytest.fixture
def client(tmp_path: Path, authentik: JwksServer) -> FlaskClient:
    return with_probe(create_app(configured(tmp_path, authentik_jwks_url=authentik.url)))


def outpost(key: SigningKey, username: str, *groups: str) -> dict[str, str]:
    """What Traefik hands on after Authentik's outpost let a browser session through."""
    token = key.sign(claims(username, groups))
    return {"X-authentik-username": username, "X-authentik-groups": "|".join(groups),
            "X-authentik-email": f"{username}@example.org", "X-authentik-jwt": token}  # fmt: skip


def call(client: FlaskClient, method: str, path: str, headers: dict[str, str], peer: str = PROXY) -> TestResponse:
    return client.open(path, method=method, headers=headers, json={} if method == "POST" else None,
                       environ_base={"REMOTE_ADDR": peer})  # fmt: skip


def refusals(tmp_path: Path) -> list[dict[str, Any]]:
    return [event for event in audit_trail(tmp_path / "state") if event["event"] == "request.refused"]


@pytest.mark.parametrize(
    ("who", "get", "post"),
    [("deployer", 200, 200), ("viewer", 200, 403), ("auditor", 200, 403), ("no group", 403, 403), ("nobody", 401, 401),
     ("spoofed from outside", 401, 401), ("spoofed from outside with a viewer's bearer", 200, 403),
     ("machine deployer", 200, 200), ("forged token", 401, 401)],
)  # fmt: skip
def test_who_may_read_and_who_may_deploy(
    client: FlaskClient, key: SigningKey, tmp_path: Path, who: str, get: int, post: int
) -> None:
    forger = SigningKey.rsa(key.kid)
    headers, peer = {
        "deployer": (outpost(key, "dora", "deployers"), PROXY),
        "viewer": (outpost(key, "victor", "viewers"), PROXY),
        "auditor": (outpost(key, "aude", "auditors", "staff"), PROXY),
        "no group": (outpost(key, "nina", "staff"), PROXY),
        "nobody": ({}, PROXY),
        "spoofed from outside": ({"X-authentik-username": "admin", "X-authentik-groups": "deployers",
                                  "X-Forwarded-For": PROXY}, OUTSIDER),
        "spoofed from outside with a viewer's bearer": (
            {"X-authentik-username": "admin", "X-authentik-groups": "deployers",
             "Authorization": f"Bearer {key.sign(claims('victor', ('viewers',)))}"}, OUTSIDER),
        "machine deployer": ({"Authorization": f"Bearer {key.sign(claims('ak-ci', ('deployers',)))}"}, OUTSIDER),
        "forged token": (outpost(forger, "dora", "deployers"), PROXY),
    }[who]  # fmt: skip
    for path in ("/api/deployments", "/api/stacks", "/api/probe"):
        answer = call(client, "GET", path, headers, peer)
        assert answer.status_code == get, (path, answer.get_json())
    answer = call(client, "POST", "/api/probe", headers, peer)
    assert answer.status_code == post, answer.get_json()
    if post == 401:
        assert answer.get_json()["error"] == "unauthenticated"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    elif post == 403:
        assert answer.get_json()["error"] == "forbidden"
    else:
        assert answer.get_json()["groups"] == ["deployers"]
    assert len(refusals(tmp_path)) == (post != 200)  # only the refused write is audited, not the reads


def test_the_gate_names_the_caller_for_the_handlers(client: FlaskClient, key: SigningKey) -> None:
    answer = call(client, "POST", "/api/probe", outpost(key, "dora", "deployers", "ops team"))
    assert answer.get_json() == {"username": "dora", "groups": ["deployers", "ops team"], "via": "headers"}


def test_a_refused_deploy_is_audited_naming_who_tried(client: FlaskClient, key: SigningKey, tmp_path: Path) -> None:
    assert call(client, "POST", "/api/deployments", outpost(key, "victor", "viewers")).status_code == 403
    spoofed = {"X-authentik-username": "mallory", "X-authentik-groups": "deployers"}
    assert call(client, "POST", "/api/deployments", spoofed, OUTSIDER).status_code == 401
    assert call(client, "DELETE", "/api/probe", {}, OUTSIDER).status_code == 401
    viewer, outsider, anonymous = refusals(tmp_path)
    assert viewer["actor"] == "victor" and viewer["via"] == "headers" and viewer["peer"] == PROXY
    assert viewer["path"] == "/api/deployments" and viewer["reason"].startswith("forbidden: victor is in none")
    assert viewer["deployment_id"] is None and viewer["commit"] is None
    assert "actor" not in outsider and outsider["claimed_user"] == "mallory" and outsider["peer"] == OUTSIDER
    assert outsider["reason"].startswith("unauthenticated: no identity")
    assert anonymous["method"] == "DELETE" and "claimed_user" not in anonymous
    deployments = call(client, "GET", "/api/deployments", outpost(key, "dora", "deployers"))
    assert deployments.get_json() == []  # nothing was queued


def test_headers_that_contradict_the_token_are_refused(client: FlaskClient, key: SigningKey, tmp_path: Path) -> None:
    headers = {**outpost(key, "victor", "viewers"), "X-authentik-username": "dora"}
    answer = call(client, "POST", "/api/probe", headers)
    assert answer.status_code == 401 and "not the token's user" in answer.get_json()["message"]
    headers = {**outpost(key, "victor", "viewers"), "X-authentik-groups": "viewers|deployers"}
    assert call(client, "POST", "/api/probe", headers).status_code == 401
    assert [e["claimed_user"] for e in refusals(tmp_path)] == ["dora", "victor"]


def test_a_write_started_by_another_site_is_refused(client: FlaskClient, key: SigningKey) -> None:
    """A browser signed in to Authentik must not be made to deploy by a page elsewhere (no CSRF on /api)."""
    headers = {**outpost(key, "dora", "deployers"), "Sec-Fetch-Site": "cross-site"}
    answer = call(client, "POST", "/api/probe", headers)
    assert answer.status_code == 403 and "another site" in answer.get_json()["message"]
    assert call(client, "GET", "/api/probe", headers).status_code == 200
    same_origin = {**outpost(key, "dora", "deployers"), "Sec-Fetch-Site": "same-origin"}
    assert call(client, "POST", "/api/probe", same_origin).status_code == 200


def test_the_key_set_is_fetched_once_and_kept(client: FlaskClient, key: SigningKey, authentik: JwksServer) -> None:
    for _ in range(10):
        assert call(client, "GET", "/api/stacks", outpost(key, "victor", "viewers")).status_code == 200
    assert authentik.fetches == 1 and authentik.paths == [JwksServer.PATH]


def test_a_key_set_that_redirects_elsewhere_is_not_followed(tmp_path: Path, key: SigningKey) -> None:
    real, redirecting = JwksServer(key), JwksServer()
    redirecting.redirect_to = real.url
    try:
        client = create_app(configured(tmp_path, authentik_jwks_url=redirecting.url)).test_client()
        answer = call(client, "GET", "/api/stacks", outpost(key, "victor", "viewers"))
        assert answer.status_code == 503 and answer.get_json()["error"] == "identity_unavailable"
        assert real.fetches == 0
    finally:
        real.close()
        redirecting.close()


def test_the_webhook_and_health_routes_ignore_authentik_headers(client: FlaskClient, key: SigningKey) -> None:
    spoofed = {"X-authentik-username": "admin", "X-authentik-groups": "deployers", "X-authentik-jwt": "garbage",
               "Authorization": "Bearer garbage", "X-authentik-meta-jwks": "http://127.0.0.1:9/attacker"}  # fmt: skip
    delivery = sign("gitea", push_payload("gitea", after="a" * 40), SECRET)
    for peer in (OUTSIDER, PROXY):
        answer = client.post("/webhook", data=delivery.body, headers={**delivery.headers, **spoofed},
                             environ_base={"REMOTE_ADDR": peer})  # fmt: skip
        assert answer.status_code in (200, 202), answer.get_json()  # queued, then a duplicate: never a 401
    # a deployer's identity is no signature
    identified = {"X-Gitea-Event": "push", **outpost(key, "dora", "deployers")}
    unsigned = client.post("/webhook", data=delivery.body, headers=identified, environ_base={"REMOTE_ADDR": PROXY})
    assert unsigned.status_code == 401 and unsigned.get_json()["error"] == "signature_invalid"
    for path in ("/healthz", "/readyz"):
        assert call(client, "GET", path, spoofed, OUTSIDER).status_code in (200, 503)


def test_headers_alone_are_the_identity_without_a_key_set(tmp_path: Path) -> None:
    client = with_probe(create_app(configured(tmp_path)))
    headers = {"X-authentik-username": "dora", "X-authentik-groups": "deployers"}
    assert call(client, "POST", "/api/probe", headers).get_json()["via"] == "headers"
    assert call(client, "POST", "/api/probe", headers, OUTSIDER).status_code == 401


def test_with_no_identity_configured_the_api_is_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deployer.web"):
        client = create_app(Settings(webhook_secret=SECRET, state_dir=tmp_path / "state")).test_client()
    assert "/api and the pages are closed" in caplog.text
    answer = client.get("/api/stacks", headers={"X-authentik-username": "dora", "X-authentik-groups": "deployers"})
    assert answer.status_code == 401
    assert "DEPLOYER_TRUSTED_PROXIES" in answer.get_json()["message"]
    assert "DEPLOYER_INSECURE_OPEN_API" in answer.get_json()["message"]
    assert client.get("/healthz").status_code == 200
    assert client.get("/nowhere").status_code == 401  # a route not listed as public is closed too


def test_insecure_open_mode_lets_everyone_deploy_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deployer.web"):
        client = with_probe(create_app(Settings(state_dir=tmp_path / "state", insecure_open_api=True)))
    [warning] = [r for r in caplog.records if "DEPLOYER_INSECURE_OPEN_API" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "anonymous deployer" in warning.getMessage()
    answer = client.post("/api/probe", headers={"X-authentik-username": "admin"}, json={})
    assert answer.get_json() == {"username": "anonymous", "groups": [], "via": "open"}
    assert client.post("/api/probe", headers={"Sec-Fetch-Site": "cross-site"}, json={}).status_code == 403


def test_the_open_flag_is_ignored_once_identity_is_configured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deployer.web"):
        client = create_app(configured(tmp_path, insecure_open_api=True)).test_client()
    assert "DEPLOYER_INSECURE_OPEN_API ignored" in caplog.text
    assert call(client, "GET", "/api/stacks", {}).status_code == 401

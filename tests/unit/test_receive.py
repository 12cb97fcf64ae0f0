"""Receiving a webhook as tables: which forge sent it, whether it is authentic, and what it asks for.

Deliveries come from tests/deliveries.py, shaped and signed as each forge documents
(../shared/reference/protocols.md sections 0 and 1).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from deployer.errors import EventError, SignatureError
from deployer.receive.events import Ignored, PushEvent, parse_delivery, signed_bytes
from deployer.receive.forges import Forge, HeaderMap, detect_forge
from deployer.receive.signature import verify_signature
from tests.deliveries import FORGES, ZERO, Delivery, push_payload, sign

SECRET = "s3cret-value"
BEFORE = "1" * 40
AFTER = "2" * 40
OTHER = "3" * 40
ZERO64 = "0" * 64

SIGNATURE_NAMES = ("X-Forgejo-Signature", "X-Gitea-Signature", "X-Gogs-Signature", "X-Hub-Signature-256",
                   "X-Hub-Signature", "X-Gitlab-Token")  # fmt: skip


def delivery(forge: str, *, form: bool = False, event: str | None = None, secret: str = SECRET,
             payload: dict[str, Any] | bytes | None = None, **fields: Any) -> Delivery:  # fmt: skip
    """A signed delivery of a push to main (or of `payload`), optionally with some payload fields replaced."""
    if payload is None:
        payload = push_payload(forge, after=AFTER, before=BEFORE) | fields
    return sign(forge, payload, secret, event=event, form=form, delivery_id="d-1")


def with_headers(original: Delivery, **changes: str | None) -> Delivery:
    """The delivery with headers replaced (None removes one); `X_Foo_Bar` means `X-Foo-Bar`."""
    headers = dict(original.headers)
    for key, value in changes.items():
        name = key.replace("_", "-")
        headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
        if value is not None:
            headers[name] = value
    return Delivery(headers, original.body)


def without_signatures(original: Delivery) -> Delivery:
    return Delivery({k: v for k, v in original.headers.items() if k not in SIGNATURE_NAMES}, original.body)


def verify(forge: str, d: Delivery, secret: str | None = SECRET, signed: bytes | None = None) -> None:
    """Verify `d` the way the webhook does: over signed_bytes() unless `signed` is given."""
    data = signed_bytes(Forge(forge), d.headers, d.body) if signed is None else signed
    verify_signature(Forge(forge), signed=data, headers=d.headers, secret=secret)


def parse(forge: str, d: Delivery, *, branch: str = "main", object_format: str | None = None) -> PushEvent | Ignored:
    signed = signed_bytes(Forge(forge), d.headers, d.body)
    return parse_delivery(Forge(forge), d.headers, signed, branch=branch, object_format=object_format)


def hex_mac(data: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


# detect_forge ------------------------------------------------------------------------------------------------


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def uppered(headers: dict[str, str]) -> dict[str, str]:
    return {k.upper(): v for k, v in headers.items()}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(delivery("github").headers, Forge.GITHUB, id="github"),
        pytest.param(delivery("gitea").headers, Forge.GITEA, id="gitea-over-its-github-headers"),
        pytest.param(delivery("forgejo").headers, Forge.FORGEJO, id="forgejo-over-its-gitea-and-github-headers"),
        pytest.param(delivery("gitlab").headers, Forge.GITLAB, id="gitlab"),
        pytest.param(lowered(delivery("forgejo").headers), Forge.FORGEJO, id="forgejo-lowercase-names"),
        pytest.param(uppered(delivery("gitea").headers), Forge.GITEA, id="gitea-uppercase-names"),
        pytest.param(lowered(delivery("gitlab").headers), Forge.GITLAB, id="gitlab-lowercase-names"),
        pytest.param({"x-github-event": "ping"}, Forge.GITHUB, id="github-event-only"),
        pytest.param({"X-Hub-Signature-256": "sha256=00"}, Forge.GITHUB, id="github-signature-only"),
        pytest.param(
            {"X-Gitea-Signature": "00", "X-Hub-Signature-256": "sha256=00"}, Forge.GITEA, id="gitea-signature-only"
        ),
        pytest.param(
            {"X-Forgejo-Signature": "00", "X-Gitea-Event": "push", "X-GitHub-Event": "push"},
            Forge.FORGEJO,
            id="forgejo-signature-only",
        ),
        pytest.param({"X-Gitlab-Token": "t"}, Forge.GITLAB, id="gitlab-token-only"),
        pytest.param(
            HeaderMap([("X-Gitea-Event", "push"), ("X-GitHub-Event", "push")]), Forge.GITEA, id="headermap-of-pairs"
        ),
        # failures
        pytest.param({}, None, id="no-headers"),
        pytest.param({"Content-Type": "application/json", "User-Agent": "curl/8"}, None, id="plain-request"),
        pytest.param({"X-Event-Key": "repo:push", "X-Hub-Signature": "sha256=00"}, None, id="bitbucket"),
        pytest.param({"X-Gogs-Event": "push", "X-Gogs-Signature": "00"}, None, id="gogs-alone"),
        pytest.param({"X-Hub-Signature": "sha1=00"}, None, id="legacy-sha1-signature-only"),
        pytest.param({"X-GitHub-Event-Type": "push"}, None, id="lookalike-header-name"),
    ],
)
def test_detect_forge(headers: dict[str, str], expected: Forge | None) -> None:
    assert detect_forge(headers) == expected


def test_headermap_is_case_insensitive_and_keeps_the_first_repeat() -> None:
    headers = HeaderMap([("X-Gitea-Signature", "first"), ("x-gitea-signature", "second"), ("Content-Type", "a/b")])
    assert headers["X-GITEA-SIGNATURE"] == "first"
    assert "content-type" in headers
    assert "X-Forgejo-Signature" not in headers
    assert len(headers) == 2
    assert HeaderMap.of(headers) is headers


def test_headermap_from_a_wsgi_environ_reads_http_keys_and_the_content_fields() -> None:
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/webhook", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "12",
        "HTTP_X_GITHUB_EVENT": "push", "HTTP_X_HUB_SIGNATURE_256": "sha256=ab", "wsgi.input": object(),
    }  # fmt: skip
    headers = HeaderMap.from_environ(environ)
    assert dict(headers) == {"x-github-event": "push", "x-hub-signature-256": "sha256=ab",
                             "content-type": "application/json", "content-length": "12"}  # fmt: skip
    assert headers["X-GitHub-Event"] == "push"
    assert detect_forge(headers) is Forge.GITHUB


#: every forge with every body it can send: JSON, and a form-encoded `payload` where the forge offers one
EVERY_SHAPE = [
    pytest.param("github", False, id="github-json"),
    pytest.param("github", True, id="github-form"),
    pytest.param("gitea", False, id="gitea-json"),
    pytest.param("gitea", True, id="gitea-form"),
    pytest.param("forgejo", False, id="forgejo-json"),
    pytest.param("forgejo", True, id="forgejo-form"),
    pytest.param("gitlab", False, id="gitlab-json"),
]


# verify_signature --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forge", "form"),
    EVERY_SHAPE,
)
def test_verify_signature_accepts_a_genuine_delivery(forge: str, form: bool) -> None:
    verify(forge, delivery(forge, form=form))


def test_gitlab_token_does_not_cover_the_body() -> None:
    genuine = delivery("gitlab")
    verify("gitlab", genuine, signed=genuine.body.replace(AFTER.encode(), OTHER.encode()))


def test_forgejo_falls_back_to_the_next_signature_header_only_when_absent() -> None:
    genuine = delivery("forgejo")
    verify("forgejo", with_headers(genuine, X_Forgejo_Signature=None))
    verify("forgejo", with_headers(genuine, X_Forgejo_Signature=None, X_Gitea_Signature=None))


def tampered(forge: str) -> Callable[[], None]:
    def check() -> None:
        genuine = delivery(forge)
        verify(forge, Delivery(genuine.headers, genuine.body.replace(AFTER.encode(), OTHER.encode())))

    return check


def wrong_secret(forge: str, form: bool = False) -> Callable[[], None]:
    return lambda: verify(forge, delivery(forge, form=form), secret="another-secret")


def unsigned(forge: str) -> Callable[[], None]:
    return lambda: verify(forge, without_signatures(delivery(forge)))


def no_secret(forge: str, secret: str | None) -> Callable[[], None]:
    """Signed with the empty key, checked with no secret configured: must still fail."""
    return lambda: verify(forge, delivery(forge, secret=""), secret=secret)


def form_verified_over_raw_body(forge: str) -> Callable[[], None]:
    """Gitea/Forgejo sign the decoded payload field: the bytes on the wire are the wrong input."""
    genuine = delivery(forge, form=True)
    return lambda: verify(forge, genuine, signed=genuine.body)


def form_signed_over_raw_body(forge: str) -> Callable[[], None]:
    """A Gitea/Forgejo form delivery whose signatures were (wrongly) computed over the url-encoded body."""

    def check() -> None:
        genuine = delivery(forge, form=True)
        mac = hex_mac(genuine.body)
        changes = {"X_Gitea_Signature": mac, "X_Hub_Signature_256": f"sha256={mac}"}
        if forge == "forgejo":
            changes["X_Forgejo_Signature"] = mac
        verify(forge, with_headers(genuine, **changes))

    return check


def github_form_verified_over_payload() -> None:
    """GitHub signs the raw body of a form hook, not the JSON inside it."""
    genuine = delivery("github", form=True)
    payload = urllib.parse.parse_qs(genuine.body.decode())["payload"][0].encode()
    verify("github", genuine, signed=payload)


def bad_specific_good_generic(forge: str, header: str) -> Callable[[], None]:
    """A bad most-specific signature is not rescued by the good, less specific ones also present."""
    return lambda: verify(forge, with_headers(delivery(forge), **{header: hex_mac(b"something else")}))


def gitlab_token(token: str) -> Callable[[], None]:
    return lambda: verify("gitlab", with_headers(delivery("gitlab"), X_Gitlab_Token=token))


def hub_header(value: str) -> Callable[[], None]:
    return lambda: verify("github", with_headers(delivery("github"), X_Hub_Signature_256=value))


@pytest.mark.parametrize(
    "attempt",
    [
        # failures
        *(pytest.param(wrong_secret(f), id=f"{f}-wrong-secret") for f in FORGES),
        pytest.param(wrong_secret("github", form=True), id="github-form-wrong-secret"),
        pytest.param(wrong_secret("gitea", form=True), id="gitea-form-wrong-secret"),
        *(pytest.param(tampered(f), id=f"{f}-tampered-body") for f in ("github", "gitea", "forgejo")),
        *(pytest.param(unsigned(f), id=f"{f}-missing-signature") for f in FORGES),
        *(pytest.param(no_secret(f, None), id=f"{f}-secret-none") for f in FORGES),
        *(pytest.param(no_secret(f, ""), id=f"{f}-secret-empty") for f in FORGES),
        pytest.param(form_verified_over_raw_body("gitea"), id="gitea-form-over-raw-body"),
        pytest.param(form_verified_over_raw_body("forgejo"), id="forgejo-form-over-raw-body"),
        pytest.param(form_signed_over_raw_body("gitea"), id="gitea-form-signed-over-raw-body"),
        pytest.param(form_signed_over_raw_body("forgejo"), id="forgejo-form-signed-over-raw-body"),
        pytest.param(github_form_verified_over_payload, id="github-form-over-decoded-payload"),
        pytest.param(bad_specific_good_generic("forgejo", "X_Forgejo_Signature"), id="forgejo-bad-forgejo-good-hub"),
        pytest.param(bad_specific_good_generic("gitea", "X_Gitea_Signature"), id="gitea-bad-gitea-good-hub"),
        pytest.param(
            lambda: verify(
                "forgejo", with_headers(delivery("forgejo"), X_Forgejo_Signature=None, X_Gitea_Signature="00" * 32)
            ),
            id="forgejo-bad-gitea-good-hub",
        ),
        pytest.param(gitlab_token(SECRET.upper()), id="gitlab-token-other-case"),
        pytest.param(gitlab_token(SECRET[:-1]), id="gitlab-token-prefix"),
        pytest.param(gitlab_token(SECRET + "x"), id="gitlab-token-longer"),
        pytest.param(gitlab_token(f"Bearer {SECRET}"), id="gitlab-token-with-scheme"),
        pytest.param(gitlab_token(hex_mac(delivery("gitlab").body)), id="gitlab-token-is-an-hmac"),
        pytest.param(hub_header(hex_mac(delivery("github").body)), id="github-signature-without-prefix"),
        pytest.param(hub_header("sha1=" + hex_mac(delivery("github").body)), id="github-signature-wrong-prefix"),
        pytest.param(
            lambda: verify(
                "github", with_headers(without_signatures(delivery("github")), X_Hub_Signature="sha1=" + "0" * 40)
            ),
            id="github-legacy-sha1-only",
        ),
    ],
)
def test_verify_signature_fails_closed(attempt: Callable[[], None]) -> None:
    with pytest.raises(SignatureError):
        attempt()


# signed_bytes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forge", "form", "content_type"),
    [
        pytest.param("github", False, "application/json", id="github-json"),
        pytest.param("gitea", False, "application/json", id="gitea-json"),
        pytest.param("forgejo", False, "application/json", id="forgejo-json"),
        pytest.param("gitlab", False, "application/json", id="gitlab-json"),
        pytest.param("gitea", False, "application/json; charset=utf-8", id="json-with-charset"),
        pytest.param("github", False, "Application/JSON", id="json-any-case"),
        pytest.param("github", True, "application/x-www-form-urlencoded", id="github-form-raw-body"),
    ],
)
def test_signed_bytes_is_the_raw_body(forge: str, form: bool, content_type: str) -> None:
    d = with_headers(delivery(forge, form=form), Content_Type=content_type)
    assert signed_bytes(Forge(forge), d.headers, d.body) == d.body


@pytest.mark.parametrize("forge", ["gitea", "forgejo"])
def test_signed_bytes_of_a_gitea_form_hook_is_the_decoded_payload(forge: str) -> None:
    payload = push_payload(forge, after=AFTER) | {"note": "a+b & c=d, ü"}
    text = json.dumps(payload, indent=2).encode()
    d = sign(forge, payload, SECRET, form=True)
    assert d.body != text
    assert signed_bytes(Forge(forge), d.headers, d.body) == text
    assert signed_bytes(Forge(forge), lowered(d.headers), d.body) == text


@pytest.mark.parametrize(
    ("forge", "content_type", "body"),
    [
        # failures
        pytest.param("github", "text/plain", b"{}", id="text-plain"),
        pytest.param("gitlab", "multipart/form-data; boundary=x", b"{}", id="multipart"),
        pytest.param("gitea", None, b"{}", id="no-content-type"),
        pytest.param("forgejo", "", b"{}", id="empty-content-type"),
        pytest.param("gitea", "application/x-www-form-urlencoded", b"other=1", id="gitea-form-without-payload"),
        pytest.param("forgejo", "application/x-www-form-urlencoded", b"", id="forgejo-form-empty"),
        pytest.param("gitea", "application/x-www-form-urlencoded", b"payload=", id="gitea-form-blank-payload"),
        pytest.param(
            "gitea", "application/x-www-form-urlencoded", b"payload=a&payload=b", id="gitea-form-two-payloads"
        ),
        pytest.param("forgejo", "application/x-www-form-urlencoded", b"payload=\xff", id="forgejo-form-not-utf8"),
    ],
)
def test_signed_bytes_refuses(forge: str, content_type: str | None, body: bytes) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    with pytest.raises(EventError):
        signed_bytes(Forge(forge), headers, body)


# parse_delivery: pushes to deploy ----------------------------------------------------------------------------


def distinct_delivery_ids(forge: str, d: Delivery) -> Delivery:
    """Give every delivery-id header its own value, so the test shows which one is read."""
    if forge == "gitlab":
        return with_headers(d, Idempotency_Key="d-1", X_Gitlab_Event_UUID="event-uuid", X_Gitlab_Webhook_UUID="hook")
    if forge == "forgejo":
        return with_headers(d, X_Forgejo_Delivery="d-1", X_Gitea_Delivery="gitea-id", X_GitHub_Delivery="github-id")
    if forge == "gitea":
        return with_headers(d, X_Gitea_Delivery="d-1", X_GitHub_Delivery="github-id")
    return d


API = {
    "github": "https://api.github.com",
    "gitea": "https://git.example/api/v1",
    "forgejo": "https://git.example/api/v1",
    "gitlab": "https://git.example/api/v4",
}


@pytest.mark.parametrize(
    ("forge", "form"),
    EVERY_SHAPE,
)
def test_parse_delivery_push_to_main(forge: str, form: bool) -> None:
    d = distinct_delivery_ids(forge, delivery(forge, form=form))
    assert parse(forge, d) == PushEvent(
        forge=Forge(forge),
        delivery_id="d-1",
        ref="refs/heads/main",
        before=BEFORE,
        after=AFTER,
        repo="ops/config",
        api_url=API[forge],
        actor="op",
    )


@pytest.mark.parametrize("forge", FORGES)
def test_parse_delivery_reads_headers_in_any_case(forge: str) -> None:
    d = distinct_delivery_ids(forge, delivery(forge))
    event = parse(forge, Delivery(lowered(d.headers), d.body))
    assert isinstance(event, PushEvent)
    assert (event.after, event.delivery_id) == (AFTER, "d-1")


def github_repository(url: str | None, *, statuses_url: str | None = None) -> dict[str, Any]:
    """A GitHub repository object with `url` (and `statuses_url`) replaced, or removed when None."""
    repository = dict(push_payload("github", after=AFTER)["repository"])
    for key, value in (("url", url), ("statuses_url", statuses_url)):
        if value is None:
            del repository[key]
        else:
            repository[key] = value
    return repository


@pytest.mark.parametrize(
    ("forge", "fields", "api_url"),
    [
        pytest.param(
            "github",
            {"repository": github_repository("https://ghe.example/api/v3/repos/ops/config")},
            "https://ghe.example/api/v3",
            id="github-enterprise-api-url",
        ),
        pytest.param(
            "github",
            {
                "repository": github_repository(
                    "https://ghe.example/ops/config",
                    statuses_url="https://ghe.example/api/v3/repos/ops/config/statuses/{sha}",
                )
            },
            "https://ghe.example/api/v3",
            id="github-enterprise-web-url",
        ),
        pytest.param("github", {"repository": github_repository(None)}, "https://api.github.com", id="github-no-url"),
        pytest.param(
            "gitea",
            push_payload("gitea", after=AFTER, base_url="https://host.example/git"),
            "https://host.example/git/api/v1",
            id="gitea-under-a-path",
        ),
        pytest.param(
            "forgejo",
            push_payload("forgejo", after=AFTER, base_url="http://forgejo:3000"),
            "http://forgejo:3000/api/v1",
            id="forgejo-with-port",
        ),
        pytest.param(
            "gitlab",
            push_payload("gitlab", after=AFTER, base_url="https://host.example/gitlab"),
            "https://host.example/gitlab/api/v4",
            id="gitlab-under-a-path",
        ),
    ],
)
def test_parse_delivery_derives_the_api_url(forge: str, fields: dict[str, Any], api_url: str) -> None:
    event = parse(forge, delivery(forge, **fields))
    assert isinstance(event, PushEvent)
    assert event.api_url == api_url


def test_parse_delivery_deploys_the_configured_branch() -> None:
    event = parse("gitea", delivery("gitea", payload=push_payload("gitea", after=AFTER, branch="prod")), branch="prod")
    assert isinstance(event, PushEvent)
    assert event.ref == "refs/heads/prod"


def test_parse_delivery_without_a_delivery_id() -> None:
    d = with_headers(delivery("gitlab"), Idempotency_Key=None, X_Gitlab_Event_UUID=None, X_Gitlab_Webhook_UUID=None)
    event = parse("gitlab", d)
    assert isinstance(event, PushEvent)
    assert event.delivery_id is None


def test_parse_delivery_gitlab_falls_back_to_the_event_uuid() -> None:
    d = with_headers(delivery("gitlab"), Idempotency_Key=None, X_Gitlab_Event_UUID="event-uuid")
    event = parse("gitlab", d)
    assert isinstance(event, PushEvent)
    assert event.delivery_id == "event-uuid"


# parse_delivery: deliveries to ignore (answered 200, never 4xx) -------------------------------------------------


def pushed(forge: str, *, after: str = AFTER, before: str = BEFORE, branch: str = "main", **fields: Any) -> Delivery:
    return delivery(forge, payload=push_payload(forge, after=after, before=before, branch=branch) | fields)


PING = {"zen": "Speak like a human.", "hook_id": 1, "hook": {"type": "Repository", "events": ["push"]}}


@pytest.mark.parametrize(
    ("forge", "d", "reason"),
    [
        pytest.param("github", delivery("github", event="ping", payload=PING), "ping", id="github-ping"),
        pytest.param(
            "github", delivery("github", event="ping", payload=PING, form=True), "ping", id="github-form-ping"
        ),
        pytest.param("github", delivery("github", event="create"), "create", id="github-create"),
        pytest.param("github", delivery("github", event="delete"), "delete", id="github-delete"),
        pytest.param("github", delivery("github", event="issues"), "issues", id="github-issues"),
        pytest.param("gitea", delivery("gitea", event="create"), "create", id="gitea-create"),
        pytest.param("gitea", delivery("gitea", event="delete"), "delete", id="gitea-delete"),
        pytest.param("forgejo", delivery("forgejo", event="issues"), "issues", id="forgejo-issues"),
        pytest.param("gitlab", delivery("gitlab", event="Note Hook"), "Note Hook", id="gitlab-note"),
        pytest.param(
            "gitlab",
            delivery(
                "gitlab", event="Tag Push Hook", payload=push_payload("gitlab", after=AFTER, branch="refs/tags/v1")
            ),
            "Tag Push Hook",
            id="gitlab-tag-push-hook",
        ),
        *(pytest.param(f, pushed(f, branch="refs/tags/v1"), "refs/tags/v1", id=f"{f}-tag") for f in FORGES),
        *(pytest.param(f, pushed(f, branch="dev"), "dev", id=f"{f}-other-branch") for f in FORGES),
        pytest.param("github", pushed("github", branch="main-old"), "main-old", id="github-branch-with-main-prefix"),
        pytest.param(
            "gitea", pushed("gitea", branch="refs/heads/feature/main"), "feature/main", id="gitea-branch-ending-in-main"
        ),
        pytest.param("github", pushed("github", after=ZERO), "branch deletion", id="github-deleted"),
        pytest.param("github", pushed("github", deleted=True), "branch deletion", id="github-deleted-flag"),
        pytest.param("gitea", pushed("gitea", after=ZERO), "branch deletion", id="gitea-zero-after"),
        pytest.param("forgejo", pushed("forgejo", after=ZERO), "branch deletion", id="forgejo-zero-after"),
        pytest.param("gitlab", pushed("gitlab", after=ZERO), "branch deletion", id="gitlab-zero-after"),
        pytest.param("gitlab", pushed("gitlab", after=ZERO64), "branch deletion", id="gitlab-zero-after-sha256"),
        pytest.param("gitea", pushed("gitea", before=AFTER), "test delivery", id="gitea-test-delivery-old"),
        pytest.param("gitea", pushed("gitea", before=ZERO, after=ZERO), "test delivery", id="gitea-test-delivery-zero"),
        pytest.param(
            "forgejo", pushed("forgejo", before=ZERO, after=ZERO), "test delivery", id="forgejo-test-delivery-zero"
        ),
        pytest.param(
            "forgejo",
            pushed("forgejo", before=ZERO64, after=ZERO64),
            "test delivery",
            id="forgejo-test-delivery-zero-sha256",
        ),
    ],
)
def test_parse_delivery_ignores(forge: str, d: Delivery, reason: str) -> None:
    result = parse(forge, d)
    assert isinstance(result, Ignored)
    assert reason in result.reason
    if reason == "test delivery":
        assert "deletion" not in result.reason


# parse_delivery: unreadable deliveries (answered 400) ---------------------------------------------------------


def raw(forge: str, body: bytes, *, form: bool = False) -> Delivery:
    d = delivery(forge, payload=body)
    if form:
        return with_headers(Delivery(d.headers, body), Content_Type="application/x-www-form-urlencoded")
    return d


def without(forge: str, *keys: str) -> Delivery:
    payload = push_payload(forge, after=AFTER, before=BEFORE)
    return delivery(forge, payload={k: v for k, v in payload.items() if k not in keys})


@pytest.mark.parametrize(
    ("forge", "d"),
    [
        # failures
        *(pytest.param(f, raw(f, b"not json"), id=f"{f}-not-json") for f in FORGES),
        *(pytest.param(f, raw(f, b"[]"), id=f"{f}-json-array") for f in FORGES),
        pytest.param("github", raw("github", b'"refs/heads/main"'), id="github-json-string"),
        pytest.param("gitea", raw("gitea", b"null"), id="gitea-json-null"),
        pytest.param("gitlab", raw("gitlab", b"\xff\xfe{}"), id="gitlab-not-utf8"),
        pytest.param("gitlab", raw("gitlab", b""), id="gitlab-empty-body"),
        pytest.param("github", raw("github", b"zen=1", form=True), id="github-form-without-payload"),
        pytest.param("github", raw("github", b"payload=%5B%5D", form=True), id="github-form-json-array"),
        *(pytest.param(f, without(f, "ref"), id=f"{f}-missing-ref") for f in FORGES),
        *(pytest.param(f, without(f, "after"), id=f"{f}-missing-after") for f in FORGES),
        pytest.param("gitea", pushed("gitea", ref=None), id="gitea-null-ref"),
        pytest.param("forgejo", pushed("forgejo", ref=["refs/heads/main"]), id="forgejo-ref-not-a-string"),
        pytest.param("github", pushed("github", after=None), id="github-null-after"),
        pytest.param("gitlab", pushed("gitlab", after=2), id="gitlab-after-a-number"),
        *(pytest.param(f, pushed(f, after="main"), id=f"{f}-after-a-branch-name") for f in FORGES),
        pytest.param("github", pushed("github", after="2" * 39), id="github-after-39-hex"),
        pytest.param("gitea", pushed("gitea", after="g" * 40), id="gitea-after-not-hex"),
        pytest.param("gitlab", pushed("gitlab", after=""), id="gitlab-after-empty"),
        pytest.param("forgejo", pushed("forgejo", after=AFTER + "\n"), id="forgejo-after-trailing-newline"),
    ],
)
def test_parse_delivery_refuses(forge: str, d: Delivery) -> None:
    with pytest.raises(EventError):
        parse(forge, d)


def mangled(forge: str, path: str, value: Any, *, after: str = AFTER) -> Delivery:
    """A push to main with the field at a dotted `path` set to `value` (objects on the way are created)."""
    payload = push_payload(forge, after=after, before=BEFORE)
    *parents, last = path.split(".")
    container = payload
    for key in parents:
        container = container.setdefault(key, {})
    container[last] = value
    return delivery(forge, payload=payload)


def with_raw(forge: str, key: str, text: str) -> Delivery:
    """A push to main whose top-level `key` holds the JSON text `text`, which Python could not dump itself."""
    body = json.dumps(push_payload(forge, after=AFTER, before=BEFORE) | {key: "@@"}).replace('"@@"', text)
    return delivery(forge, payload=body.encode())


SHA256 = "a" * 64
NON_GITLAB = ("github", "gitea", "forgejo")
GITEA_LIKE = ("gitea", "forgejo")

#: (forge, delivery, object_format, what the message must name): the malformed shapes of the issue, for every forge
MALFORMED = [
    *(
        pytest.param(f, mangled(f, path, value), None, path, id=f"{f}-{path}-{label}")
        for f in FORGES
        for path, value, label in [
            ("repository", "ops/config", "string"),
            ("repository", ["ops/config"], "list"),
            ("repository", 5, "number"),
            ("commits", {"id": AFTER}, "object"),
            ("commits", "x", "string"),
            ("commits", True, "boolean"),
            ("ref", 5, "number"),
            ("before", ["x"], "list"),
        ]
    ),
    *(pytest.param(f, mangled(f, "commits", [{}, 1]), None, "commits[1]", id=f"{f}-commit-a-number") for f in FORGES),
    *(
        pytest.param(f, mangled(f, path, value), None, path, id=f"{f}-{path}-{label}")
        for f in NON_GITLAB
        for path, value, label in [
            ("pusher", "op", "string"),
            ("sender", "op", "string"),
            ("sender", ["op"], "list"),
            ("sender.login", {}, "object"),
            ("sender.username", 7, "number"),
            ("pusher.name", ["op"], "list"),
            ("repository.full_name", 5, "number"),
        ]
    ),
    *(
        pytest.param(f, mangled(f, "repository.html_url", []), None, "repository.html_url", id=f"{f}-html-url-list")
        for f in GITEA_LIKE
    ),
    *(
        pytest.param(f, mangled(f, "repository", "x", after=ZERO), None, "repository", id=f"{f}-deletion-read-in-full")
        for f in NON_GITLAB
    ),
    pytest.param("gitea", mangled("gitea", "sender", 1, after=BEFORE), None, "sender", id="gitea-test-delivery-read"),
    *(
        pytest.param("gitlab", mangled("gitlab", path, value), None, path, id=f"gitlab-{path}-{label}")
        for path, value, label in [
            ("project", "ops/config", "string"),
            ("project", [], "list"),
            ("project", 15, "number"),
            ("project.path_with_namespace", [], "list"),
            ("project.web_url", 5, "number"),
            ("user_username", {}, "object"),
            ("user_name", ["Op"], "list"),
            ("project_id", 0, "zero"),
            ("project_id", -15, "negative"),
            ("project_id", 2**63 + 1, "past-64-bit"),
            ("project_id", 10**90, "huge"),
            ("project_id", True, "boolean"),
            ("project_id", 1.5, "float"),
            ("project_id", "ops", "non-digit-string"),
            ("project_id", {}, "object"),
        ]
    ),
    pytest.param(
        "github",
        mangled("github", "repository.statuses_url", 5),
        None,
        "repository.statuses_url",
        id="github-statuses-url-number",
    ),
    pytest.param("github", mangled("github", "deleted", "yes"), None, "deleted", id="github-deleted-a-string"),
    *(
        pytest.param(
            f, with_raw(f, "commits", "[" * 100_000 + "]" * 100_000), None, "nested too deeply", id=f"{f}-deep-nesting"
        )
        for f in FORGES
    ),
    *(
        pytest.param(
            f,
            with_raw(f, "project_id" if f == "gitlab" else "repository", "9" * 5000),
            None,
            "integer of more than",
            id=f"{f}-5000-digit-number",
        )
        for f in FORGES
    ),
    *(
        pytest.param(f, with_raw(f, "total", "-" + "1" * 101), None, "integer of more than", id=f"{f}-101-digit-number")
        for f in FORGES
    ),
    *(pytest.param(f, pushed(f, after=SHA256), "sha1", "after", id=f"{f}-sha256-after-on-sha1") for f in FORGES),
    *(pytest.param(f, pushed(f, after=AFTER), "sha256", "after", id=f"{f}-sha1-after-on-sha256") for f in FORGES),
    pytest.param("github", pushed("github", after=SHA256), None, "after", id="github-sha256-after"),
    pytest.param("github", pushed("github", after="0" * 64), None, "after", id="github-sha256-zero-after"),
    *(pytest.param(f, pushed(f, before="main"), None, "before", id=f"{f}-before-a-branch-name") for f in FORGES),
    pytest.param("gitlab", pushed("gitlab", before="1" * 41), None, "before", id="gitlab-before-41-hex"),
    pytest.param(
        "gitea", pushed("gitea", before=BEFORE.upper().replace("1", "A")), None, "before", id="gitea-before-uppercase"
    ),
    *(
        pytest.param(
            f,
            mangled(f, "repository.object_format_name", value),
            None,
            "repository.object_format_name",
            id=f"{f}-object-format-name-{label}",
        )
        for f in GITEA_LIKE
        for value, label in [("md5", "unknown"), ("SHA1", "uppercase"), (1, "number"), ([], "list")]
    ),
    *(
        pytest.param(
            f,
            mangled(f, "repository.object_format_name", "sha256"),
            None,
            "after",
            id=f"{f}-sha1-after-on-named-sha256",
        )
        for f in GITEA_LIKE
    ),
]


@pytest.mark.parametrize(("forge", "d", "object_format", "field"), MALFORMED)
def test_parse_delivery_names_the_malformed_field(
    forge: str, d: Delivery, object_format: str | None, field: str
) -> None:
    verify(forge, d)
    with pytest.raises(EventError) as caught:
        parse(forge, d, object_format=object_format)
    message = caught.value.message
    assert field in message
    assert "\n" not in message
    assert len(message) <= 200


@pytest.mark.parametrize(
    ("forge", "d", "object_format"),
    [
        *(pytest.param(f, pushed(f, after=SHA256), "sha256", id=f"{f}-sha256") for f in ("gitea", "forgejo", "gitlab")),
        *(pytest.param(f, pushed(f, after=SHA256), None, id=f"{f}-sha256-unknown-format") for f in GITEA_LIKE),
        *(pytest.param(f, pushed(f, after=AFTER), "sha1", id=f"{f}-sha1") for f in FORGES),
        *(
            pytest.param(
                f, mangled(f, "repository.object_format_name", "sha256", after=SHA256), None, id=f"{f}-named-sha256"
            )
            for f in GITEA_LIKE
        ),
        *(
            pytest.param(
                f,
                mangled(f, "repository.object_format_name", "sha1", after=SHA256),
                "sha256",
                id=f"{f}-the-mirror-overrules-the-payload",
            )
            for f in GITEA_LIKE
        ),
        *(
            pytest.param(f, mangled(f, "repository.object_format_name", None), None, id=f"{f}-object-format-null")
            for f in GITEA_LIKE
        ),
        pytest.param("gitlab", pushed("gitlab", before=ZERO64, after=SHA256), None, id="gitlab-sha256-creation"),
    ],
)
def test_parse_delivery_accepts_the_repository_object_format(
    forge: str, d: Delivery, object_format: str | None
) -> None:
    event = parse(forge, d, object_format=object_format)
    assert isinstance(event, PushEvent)
    assert event.after in (AFTER, SHA256)


@pytest.mark.parametrize(
    ("forge", "d", "object_format", "reason"),
    [
        pytest.param(
            "forgejo",
            pushed("forgejo", before=ZERO64, after=ZERO64),
            "sha256",
            "test delivery",
            id="forgejo-sha256-test-delivery",
        ),
        pytest.param(
            "gitlab", pushed("gitlab", after=ZERO64), "sha256", "branch deletion", id="gitlab-sha256-deletion"
        ),
        pytest.param("gitea", pushed("gitea", after=ZERO), "sha1", "branch deletion", id="gitea-sha1-deletion"),
        *(
            pytest.param(
                f, pushed(f, branch="dev", after=SHA256), "sha1", "dev", id=f"{f}-other-branch-not-read-in-full"
            )
            for f in FORGES
        ),
    ],
)
def test_parse_delivery_ignores_whatever_the_object_format(
    forge: str, d: Delivery, object_format: str | None, reason: str
) -> None:
    result = parse(forge, d, object_format=object_format)
    assert isinstance(result, Ignored)
    assert reason in result.reason


@pytest.mark.parametrize(
    ("fields", "repo", "actor"),
    [
        pytest.param({"project": None, "project_id": "15"}, "15", "op", id="project-id-as-digits"),
        pytest.param({"project": {"id": 15}, "project_id": 2**63}, str(2**63), "op", id="largest-project-id"),
        pytest.param({"project_id": None, "user_username": None}, "ops/config", "Op", id="no-project-id-no-username"),
        pytest.param(
            {"project": None, "project_id": None, "user_username": "", "user_name": None},
            None,
            None,
            id="nothing-named",
        ),
    ],
)
def test_parse_delivery_gitlab_optional_fields(fields: dict[str, Any], repo: str | None, actor: str | None) -> None:
    event = parse("gitlab", pushed("gitlab", **fields))
    assert isinstance(event, PushEvent)
    assert (event.repo, event.actor) == (repo, actor)


def test_parse_delivery_null_objects_are_absent() -> None:
    event = parse("github", pushed("github", repository=None, sender=None, pusher={"name": None}, commits=None))
    assert event == PushEvent(
        forge=Forge.GITHUB,
        delivery_id="d-1",
        ref="refs/heads/main",
        before=BEFORE,
        after=AFTER,
        repo=None,
        api_url="https://api.github.com",
        actor=None,
    )


@pytest.mark.parametrize("object_format", ["SHA1", "sha-256", ""])
def test_parse_delivery_refuses_an_unknown_object_format_argument(object_format: str) -> None:
    with pytest.raises(ValueError, match="object_format"):
        parse("gitea", delivery("gitea"), object_format=object_format)


def test_unsupported_content_type_is_quoted_short_and_on_one_line() -> None:
    for content_type in ("text/" + "x" * 500, "text/\u2028\U0001f600\n" * 50):
        with pytest.raises(EventError) as caught:
            signed_bytes(Forge.GITHUB, {"Content-Type": content_type}, b"{}")
        assert len(caught.value.message) <= 200
        assert len(caught.value.message.splitlines()) == 1

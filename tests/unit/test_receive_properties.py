"""Properties of the receive stage, for every forge and body shape: a signed delivery is a push, an Ignored, or
an EventError whose message is short, one line and secret-free; never another exception (a 500).

Payloads start from tests/deliveries.py's documented push payloads; hypothesis replaces fields anywhere in them
with arbitrary JSON (huge and non-finite numbers, deep nesting, any unicode), then signs them as the forge does.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deployer.errors import EventError, SignatureError
from deployer.receive.events import Ignored, PushEvent, parse_delivery, signed_bytes
from deployer.receive.forges import Forge
from deployer.receive.signature import verify_signature
from tests.deliveries import FORGES, Delivery, push_payload, sign

SECRET = "pr0perty-Secret-7Qz"
BEFORE = "1" * 40
HEX = "0123456789abcdef"

#: every forge with every body it can send: JSON, and a form-encoded `payload` where the forge offers one
SHAPES = [
    *(pytest.param(forge, False, id=f"{forge}-json") for forge in FORGES),
    *(pytest.param(forge, True, id=f"{forge}-form") for forge in FORGES if forge != "gitlab"),
]

Outcome = PushEvent | Ignored | EventError | SignatureError


@dataclass(frozen=True)
class Raw:
    """JSON text written out as is: numbers Python will not dump (10**5000, 1e999) and nesting it cannot recurse."""

    text: str


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def receive(forge: str, d: Delivery, *, object_format: str | None = None) -> Outcome:
    """What the webhook does with a delivery, the expected failures returned instead of raised."""
    try:
        signed = signed_bytes(Forge(forge), d.headers, d.body)
        verify_signature(Forge(forge), signed=signed, headers=d.headers, secret=SECRET)
        return parse_delivery(Forge(forge), d.headers, signed, branch="main", object_format=object_format)
    except (EventError, SignatureError) as error:
        return error


def assert_clean(outcome: Outcome) -> None:
    """A push is well formed; an error says what is wrong in one short line that does not give the secret away."""
    assert not isinstance(outcome, SignatureError), outcome
    if isinstance(outcome, EventError):
        assert len(outcome.message.splitlines()) == 1, outcome.message
        assert len(outcome.message) <= 200, outcome.message
        assert SECRET not in outcome.message
    if isinstance(outcome, PushEvent):
        assert outcome.ref == "refs/heads/main"
        assert len(outcome.after) in (40, 64) and set(outcome.after) <= set(HEX)
        assert all(v is None or isinstance(v, str) for v in (outcome.repo, outcome.api_url, outcome.actor))
        assert outcome.repo is None or len(outcome.repo) < 10_000


def hex_ids(length: int) -> st.SearchStrategy[str]:
    return st.text(HEX, min_size=length, max_size=length).filter(lambda s: set(s) != {"0"} and s != BEFORE)


TEXT = st.text() | st.sampled_from([SECRET, f"refs/heads/{SECRET}", "refs/heads/main", "0" * 40, "f" * 64, ""])
RAW_NUMBERS = st.builds(
    Raw,
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400 + ".5", "-0.0"])
    | st.integers(min_value=20, max_value=6000).map(lambda n: "9" * n)
    | st.integers(min_value=20, max_value=200).map(lambda n: "-" + "1" * n),
)
DEEP = st.integers(min_value=1, max_value=3000).map(lambda n: Raw("[" * n + "]" * n))
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 2**63, 2**63 + 1, 2**64, -(2**63), 10**30])
    | st.floats()
    | TEXT
    | RAW_NUMBERS
    | DEEP
)
JSON = st.recursive(
    LEAVES, lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4), max_leaves=10
)


def slots(value: Any) -> list[tuple[dict[str, Any] | list[Any], str | int]]:
    """Every place in a JSON value that holds a value: (container, key or index)."""
    found: list[tuple[dict[str, Any] | list[Any], str | int]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((value, key))
        found.extend(slots(child))
    return found


#: the fields the parser reads, some of them absent from some forges' payloads
READ = ["ref", "before", "after", "deleted", "commits", "commits.0", "repository", "repository.full_name",
        "repository.html_url", "repository.url", "repository.statuses_url", "repository.object_format_name", "sender",
        "sender.login", "sender.username", "pusher", "pusher.name", "pusher.username", "project",
        "project.path_with_namespace", "project.web_url", "project_id", "user_username", "user_name"]  # fmt: skip


def place(payload: dict[str, Any], path: str) -> tuple[dict[str, Any] | list[Any], str | int]:
    """The container and key of a dotted path ("commits.0" indexes a list), made to exist: what an earlier
    replacement left on the way is replaced by an empty object or list."""
    keys = path.split(".")
    container: Any = payload
    for key, following in itertools.pairwise(keys):
        wanted = list if following.isdigit() else dict
        if not isinstance(container.get(key), wanted):
            container[key] = wanted()
        container = container[key]
    if isinstance(container, list):
        container.extend([None] * (int(keys[-1]) + 1 - len(container)))
        return container, int(keys[-1])
    return container, keys[-1]


@st.composite
def mangled_payloads(draw: st.DrawFn, forge: str) -> dict[str, Any]:
    """A real push payload with one to three fields replaced or added with arbitrary JSON: often a field the parser
    reads, otherwise anywhere."""
    return mangle(draw, push_payload(forge, after=draw(hex_ids(40)), before=BEFORE), READ)


def mangle(draw: st.DrawFn, payload: dict[str, Any], read: list[str]) -> dict[str, Any]:
    """`payload` with one to three fields replaced or added with arbitrary JSON: often one of the paths the
    parser reads (`read`), otherwise anywhere."""
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if draw(st.booleans()):
            container, key = place(payload, draw(st.sampled_from(read)))
        else:
            places = slots(payload)
            container, key = places[draw(st.integers(min_value=0, max_value=len(places) - 1))]
            if isinstance(container, dict) and draw(st.booleans()):
                key = draw(TEXT)  # a new field beside existing ones
        container[key] = draw(JSON)  # type: ignore[index]
    return payload


OBJECT_FORMATS = st.sampled_from([None, "sha1", "sha256"])


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_json_in_any_field_is_a_push_an_ignored_or_an_event_error(
    forge: str, form: bool, data: st.DataObject
) -> None:
    payload = data.draw(mangled_payloads(forge), label="payload")
    object_format = data.draw(OBJECT_FORMATS, label="object_format")
    d = sign(forge, dump(payload).encode(), SECRET, form=form)
    assert_clean(receive(forge, d, object_format=object_format))


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_top_level_json_value_is_a_push_an_ignored_or_an_event_error(
    forge: str, form: bool, data: st.DataObject
) -> None:
    d = sign(forge, dump(data.draw(JSON, label="payload")).encode(), SECRET, form=form)
    assert_clean(receive(forge, d))


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=30, deadline=None)
@given(after=hex_ids(40), before=hex_ids(40) | st.just("0" * 40), object_format=st.sampled_from([None, "sha1"]))
def test_a_valid_push_round_trips(forge: str, form: bool, after: str, before: str, object_format: str | None) -> None:
    assume(before != after)  # a test delivery
    d = sign(forge, push_payload(forge, after=after, before=before), SECRET, form=form)
    event = receive(forge, d, object_format=object_format)
    assert isinstance(event, PushEvent), event
    assert (event.after, event.before, event.repo, event.actor) == (after, before, "ops/config", "op")


@pytest.mark.parametrize(("forge", "form"), [shape for shape in SHAPES if shape.values[0] != "github"])
@settings(max_examples=20, deadline=None)
@given(after=hex_ids(64), object_format=st.sampled_from([None, "sha256"]))
def test_a_valid_sha256_push_round_trips(forge: str, form: bool, after: str, object_format: str | None) -> None:
    d = sign(forge, push_payload(forge, after=after, before="0" * 64), SECRET, form=form)
    event = receive(forge, d, object_format=object_format)
    assert isinstance(event, PushEvent), event
    assert event.after == after


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=20, deadline=None)
@given(after=hex_ids(64), before=hex_ids(40) | hex_ids(64), named=st.sampled_from([None, "sha1", "sha256"]))
def test_a_sha256_after_on_a_sha1_repository_is_an_event_error(
    forge: str, form: bool, after: str, before: str, named: str | None
) -> None:
    payload = push_payload(forge, after=after, before=before)
    if named is not None and forge in ("gitea", "forgejo"):
        payload["repository"]["object_format_name"] = named  # the deployer's own mirror overrules the payload
    outcome = receive(forge, sign(forge, payload, SECRET, form=form), object_format="sha1")
    assert isinstance(outcome, EventError), outcome
    assert "after" in outcome.message


def resigned(forge: str, form: bool, body: bytes) -> Delivery:
    """A push delivery carrying `body` as is, signed over it as the forge signs (when the bytes can be signed)."""
    headers = dict(sign(forge, b"{}", SECRET, form=form).headers)
    try:
        signed = signed_bytes(Forge(forge), headers, body)
    except EventError:
        signed = body
    mac = hmac.new(SECRET.encode(), signed if forge in ("gitea", "forgejo") else body, hashlib.sha256).hexdigest()
    for name in ("X-Forgejo-Signature", "X-Gitea-Signature", "X-Gogs-Signature", "X-Hub-Signature-256"):
        if name in headers:
            headers[name] = f"sha256={mac}" if name == "X-Hub-Signature-256" else mac
    return Delivery(headers, body)


BYTES = st.binary(max_size=300) | st.builds(
    lambda prefix, tail: prefix + tail,
    st.sampled_from([b"payload=", b"payload=%7B", b"{", b'{"ref": "refs/heads/main", "after": ', b"[" * 5000]),
    st.binary(max_size=100),
)


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=40, deadline=None)
@given(body=BYTES)
def test_any_bytes_are_an_ignored_or_an_event_error(forge: str, form: bool, body: bytes) -> None:
    outcome = receive(forge, resigned(forge, form, body))
    assert isinstance(outcome, Ignored | EventError), outcome
    assert_clean(outcome)


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=15, deadline=None)
@given(body=BYTES)
def test_any_bytes_under_a_wrong_signature_are_a_signature_or_event_error(forge: str, form: bool, body: bytes) -> None:
    d = sign(forge, b"{}", "another-secret", form=form)
    assert isinstance(receive(forge, Delivery(d.headers, body)), SignatureError | EventError)


@pytest.mark.parametrize(("forge", "form"), SHAPES)
def test_deep_nesting_is_an_event_error(forge: str, form: bool) -> None:
    objects = '{"ref": "refs/heads/main", "a": ' + '{"b": ' * 100_000 + "0" + "}" * 100_001
    for text in ("[" * 100_000 + "]" * 100_000, objects):
        outcome = receive(forge, sign(forge, text.encode(), SECRET, form=form))
        assert isinstance(outcome, EventError), outcome
        assert outcome.message == "payload is nested too deeply"

"""Receiving pull (GitLab: merge) request deliveries: which are previewed, which ignored, which refused.

Deliveries come from tests/deliveries.py's `pull_payload`, shaped as each forge documents its pull_request /
Merge Request Hook event (../shared/reference/protocols.md section 9.1) and signed as the forge signs.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer.errors import EventError
from deployer.receive import PullRequestEvent
from deployer.receive.events import Ignored, PushEvent, parse_delivery, signed_bytes
from deployer.receive.forges import Forge, detect_forge
from deployer.receive.signature import verify_signature
from tests.deliveries import FORGES, OPENED, PULL_EVENTS, PULL_SYNC, SYNCHRONIZED, Delivery, pull_payload, sign
from tests.unit.test_receive_properties import HEX, JSON, SHAPES, TEXT, dump, mangle

SECRET = "pull-Secret-4Kd"
HEAD = "2" * 40
HEAD256 = "a" * 64
REOPENED = {"github": "reopened", "gitea": "reopened", "forgejo": "reopened", "gitlab": "reopen"}
GITEA_LIKE = ("gitea", "forgejo")
#: where each forge keeps the pull request's head commit, number and base branch
HEAD_PATH = {f: "object_attributes.last_commit.id" if f == "gitlab" else "pull_request.head.sha" for f in FORGES}
NUMBER_PATH = {f: "object_attributes.iid" if f == "gitlab" else "number" for f in FORGES}
BASE_PATH = {f: "object_attributes.target_branch" if f == "gitlab" else "pull_request.base.ref" for f in FORGES}
API_URL = {"github": "https://api.github.com", "gitea": "https://git.example/api/v1",
           "forgejo": "https://git.example/api/v1", "gitlab": "https://git.example/api/v4"}  # fmt: skip
PULL_KINDS = {"pr_other_action", "pr_other_branch", "pr_no_new_commits"}


def pull_delivery(forge: str, payload: dict[str, Any] | bytes, *, form: bool = False) -> Delivery:
    """`payload` signed as `forge` sends a pull request event; Gitea and Forgejo mark new commits by event type."""
    action = payload.get("action") if isinstance(payload, dict) else None
    sync = forge in GITEA_LIKE and action in ("synchronized", "synchronize")
    return sign(forge, payload, SECRET, event=PULL_EVENTS[forge], event_type=PULL_SYNC if sync else None,
                form=form, delivery_id="d-1")  # fmt: skip


def pulled(forge: str, *, form: bool = False, **fields: Any) -> Delivery:
    return pull_delivery(forge, pull_payload(forge, **({"head": HEAD} | fields)), form=form)


def parse(
    forge: str, d: Delivery, *, branch: str = "main", object_format: str | None = None
) -> PushEvent | PullRequestEvent | Ignored:
    """What the webhook does with a delivery: verify its signature, then read it."""
    signed = signed_bytes(Forge(forge), d.headers, d.body)
    verify_signature(Forge(forge), signed=signed, headers=d.headers, secret=SECRET)
    return parse_delivery(Forge(forge), d.headers, signed, branch=branch, object_format=object_format)


def changed(forge: str, path: str, value: Any, **fields: Any) -> Delivery:
    """A pull request delivery with the field at a dotted `path` set to `value` (`...` removes it)."""
    payload = pull_payload(forge, **({"head": HEAD} | fields))
    *parents, last = path.split(".")
    container = payload
    for key in parents:
        container = container.setdefault(key, {})
    if value is ...:
        container.pop(last, None)
    else:
        container[last] = value
    return pull_delivery(forge, payload)


def expected(forge: str, action: str, **changes: Any) -> PullRequestEvent:
    """The event of tests/deliveries.py's default pull request (#7, feature -> main of ops/config)."""
    head_ref = "refs/merge-requests/7/head" if forge == "gitlab" else "refs/pull/7/head"
    event = PullRequestEvent(forge=Forge(forge), delivery_id="d-1", number=7, action=action, head=HEAD,
                             head_ref=head_ref, source_branch="feature", base_branch="main", from_fork=False,
                             repo="ops/config", api_url=API_URL[forge], actor="op",
                             title="Change the config")  # fmt: skip
    return PullRequestEvent(**(event.__dict__ | changes))


# previewed -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("actions", [OPENED, SYNCHRONIZED, REOPENED], ids=["opened", "synchronized", "reopened"])
@pytest.mark.parametrize(("forge", "form"), SHAPES)
def test_a_pull_request_with_a_new_head_is_read_in_full(forge: str, form: bool, actions: dict[str, str]) -> None:
    assert parse(forge, pulled(forge, action=actions[forge], form=form)) == expected(forge, actions[forge])


@pytest.mark.parametrize("forge", GITEA_LIKE)
def test_gitea_pull_request_sync_is_read_as_its_forge_not_as_github(forge: str) -> None:
    d = pulled(forge, action="synchronized")
    assert d.headers["X-GitHub-Event"] == "pull_request"
    assert d.headers[f"X-{forge.capitalize()}-Event-Type"] == PULL_SYNC
    assert detect_forge(d.headers) is Forge(forge)
    assert parse(forge, d) == expected(forge, "synchronized")


@pytest.mark.parametrize("forge", GITEA_LIKE)
def test_gitea_accepts_githubs_synchronize_too(forge: str) -> None:
    assert parse(forge, pulled(forge, action="synchronize")) == expected(forge, "synchronize")


@pytest.mark.parametrize("forge", FORGES)
def test_number_and_head_ref_follow_the_payload(forge: str) -> None:
    event = parse(forge, pulled(forge, number=4321))
    assert isinstance(event, PullRequestEvent)
    assert event.number == 4321
    assert event.head_ref == ("refs/merge-requests/4321/head" if forge == "gitlab" else "refs/pull/4321/head")


@pytest.mark.parametrize(
    ("forge", "d", "from_fork"),
    [
        *(pytest.param(f, pulled(f), False, id=f"{f}-same-repository") for f in FORGES),
        *(pytest.param(f, pulled(f, fork=True), True, id=f"{f}-fork") for f in FORGES),
        pytest.param("github", changed("github", "pull_request.head.repo", None), True, id="github-deleted-fork"),
        pytest.param(
            "github", changed("github", "pull_request.head.repo.full_name", ...), True, id="github-head-unnamed"
        ),
        pytest.param(
            "github", changed("github", "pull_request.base.repo", None), True, id="github-base-repository-unknown"
        ),
        *(
            pytest.param(f, changed(f, "pull_request.head.repo_id", -1), True, id=f"{f}-deleted-head-repository")
            for f in GITEA_LIKE
        ),
        *(
            pytest.param(f, changed(f, "pull_request.head.repo_id", ...), True, id=f"{f}-head-id-absent")
            for f in GITEA_LIKE
        ),
        pytest.param(
            "gitlab", changed("gitlab", "object_attributes.source_project_id", None), True, id="gitlab-source-deleted"
        ),
    ],
)
def test_a_fork_is_told_apart_per_forge(forge: str, d: Delivery, from_fork: bool) -> None:
    event = parse(forge, d)
    assert isinstance(event, PullRequestEvent)
    assert event.from_fork is from_fork


def test_a_fork_names_the_base_repository() -> None:
    for forge in FORGES:
        event = parse(forge, pulled(forge, fork=True))
        assert isinstance(event, PullRequestEvent)
        assert (event.repo, event.api_url) == ("ops/config", API_URL[forge])


def test_gitlab_update_with_oldrev_brings_new_commits() -> None:
    assert parse("gitlab", pulled("gitlab", action="update")) == expected("gitlab", "update")
    assert parse("gitlab", pulled("gitlab", action="update", oldrev="3" * 64)) == expected("gitlab", "update")


def test_gitlab_names_the_project_by_id_without_its_path() -> None:
    payload = pull_payload("gitlab", head=HEAD)
    del payload["project"]["path_with_namespace"]
    event = parse("gitlab", pull_delivery("gitlab", payload))
    assert isinstance(event, PullRequestEvent)
    assert (event.repo, event.api_url) == ("15", None)


def test_a_title_is_shown_on_one_printable_line() -> None:
    event = parse("github", changed("github", "pull_request.title", "Fix\nthe\x1b[31m build" + "!" * 300))
    assert isinstance(event, PullRequestEvent)
    assert event.title is not None
    assert event.title.startswith("Fix?the?[31m build!")
    assert event.title.isprintable()
    assert len(event.title) <= 100


def test_sha256_heads_preview_where_the_repository_uses_sha256() -> None:
    for forge, object_format in [("gitea", None), ("forgejo", "sha256"), ("gitlab", "sha256"), ("gitlab", None)]:
        event = parse(forge, pulled(forge, head=HEAD256), object_format=object_format)
        assert isinstance(event, PullRequestEvent), (forge, object_format)
        assert event.head == HEAD256


# ignored ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forge", "d", "kind", "reason"),
    [
        *(
            pytest.param(f, pulled(f, action=a), "pr_other_action", a, id=f"{f}-{a}")
            for f, actions in [
                ("github", ["closed", "labeled", "edited", "assigned", "ready_for_review"]),
                ("gitea", ["closed", "label_updated", "edited", "assigned"]),
                ("forgejo", ["closed", "reviewed"]),
                ("gitlab", ["close", "merge", "approved", "unapproval"]),
            ]
            for a in actions
        ),
        pytest.param(
            "github",
            pulled("github", action="synchronized"),
            "pr_other_action",
            "synchronized",
            id="github-gitea-spelling",
        ),
        pytest.param("gitlab", pulled("gitlab", action="opened"), "pr_other_action", "opened", id="gitlab-github-word"),
        *(
            pytest.param(
                f, pulled(f, base="dev"), "pr_other_branch", "into dev (only main deploys)", id=f"{f}-into-dev"
            )
            for f in FORGES
        ),
        pytest.param(
            "github", pulled("github", base="main-old"), "pr_other_branch", "main-old", id="github-main-prefix"
        ),
        pytest.param(
            "gitea", pulled("gitea", base="refs/heads/main"), "pr_other_branch", "refs/heads/main", id="gitea-full-ref"
        ),
        pytest.param(
            "gitlab",
            pulled("gitlab", action="update", oldrev=None),
            "pr_no_new_commits",
            "merge request updated without new commits",
            id="gitlab-update-without-oldrev",
        ),
        pytest.param(
            "gitlab",
            pulled("gitlab", action="update", oldrev=""),
            "pr_no_new_commits",
            "without new commits",
            id="gitlab-update-empty-oldrev",
        ),
    ],
)
def test_pull_requests_that_bring_nothing_to_preview_are_ignored(
    forge: str, d: Delivery, kind: str, reason: str
) -> None:
    result = parse(forge, d)
    assert isinstance(result, Ignored), result
    assert result.kind == kind
    assert reason in result.reason


def test_an_ignored_pull_request_is_not_read_further() -> None:
    """As a push to another branch: a closed pull request's malformed head is nobody's concern."""
    for forge in FORGES:
        closed = {"gitlab": "close"}.get(forge, "closed")
        assert isinstance(parse(forge, changed(forge, HEAD_PATH[forge], 5, action=closed)), Ignored)
        assert isinstance(parse(forge, changed(forge, HEAD_PATH[forge], 5, base="dev")), Ignored)


def test_a_shown_branch_or_action_is_one_short_line() -> None:
    result = parse("github", pulled("github", base="x\n" * 200))
    assert isinstance(result, Ignored)
    assert "\n" not in result.reason
    assert len(result.reason) < 150


def test_other_events_stay_ignored() -> None:
    for forge, event in [
        ("github", "pull_request_review"),
        ("gitea", "pull_request_approved"),
        ("gitlab", "Note Hook"),
    ]:
        d = sign(forge, pull_payload(forge, head=HEAD), SECRET, event=event)
        result = parse(forge, d)
        assert isinstance(result, Ignored)
        assert result.kind == "other_event"


# refused ---------------------------------------------------------------------------------------------------------

NON_GITLAB = ("github", "gitea", "forgejo")

#: (forge, delivery, what the message must name): every field consulted, wrongly typed or missing
MALFORMED = [
    *(pytest.param(f, changed(f, "pull_request", ...), "pull_request", id=f"{f}-no-pull-request") for f in NON_GITLAB),
    pytest.param("gitlab", changed("gitlab", "object_attributes", ...), "object_attributes", id="gitlab-no-attributes"),
    *(
        pytest.param(f, changed(f, path, value), path, id=f"{f}-{path}-{label}")
        for f in NON_GITLAB
        for path, value, label in [
            ("pull_request", "x", "string"),
            ("pull_request", [], "list"),
            ("action", 5, "number"),
            ("action", ..., "missing"),
            ("number", "7", "string"),
            ("number", True, "boolean"),
            ("number", 0, "zero"),
            ("number", -7, "negative"),
            ("number", 7.0, "float"),
            ("number", 2**64, "past-64-bit"),
            ("number", ..., "missing"),
            ("pull_request.head", [], "list"),
            ("pull_request.head", ..., "missing"),
            ("pull_request.head.sha", 5, "number"),
            ("pull_request.head.sha", ..., "missing"),
            ("pull_request.head.ref", 5, "number"),
            ("pull_request.base", "main", "string"),
            ("pull_request.base.ref", ["main"], "list"),
            ("pull_request.base.ref", ..., "missing"),
            ("pull_request.title", 5, "number"),
            ("sender", "op", "string"),
            ("sender.login", {}, "object"),
            ("sender.username", 7, "number"),
            ("repository", "ops/config", "string"),
            ("repository.full_name", 5, "number"),
        ]
    ),
    *(
        pytest.param("github", changed("github", path, value), path, id=f"github-{path}-{label}")
        for path, value, label in [
            ("pull_request.head.repo", "fork/config", "string"),
            ("pull_request.head.repo.full_name", 5, "number"),
            ("pull_request.base.repo.full_name", [], "list"),
            ("repository.statuses_url", 5, "number"),
        ]
    ),
    *(
        pytest.param(f, changed(f, path, value), path, id=f"{f}-{path}-{label}")
        for f in GITEA_LIKE
        for path, value, label in [
            ("pull_request.head.repo_id", "1", "string"),
            ("pull_request.head.repo_id", True, "boolean"),
            ("pull_request.base.repo_id", 1.5, "float"),
            ("repository.html_url", [], "list"),
            ("repository.object_format_name", "md5", "unknown"),
        ]
    ),
    *(
        pytest.param("gitlab", changed("gitlab", path, value, **fields), path, id=f"gitlab-{path}-{label}")
        for path, value, label, fields in [
            ("object_attributes", "x", "string", {}),
            ("object_attributes.action", [], "list", {}),
            ("object_attributes.action", ..., "missing", {}),
            ("object_attributes.iid", "7", "string", {}),
            ("object_attributes.iid", False, "boolean", {}),
            ("object_attributes.iid", 0, "zero", {}),
            ("object_attributes.iid", ..., "missing", {}),
            ("object_attributes.last_commit", "x", "string", {}),
            ("object_attributes.last_commit", ..., "missing", {}),
            ("object_attributes.last_commit.id", 5, "number", {}),
            ("object_attributes.target_branch", [], "list", {}),
            ("object_attributes.target_branch", ..., "missing", {}),
            ("object_attributes.source_branch", 5, "number", {}),
            ("object_attributes.source_project_id", "16", "string", {}),
            ("object_attributes.target_project_id", [], "list", {}),
            ("object_attributes.title", {}, "object", {}),
            ("object_attributes.oldrev", 5, "number", {"action": "update"}),
            ("object_attributes.oldrev", "HEAD~1", "not-an-id", {"action": "update"}),
            ("user", "op", "string", {}),
            ("user.username", 4, "number", {}),
            ("project", "ops/config", "string", {}),
            ("project.id", 0, "zero", {}),
            ("project.id", True, "boolean", {}),
            ("project.path_with_namespace", [], "list", {}),
            ("project.web_url", 5, "number", {}),
            ("repository", [], "list", {}),
        ]
    ),
    *(
        pytest.param(f, changed(f, HEAD_PATH[f], value), HEAD_PATH[f], id=f"{f}-head-{label}")
        for f in FORGES
        for value, label in [
            ("main", "a-branch-name"),
            ("2" * 39, "39-hex"),
            ("2" * 41, "41-hex"),
            ("A" * 40, "uppercase"),
            (HEAD + "\n", "trailing-newline"),
            ("", "empty"),
        ]
    ),
    pytest.param("github", pulled("github", head=HEAD256), HEAD_PATH["github"], id="github-sha256-head"),
]


@pytest.mark.parametrize(("forge", "d", "field"), MALFORMED)
def test_a_malformed_pull_request_names_the_field(forge: str, d: Delivery, field: str) -> None:
    with pytest.raises(EventError) as caught:
        parse(forge, d)
    message = caught.value.message
    assert field in message
    assert "\n" not in message
    assert len(message) <= 200


@pytest.mark.parametrize(
    ("forge", "head", "object_format", "named"),
    [
        *(pytest.param(f, HEAD256, "sha1", None, id=f"{f}-sha256-head-on-sha1") for f in FORGES),
        *(pytest.param(f, HEAD, "sha256", None, id=f"{f}-sha1-head-on-sha256") for f in FORGES),
        *(pytest.param(f, HEAD, None, "sha256", id=f"{f}-sha1-head-on-named-sha256") for f in GITEA_LIKE),
        *(pytest.param(f, HEAD256, None, "sha1", id=f"{f}-sha256-head-on-named-sha1") for f in GITEA_LIKE),
    ],
)
def test_a_head_of_the_wrong_object_format_is_refused(
    forge: str, head: str, object_format: str | None, named: str | None
) -> None:
    payload = pull_payload(forge, head=head)
    if named is not None:
        payload["repository"]["object_format_name"] = named
    with pytest.raises(EventError) as caught:
        parse(forge, pull_delivery(forge, payload), object_format=object_format)
    assert HEAD_PATH[forge] in caught.value.message


def test_the_deployers_object_format_overrules_the_payloads() -> None:
    payload = pull_payload("gitea", head=HEAD)
    payload["repository"]["object_format_name"] = "sha256"
    assert isinstance(parse("gitea", pull_delivery("gitea", payload), object_format="sha1"), PullRequestEvent)


def test_messages_never_repeat_payload_values() -> None:
    marker = "leak-" + SECRET
    for forge in FORGES:
        for path in (HEAD_PATH[forge], BASE_PATH[forge]):
            with pytest.raises(EventError) as caught:
                parse(forge, changed(forge, path, [marker]))
            assert marker not in caught.value.message
        with pytest.raises(EventError) as caught:
            parse(forge, changed(forge, HEAD_PATH[forge], marker))
        assert marker not in caught.value.message


# properties ------------------------------------------------------------------------------------------------------

Outcome = PushEvent | PullRequestEvent | Ignored | EventError


def receive(forge: str, d: Delivery, *, object_format: str | None = None) -> Outcome:
    try:
        return parse(forge, d, object_format=object_format)
    except EventError as error:
        return error


def assert_clean(forge: str, outcome: Outcome) -> None:
    """Only a pull request, an Ignored one, or a short one-line EventError; a parsed head can be fetched."""
    assert not isinstance(outcome, PushEvent), outcome
    if isinstance(outcome, EventError):
        assert len(outcome.message.splitlines()) == 1, outcome.message
        assert len(outcome.message) <= 200, outcome.message
        assert SECRET not in outcome.message
    if isinstance(outcome, Ignored):
        assert outcome.kind in PULL_KINDS, outcome
        assert len(outcome.reason.splitlines()) == 1
    if isinstance(outcome, PullRequestEvent):
        assert re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", outcome.head), outcome.head
        assert re.fullmatch(rf"refs/(pull|merge-requests)/{outcome.number}/head", outcome.head_ref), outcome.head_ref
        assert outcome.head_ref.startswith("refs/merge-requests/" if forge == "gitlab" else "refs/pull/")
        assert type(outcome.number) is int and outcome.number > 0
        assert outcome.base_branch == "main"
        assert isinstance(outcome.from_fork, bool)
        assert outcome.title is None or (outcome.title.isprintable() and len(outcome.title) <= 100)
        for value in (outcome.source_branch, outcome.repo, outcome.api_url, outcome.actor):
            assert value is None or isinstance(value, str)


#: the fields the parser reads from a pull request, some absent from some forges' payloads
READ = ["action", "number", "pull_request", "pull_request.head", "pull_request.head.sha", "pull_request.head.ref",
        "pull_request.head.repo", "pull_request.head.repo.full_name", "pull_request.head.repo_id",
        "pull_request.base", "pull_request.base.ref", "pull_request.base.repo.full_name", "pull_request.base.repo_id",
        "pull_request.title", "repository", "repository.full_name", "repository.html_url",
        "repository.statuses_url", "repository.url", "repository.object_format_name", "sender", "sender.login",
        "sender.username", "object_attributes", "object_attributes.action", "object_attributes.iid",
        "object_attributes.oldrev", "object_attributes.last_commit", "object_attributes.last_commit.id",
        "object_attributes.source_branch", "object_attributes.target_branch", "object_attributes.source_project_id",
        "object_attributes.target_project_id", "object_attributes.title", "project", "project.id",
        "project.path_with_namespace", "project.web_url", "user", "user.username"]  # fmt: skip

ACTIONS = st.sampled_from(sorted({*OPENED.values(), *SYNCHRONIZED.values(), *REOPENED.values(), "closed"}))
HEADS = st.text(HEX, min_size=40, max_size=40) | st.text(HEX, min_size=64, max_size=64)


@st.composite
def mangled_pulls(draw: st.DrawFn, forge: str) -> dict[str, Any]:
    """A real pull request payload with one to three fields replaced or added with arbitrary JSON: often a field
    the parser reads, otherwise anywhere."""
    payload = pull_payload(forge, head=draw(HEADS), action=draw(ACTIONS), fork=draw(st.booleans()),
                           number=draw(st.integers(min_value=1, max_value=2**63)))  # fmt: skip
    return mangle(draw, payload, READ)


OBJECT_FORMATS = st.sampled_from([None, "sha1", "sha256"])
TOP_LEVEL = ["action", "number", "pull_request", "object_attributes", "repository", "project", "sender", "user"]


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_json_in_any_field_of_a_pull_request_is_one_ignored_or_an_event_error(
    forge: str, form: bool, data: st.DataObject
) -> None:
    payload = data.draw(mangled_pulls(forge), label="payload")
    d = pull_delivery(forge, dump(payload).encode(), form=form)
    assert_clean(forge, receive(forge, d, object_format=data.draw(OBJECT_FORMATS, label="object_format")))


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.dictionaries(TEXT | st.sampled_from(TOP_LEVEL), JSON, max_size=5))
def test_any_json_object_sent_as_a_pull_request_is_one_ignored_or_an_event_error(
    forge: str, form: bool, payload: dict[str, Any]
) -> None:
    assert_clean(forge, receive(forge, pull_delivery(forge, dump(payload).encode(), form=form)))


@pytest.mark.parametrize(("forge", "form"), SHAPES)
@settings(max_examples=30, deadline=None)
@given(
    head=st.text(HEX, min_size=40, max_size=40),
    number=st.integers(min_value=1, max_value=2**63),
    fork=st.booleans(),
    actions=st.sampled_from([OPENED, SYNCHRONIZED, REOPENED]),
)
def test_a_valid_pull_request_round_trips(
    forge: str, form: bool, head: str, number: int, fork: bool, actions: dict[str, str]
) -> None:
    d = pull_delivery(forge, pull_payload(forge, head=head, number=number, fork=fork, action=actions[forge]), form=form)
    event = receive(forge, d, object_format="sha1")
    assert isinstance(event, PullRequestEvent), event
    assert (event.head, event.number, event.from_fork, event.action) == (head, number, fork, actions[forge])
    assert_clean(forge, event)

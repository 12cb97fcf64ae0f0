"""The preview comment client against the forge stand-in (tests/servers.py: real forges cannot run here),
which checks each forge's documented comment API shapes (protocols.md 9.2) and records the comments."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from deployer.report.forges import GiveUp, Retry
from deployer.report.forges import comments as client
from deployer.report.forges.comments import MARKER, upsert_comment
from tests.servers import ForgeServer

FORGES = ("github", "gitea", "forgejo", "gitlab")


@pytest.fixture(params=FORGES)
def forge(request: pytest.FixtureRequest) -> Iterator[ForgeServer]:
    server = ForgeServer(request.param)
    client._logins.clear()  # the token's login is cached per API: each stand-in is a new one
    yield server
    server.close()
    assert server.errors == []


def upsert(forge: ForgeServer, body: str, *, comment_id: int | None = None, number: int = 7) -> int:
    return upsert_comment(requests.Session(), forge.forge, forge.api_url, "ops/config", forge.token, number,
                          f"{MARKER}\n{body}", comment_id=comment_id)  # fmt: skip


def test_the_comment_is_created_once_then_edited_in_place(forge: ForgeServer) -> None:
    first = upsert(forge, "plan 1")
    assert upsert(forge, "plan 2", comment_id=first) == first
    assert upsert(forge, "plan 3") == first  # the stored id lost: found again by its marker
    [comment] = forge.comments_on(7)
    assert (comment.id, comment.edits, comment.body) == (first, 2, f"{MARKER}\nplan 3")


def test_a_comment_someone_else_wrote_with_the_marker_is_never_taken_for_ours(forge: ForgeServer) -> None:
    planted = forge.add_comment(7, f"{MARKER}\nfake plan", author="mallory")
    ours = upsert(forge, "plan")
    assert ours != planted.id
    assert forge.comments[planted.id].body == f"{MARKER}\nfake plan" and forge.comments[planted.id].edits == 0


def test_a_deleted_comment_is_written_again(forge: ForgeServer) -> None:
    first = upsert(forge, "plan 1")
    del forge.comments[first]
    second = upsert(forge, "plan 2", comment_id=first)
    assert second != first and [c.body for c in forge.comments_on(7)] == [f"{MARKER}\nplan 2"]


def test_ours_is_found_behind_pages_of_other_comments(forge: ForgeServer) -> None:
    for index in range(250):
        forge.add_comment(7, f"comment {index}", author="someone")
    ours = forge.add_comment(7, f"{MARKER}\nold plan", author=forge.login)
    assert upsert(forge, "new plan") == ours.id
    assert len(forge.comments_on(7)) == 251


def test_a_forge_that_is_down_is_retried_and_a_refusal_given_up(forge: ForgeServer) -> None:
    forge.fail_next = 1
    with pytest.raises(Retry):
        upsert(forge, "plan")
    forge.token, token = "other", forge.token
    with pytest.raises(GiveUp):
        upsert_comment(requests.Session(), forge.forge, forge.api_url, "ops/config", token, 7, MARKER,
                       comment_id=None)  # fmt: skip
    forge.errors.clear()  # the stand-in noted the wrong token, as it should
    assert forge.comments_on(7) == []


def test_a_token_the_forge_will_not_name_still_finds_and_edits_ours(forge: ForgeServer) -> None:
    forge.user_status = 403  # GitHub App installation tokens: GET /user is "not accessible by integration"
    planted = forge.add_comment(7, f"{MARKER}\nfake plan", author="mallory")
    first = upsert(forge, "plan 1")
    assert first != planted.id and forge.comments[planted.id].edits == 0  # hers refused (403) and skipped
    assert upsert(forge, "plan 2") == first
    assert [c.body for c in forge.comments_on(7) if c.author == forge.login] == [f"{MARKER}\nplan 2"]


def test_gitea_lists_in_one_request_and_the_others_follow_their_pages(forge: ForgeServer) -> None:
    for index in range(130):
        forge.add_comment(7, f"comment {index}", author="someone")
    upsert(forge, "plan")
    lists = [path for method, path in forge.calls if method == "GET" and path.endswith(("/7/comments", "/7/notes"))]
    assert len(lists) == (1 if forge.forge in ("gitea", "forgejo") else 2)


def test_an_answer_that_is_not_json_is_retried_not_crashed_on(forge: ForgeServer) -> None:
    for passing in (0, 1, 2):  # garble GET /user, then the list, then the create
        client._logins.clear()
        forge.garble_skip, forge.garble_next = passing, 1
        with pytest.raises(Retry, match="not JSON"):
            upsert(forge, "plan")
    [landed] = forge.comments_on(7)  # the garbled create was made all the same
    client._logins.clear()
    assert upsert(forge, "plan 2") == landed.id  # found by its marker: never a second comment
    assert [c.body for c in forge.comments_on(7)] == [f"{MARKER}\nplan 2"]

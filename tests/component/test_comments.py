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

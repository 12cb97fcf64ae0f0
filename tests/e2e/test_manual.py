"""A person's redeploy through a real `deployer serve`: exactly the stacks named, at the ref named, held there.

Real gunicorn, deploy worker, git, sops, age and Docker engine; the forge is tests/servers.py's stand-in.
The API is open (tests/conftest.py tool_environ sets DEPLOYER_INSECURE_OPEN_API): identity has its own tests.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import Served, container_env, container_id, http, versions, wait_for
from tests.helpers import ConfigRepo

pytestmark = pytest.mark.usefixtures("engine")


def post(served: Served, path: str, body: object) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http("POST", f"{served.base}{path}", body=data, headers={"Content-Type": "application/json"})


def test_a_manual_redeploy_deploys_exactly_the_named_stack_and_force_recreates_it(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    head = versions(repo, a, b, value="1")
    served = serve()
    assert served.finished(served.push(head))["state"] == "succeeded"
    before = {name: container_id(name) for name in (a, b)}

    status, answer = post(served, "/api/deployments", {"stacks": [a], "force": True, "reason": "rotated a key"})
    assert status == 202, answer
    done = served.finished(answer["deployment_id"])
    assert (done["state"], done["trigger"], done["reason"], done["commit"]) == ("succeeded", "manual",
                                                                               "rotated a key", head)  # fmt: skip
    assert [(s["name"], s["reasons"]) for s in done["stacks"]] == [(a, ["requested"])]
    assert container_id(a) != before[a]  # recreated although nothing changed
    assert container_id(b) == before[b]  # not touched
    queued = [e for e in served.audit() if e["event"] == "deployment.queued" and e["deployment_id"] == done["id"]]
    assert queued[0]["trigger"] == "manual" and queued[0]["stacks"] == [a] and queued[0]["force"] is True


def test_a_manual_deploy_of_an_older_commit_is_held_until_the_next_push_or_a_release(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    a, b = f"{prefix}-a", f"{prefix}-b"
    old = versions(repo, a, b, value="1")
    new = versions(repo, a, b, value="2")
    served = serve(poll=1)
    wait_for(lambda: served.deployed(a) == new and served.deployed(b) == new, timeout=60, what="the head deployed")

    status, answer = post(served, "/api/deployments", {"ref": old, "stacks": [a], "reason": "back to v1"})
    assert status == 202, answer
    assert served.finished(answer["deployment_id"])["state"] == "succeeded"
    assert container_env(a)["VERSION"] == "1" and container_env(b)["VERSION"] == "2"
    held = {s["name"]: s["held"] for s in served.get("/api/stacks")}
    assert held == {a: {"commit": old, "actor": "anonymous", "reason": "back to v1"}, b: None}  # the API is open
    time.sleep(3)  # three polls: the held stack stays where a person put it
    assert container_env(a)["VERSION"] == "1"
    assert served.get("/api/branch")["next"] == "nothing"

    status, answer = post(served, f"/api/stacks/{a}/release", b"")
    assert status == 202 and answer["released"] is True, answer
    assert served.finished(answer["deployment_id"])["state"] == "succeeded"
    assert container_env(a)["VERSION"] == "2"
    assert {s["name"]: s["held"] for s in served.get("/api/stacks")} == {a: None, b: None}

    status, answer = post(served, "/api/deployments", {"ref": old, "stacks": [a]})
    assert served.finished(answer["deployment_id"])["state"] == "succeeded"
    pushed = versions(repo, a, b, value="3")
    assert served.finished(served.push(pushed, before=new))["state"] == "succeeded"  # a push releases it
    assert container_env(a)["VERSION"] == "3"
    assert {s["name"]: s["held"] for s in served.get("/api/stacks")} == {a: None, b: None}
    assert any(e["event"] == "stack.released" and e["stack"] == a for e in served.audit())


BAD_REQUESTS: list[tuple[object, int, str]] = [
    (b"{not json", 400, "body is not a JSON object"),
    ([1, 2], 400, "body is not a JSON object"),
    ({"stacks": "web"}, 400, "stacks: expected a list"),
    ({"stacks": ["../etc"]}, 400, "stacks[0]: not a stack name"),
    ({"force": "yes"}, 400, "force: expected a bool"),
    ({"branch": "main"}, 400, "branch: unknown field"),
    ({"reason": "x" * 501}, 400, "reason: longer than 500 characters"),
    ({"ref": "no-such-branch"}, 404, "ref 'no-such-branch' is not in the deployer's mirror"),
    ({"ref": "--upload-pack=evil"}, 404, "is not a branch, tag or commit name"),
    ({"stacks": ["nosuchstack"]}, 422, "stacks: no such stack at"),
    (b'{"reason": "' + b"x" * (1024 * 1024) + b'"}', 413, "exceeds the capacity limit"),  # DEPLOYER_MAX_BODY
]


def test_bad_manual_requests_are_refused_naming_the_field_and_queue_nothing(
    serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    """Each case against one running service (a service each took 3 s for the same answer)."""
    head = versions(repo, f"{prefix}-a", value="1")
    served = serve()
    assert served.finished(served.push(head))["state"] == "succeeded"
    for count, (body, status, message) in enumerate(BAD_REQUESTS, start=1):
        shown = repr(body)[:80]
        answer = post(served, "/api/deployments", body)
        assert answer[0] == status and message in answer[1]["message"], (shown, answer)
        assert len(served.deployments()) == 1, shown
        refused = [e for e in served.audit() if e["event"] == "request.refused"]  # the attempt, and who made it
        assert len(refused) == count, (shown, refused)
        assert (refused[-1]["path"], refused[-1]["status"], refused[-1]["actor"]) == ("/api/deployments", status,
                                                                                      "anonymous")  # fmt: skip
        assert refused[-1]["reason"].startswith(f"{answer[1]['error']}: "), shown

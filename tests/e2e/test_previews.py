"""Plan previews of pull requests through a real `deployer serve` (contract sections 5 and 6).

Deliveries are shaped and signed as each forge documents them (tests/deliveries.py); the forge's API is
a stand-in (tests/servers.py: the real forges cannot run here) that checks the documented request shapes
and records the statuses and the comments, edits included. The repository is a real git repository
whose `refs/pull/N/head` (GitLab: `refs/merge-requests/N/head`) is set as the forge sets it, also for a
commit on no branch at all (a fork's).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from tests.conftest import AgeKey
from tests.deliveries import pull_payload, push_payload, sign
from tests.e2e.conftest import Serve
from tests.e2e.served import SECRET, container_env, http, wait_for
from tests.helpers import ConfigRepo, git, laughs, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")


def open_pull(repo: ConfigRepo, number: int, *, forge: str = "gitea") -> str:
    """Make the repository's current commit the head of pull request `number`, as the forge does; return it."""
    head = git(repo.path, "rev-parse", "HEAD")
    ref = f"refs/merge-requests/{number}/head" if forge == "gitlab" else f"refs/pull/{number}/head"
    git(repo.path, "update-ref", ref, head)
    return head


def deliver(base: str, forge: str, api_url: str, *, head: str, number: int, action: str | None = None,
            fork: bool = False) -> dict[str, object]:  # fmt: skip
    payload = pull_payload(forge, head=head, number=number, action=action, fork=fork)
    event = {"gitlab": "Merge Request Hook"}.get(forge, "pull_request")
    delivery = sign(forge, payload, SECRET, event=event)
    status, answer = http("POST", f"{base}/webhook", body=delivery.body, headers=delivery.headers)
    assert status == 202, answer
    assert "preview_id" in answer and "deployment_id" not in answer, answer
    return dict(answer)


def plan_status(forge: ForgeServer, sha: str, state: str) -> str:
    wait_for(lambda: forge.latest(sha).get("deployer/plan") == state, timeout=60, what=f"deployer/plan {state}")
    return [p.description for p in forge.posted if (p.sha, p.context) == (sha, "deployer/plan")][-1]


def test_a_pull_request_gets_its_plan_as_a_status_and_one_comment_edited_in_place(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, tmp_path: Path
) -> None:
    auth, web = f"{prefix}-auth", f"{prefix}-web"
    repo.stack(auth, {"main": service(environment={"V": "1"})})
    repo.stack(web, {"main": service(environment={"V": "1"})}, deployer={"depends_on": [auth]})
    main = repo.commit("two stacks")
    served = serve()
    assert served.finished(served.push(main))["state"] == "succeeded"

    git(repo.path, "checkout", "-q", "-b", "feature")
    repo.stack(auth, {"main": service(environment={"V": "2"})})
    repo.commit("auth v2")
    first = open_pull(repo, 7)
    deliver(served.base, "gitea", forge.api_url, head=first, number=7, action="opened")
    assert plan_status(forge, first, "success") == f"valid: would redeploy 1 stack: {auth}"
    comments = wait_for(lambda: forge.comments_on(7), timeout=30, what="the preview comment")
    assert len(comments) == 1 and "<!-- gitops-deployer:preview -->" in comments[0].body
    shown = html.unescape(comments[0].body)  # as the forge renders it: names and paths are entities there
    assert f"stacks/{auth}/compose.yaml" in shown and web not in shown

    repo.stack(web, {"main": service(environment={"V": "2"})}, deployer={"depends_on": [auth]})
    repo.commit("web v2")
    second = open_pull(repo, 7)
    deliver(served.base, "gitea", forge.api_url, head=second, number=7, action="synchronized")
    assert plan_status(forge, second, "success") == f"valid: would redeploy 2 stacks: {auth}, {web}"
    wait_for(lambda: web in html.unescape(forge.comments_on(7)[0].body), timeout=30, what="the comment edited")
    comments = forge.comments_on(7)
    assert len(comments) == 1, [c.body for c in comments]  # edited, never a second comment
    assert comments[0].edits >= 1
    body = html.unescape(comments[0].body)
    assert body.index(auth) < body.index(web)  # in order: web depends on auth
    assert forge.errors == []

    # nothing was deployed from the pull request
    assert [d["commit"] for d in served.deployments()] == [main]
    assert container_env(auth)["V"] == "1" and container_env(web)["V"] == "1"


def _push(after: str) -> dict[str, object]:
    delivery = sign("gitea", push_payload("gitea", after=after), SECRET)
    return {"body": delivery.body, "headers": delivery.headers}


@pytest.mark.parametrize("forge_name", ["github", "forgejo", "gitlab"])
def test_each_forge_s_pull_request_event_is_previewed_on_its_api(
    serve: Serve, repo: ConfigRepo, prefix: str, forge_name: str
) -> None:
    other = ForgeServer(forge_name)
    try:
        name = f"{prefix}-app"
        repo.stack(name, {"main": service()})
        repo.commit("one stack")
        git(repo.path, "checkout", "-q", "-b", "feature")
        repo.stack(f"{prefix}-new", {"main": service()})
        repo.commit("a new stack")
        head = open_pull(repo, 3, forge=forge_name)
        served = serve(DEPLOYER_FORGE=forge_name, DEPLOYER_FORGE_API_URL=other.api_url)
        deliver(served.base, forge_name, other.api_url, head=head, number=3)
        described = plan_status(other, head, "success")
        assert described == f"valid: would redeploy 2 stacks: {name}, {prefix}-new", described
        assert len(wait_for(lambda: other.comments_on(3), timeout=30, what="the comment")) == 1
        assert other.errors == []
        assert served.deployments() == []
    finally:
        other.close()


def test_hostile_forks_are_previewed_as_invalid_never_deployed_nothing_decrypted_and_the_deployer_unharmed(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str, age_key: AgeKey
) -> None:
    name = f"{prefix}-app"
    repo.stack(name, {"main": service(environment={"V": "1"})})
    main = repo.commit("one stack")
    served = serve()
    assert served.finished(served.push(main))["state"] == "succeeded"
    hostile = {
        9: ("a bind mount of the host's /",
            lambda: repo.stack(name, {"main": service(environment={"V": "evil"}, volumes=["/:/host"])}),
            "uses host path /"),
        11: ("a YAML bomb", lambda: repo.write(f"stacks/{prefix}-bomb/compose.yaml", laughs()),
             f"stacks/{prefix}-bomb/compose.yaml: cannot be read as YAML"),
        12: ("a symlink to the age key", lambda: _symlink(repo, f"stacks/{prefix}-key/compose.yaml", age_key.path),
             f"stacks/{prefix}-key/compose.yaml"),
        13: ("a secret path out of the repository",
             lambda: repo.stack(f"{prefix}-out", {"main": service()}, deployer={"secrets": ["../../etc/shadow"]}),
             f"stacks/{prefix}-out/compose.yaml"),
    }  # fmt: skip
    heads = {}
    for number, (what, make, _) in hostile.items():
        # the fork's commit is on no branch of the repository: only the forge's refs/pull/N/head holds it
        git(repo.path, "checkout", "-q", "--detach", main)
        make()
        repo.commit(what)
        heads[number] = open_pull(repo, number)
        git(repo.path, "checkout", "-q", "-f", "main")
        git(repo.path, "clean", "-q", "-fdx")
        deliver(served.base, "gitea", forge.api_url, head=heads[number], number=number, action="opened", fork=True)
    key = age_key.path.read_text().split("AGE-SECRET-KEY-")[1].strip()
    for number, (what, _, names) in hostile.items():
        described = plan_status(forge, heads[number], "failure")
        assert described.startswith("invalid: ") and names in described, (what, described)
        [comment] = wait_for(lambda n=number: forge.comments_on(n), timeout=30, what=f"the comment on {what}")
        assert "invalid" in html.unescape(comment.body) and "fork" in html.unescape(comment.body), what
        assert key not in comment.body, what
    # a push naming a fork's commit is refused: only the branch deploys
    status, answer = http("POST", f"{served.base}/webhook", **_push(heads[9]))
    done = served.finished(answer["deployment_id"]) if status == 202 else {"state": "failed"}
    assert done["state"] != "succeeded", json.dumps(done)
    assert http("GET", f"{served.base}/healthz")[0] == 200  # the deployer unharmed
    assert [d["commit"] for d in served.deployments() if d["state"] == "succeeded"] == [main]  # nothing deployed
    assert not [e for e in served.audit() if e["event"] == "secrets.decrypted" and e["commit"] != main]
    assert key not in served.log() and container_env(name)["V"] == "1"
    assert forge.errors == []


def _symlink(repo: ConfigRepo, relative: str, target: Path) -> None:
    (repo.path / relative).parent.mkdir(parents=True, exist_ok=True)
    (repo.path / relative).symlink_to(target)

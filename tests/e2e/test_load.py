"""Load (issue 12): many signed deliveries from many senders while a real deployment runs, and a flood of
unsigned ones, against a real `deployer serve` (gunicorn's web workers and the deploy worker doing real
git and compose work), with the forge's status API played by tests/servers.py.

Only behaviour is asserted (what was answered, what each deployment became, what the forge was told, how
much memory the service holds), never a time: the machine is shared.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deliveries import FORGES, Delivery, push_payload, sign
from tests.e2e.conftest import Serve
from tests.e2e.served import SECRET, Served, container_env, http, versions, wait_for
from tests.helpers import ConfigRepo, git, service
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")

SENDERS = 50
PER_SENDER = 20  # 1,000 deliveries in all
PAUSE = 0.3  # seconds between one sender's deliveries: the load lasts ~7 s, while commits land and deploy
COMMITS = 5  # made on the deploying branch while the deliveries arrive, one a second
HEALTHY_AFTER = 2  # seconds before the stack's healthcheck passes: each `up --wait` takes a few seconds
#: the kind of each sender's n-th delivery, in turn: a push of the head (a new delivery id), of an older
#: commit of the branch (stale), the redelivery of one already answered 202 (same delivery id), another branch
KINDS = ("head", "head", "head", "head", "stale", "stale", "duplicate", "duplicate", "other", "other")
FINAL = {"success", "failure", "error"}  # gitea's final states (superseded is `error`, saying so)
#: the headers that carry a signature (or GitLab's token)
SIGNED = re.compile(r"signature|token", re.IGNORECASE)
#: RSS of the service's process tree may grow by at most this much over 1,000 deliveries (generous: ~160 MiB idle)
RSS_GROWTH_LIMIT = 150 * 1024 * 1024
#: seconds the commit statuses may take to reach the forge once every deployment has finished
STATUS_WAIT = 30


class StatusesBehind(AssertionError):
    """The commit statuses had not all reached the forge STATUS_WAIT seconds after the deployments finished
    (before the outbox skipped replaced statuses, ~1,100 of 6 commits took ~6 min)."""


@dataclass
class Answered:
    kind: str
    forge: str
    sha: str
    status: int
    answer: Any
    original: Answered | None = None  # what a duplicate repeats


@dataclass
class Load:
    """What the senders and the committer share: the commits so far, and every answer."""

    main: list[str]
    other: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: list[Answered] = field(default_factory=list)
    accepted: list[tuple[Delivery, Answered]] = field(default_factory=list)  # 202s, for redelivery
    errors: list[str] = field(default_factory=list)


def test_a_thousand_mixed_deliveries_during_deployments_lose_nothing_and_coalesce(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    """50 senders, 1,000 deliveries signed as GitHub, Gitea, Forgejo and GitLab sign them, of the branch head,
    of older commits of the branch, redeliveries and pushes of another branch, while 5 commits land on the
    branch and deploy (each `up --wait` takes seconds). No 5xx and no failed connection; each answer is what
    its kind calls for; every 202's deployment ends succeeded or superseded; every commit pushed gets a final
    status; the head runs; far fewer deployments run than were accepted; the service's memory stays bounded."""
    name = f"{prefix}-app"
    repo.stack(name, {"main": service(healthy_after=HEALTHY_AFTER, environment={"VERSION": "initial"})})
    initial = repo.commit("initial")
    git(repo.path, "branch", "feature")
    served = serve()
    first = served.push(initial)
    assert served.finished(first)["state"] == "succeeded"
    rss_before = tree_rss(served.process.pid)

    load = Load(main=[initial], other=[initial])
    stop_sampling = threading.Event()
    peak = [rss_before]
    sampler = threading.Thread(target=_sample_rss, args=(served.process.pid, peak, stop_sampling), daemon=True)
    committer = threading.Thread(target=_commit, args=(repo, name, load), daemon=True)
    senders = [threading.Thread(target=_send, args=(served, load, i), daemon=True) for i in range(SENDERS)]
    sampler.start()
    committer.start()
    for thread in senders:
        thread.start()
    for thread in [committer, *senders]:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a sender hung"

    # Every delivery answered, none with a 5xx or a failed connection, each as its kind calls for.
    assert load.errors == []
    assert len(load.answered) == SENDERS * PER_SENDER
    codes = Counter(a.status for a in load.answered)
    assert all(code < 500 for code in codes), codes
    for a in load.answered:
        if a.kind in ("head", "stale"):
            assert a.status == 202, a
        elif a.kind == "duplicate":
            assert a.original is not None
            assert (a.status, a.answer["deployment_id"]) == (200, a.original.answer["deployment_id"]), a
            assert a.answer["ignored"].startswith("duplicate delivery"), a
        else:
            assert (a.status, a.answer["ignored"]) == (200, "branch feature does not deploy (only main)"), a
    assert set(FORGES) == {a.forge for a in load.answered if a.status == 202}
    kinds = Counter(a.kind for a in load.answered)
    assert min(kinds.values()) >= 150, kinds  # every kind really happened (a duplicate needs an earlier 202)
    head = load.main[-1]
    assert len(load.main) == COMMITS + 1
    pushed = {a.sha for a in load.answered if a.status == 202} | {initial}
    assert set(load.main) <= pushed, "the test itself did not push every commit it made"
    assert any(a.status == 202 and a.sha != head for a in load.answered if a.kind == "stale"), "no stale push"

    # Nothing lost: every accepted delivery's deployment reaches a final state, none failed.
    ids = {str(a.answer["deployment_id"]) for a in load.answered if a.status == 202}
    assert len(ids) == codes[202], "two accepted deliveries share a deployment"
    states = _final_states(served, ids)
    assert set(states.values()) <= {"succeeded", "superseded"}, Counter(states.values())
    wait_for(lambda: served.deployed(name) == head, timeout=120, what="the head to be deployed")
    assert container_env(name)["VERSION"] == f"load{COMMITS - 1}"

    # Coalesced: a few deployments ran compose, far fewer were even planned than were accepted.
    trail = served.audit()
    ran = {e["deployment_id"] for e in trail if e["event"] == "stack.started"} - {first}
    planned = {e["deployment_id"] for e in trail if e["event"] == "deployment.started"} - {first}
    claimed = {e["deployment_id"] for e in trail if e["event"] == "deployment.finished"} - {first}
    assert 1 <= len(ran) <= COMMITS, ran
    assert len(planned) <= len(ids) // 10, (len(planned), len(ids))

    # Memory bounded: the service's processes (gunicorn, its web workers, the deploy worker) before and after.
    stop_sampling.set()
    sampler.join(timeout=10)
    rss_after = tree_rss(served.process.pid)
    numbers = (
        f"{len(ids)} accepted, {len(claimed)} claimed by the worker, {len(planned)} planned, {len(ran)} ran compose;"
        f" RSS of the service's process tree {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after,"
        f" {peak[0] / 2**20:.1f} MiB peak; answers {dict(codes)}"
    )
    print(numbers)
    assert rss_after - rss_before <= RSS_GROWTH_LIMIT, numbers

    # Every commit pushed to the branch is told a final status at the forge; the head's says deployed.
    waiting, per_commit = _outbox(served.state)
    try:
        wait_for(lambda: _outbox(served.state)[0] == 0, timeout=STATUS_WAIT, what="every commit status to be sent")
    except AssertionError:
        left, _ = _outbox(served.state)
        raise StatusesBehind(f"{waiting} statuses waited once the deployments had finished ({per_commit} per"
                             f" commit); {STATUS_WAIT} s later {left} still did") from None  # fmt: skip
    assert forge.errors == []
    for sha in load.main:
        assert forge.latest(sha).get("deployer") in FINAL, (sha, forge.latest(sha))
    assert forge.latest(head)["deployer"] == "success"
    assert forge.latest(head)[f"deployer/{name}"] == "success"


def test_a_flood_of_unsigned_deliveries_does_not_keep_a_signed_one_out(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    """50 senders post pushes with a wrong signature, or none, as fast as they are answered (every forge's
    headers) while one signed delivery arrives: every forged one is refused 401 (no 5xx, nothing queued),
    the signed one is accepted and deployed, and its commit is told `success`."""
    name = f"{prefix}-app"
    served = serve()
    sha = versions(repo, name, value="flooded")
    stop = threading.Event()
    codes: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def flood(index: int) -> None:
        n = index
        while not stop.is_set():
            forge_name = FORGES[n % len(FORGES)]
            delivery = sign(forge_name, push_payload(forge_name, after=sha), "not-the-secret")
            if n % 5 == 0:  # no signature header at all
                unsigned = {k: v for k, v in delivery.headers.items() if not SIGNED.search(k)}
                delivery = Delivery(unsigned, delivery.body)
            n += SENDERS
            try:
                status, _ = http("POST", f"{served.base}/webhook", body=delivery.body, headers=delivery.headers)
            except OSError as error:
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                codes[status] += 1

    flooders = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(SENDERS)]
    for thread in flooders:
        thread.start()
    try:
        wait_for(lambda: sum(codes.values()) >= 200, timeout=60, what="the flood to be under way")
        deployment_id = served.push(sha)  # asserts the 202
        done = served.finished(deployment_id)
        flooded = sum(codes.values())
    finally:
        stop.set()
        for thread in flooders:
            thread.join(timeout=30)
    assert done["state"] == "succeeded", done
    assert errors == []
    assert set(codes) == {401}, codes
    assert sum(codes.values()) > flooded >= 200  # the flood went on while the signed one deployed
    assert [d["id"] for d in served.deployments()] == [deployment_id], "a forged delivery was queued"
    assert container_env(name)["VERSION"] == "flooded"
    wait_for(lambda: forge.latest(sha).get("deployer") == "success", timeout=60, what="the success status")
    assert forge.errors == []
    print(f"{sum(codes.values())} forged deliveries refused, {flooded} of them before the signed one deployed")


def _send(served: Served, load: Load, index: int) -> None:
    """One sender: PER_SENDER deliveries, its kinds and forges in turn, PAUSE seconds apart."""
    for n in range(PER_SENDER):
        kind, forge_name = KINDS[(index + n) % len(KINDS)], FORGES[(index * 3 + n) % len(FORGES)]
        original: Answered | None = None
        with load.lock:
            if kind == "duplicate" and load.accepted:
                delivery, original = load.accepted[(index * 7 + n) % len(load.accepted)]
                sha = original.sha
            else:
                kind = "head" if kind == "duplicate" else kind
                commits = load.other if kind == "other" else load.main
                sha = commits[-1] if kind != "stale" or len(commits) == 1 else commits[(index + n) % (len(commits) - 1)]
                branch = "feature" if kind == "other" else "main"
                delivery = sign(forge_name, push_payload(forge_name, after=sha, branch=branch), SECRET)
        try:
            status, answer = http("POST", f"{served.base}/webhook", body=delivery.body, headers=delivery.headers)
        except OSError as error:
            with load.lock:
                load.errors.append(f"{kind} {forge_name}: {type(error).__name__}: {error}")
            continue
        answered = Answered(kind, original.forge if original else forge_name, sha, status, answer, original)
        with load.lock:
            load.answered.append(answered)
            if status == 202 and original is None:
                load.accepted.append((delivery, answered))
        time.sleep(PAUSE)


def _commit(repo: ConfigRepo, name: str, load: Load) -> None:
    """A commit on the deploying branch (a new VERSION: its container is recreated) and one on another, each second."""
    for k in range(COMMITS):
        time.sleep(1.0)
        sha = versions(repo, name, value=f"load{k}")
        tree = git(repo.path, "rev-parse", "HEAD^{tree}")
        other = git(repo.path, "commit-tree", tree, "-p", load.other[-1], "-m", f"feature {k}")
        git(repo.path, "update-ref", "refs/heads/feature", other)
        with load.lock:
            load.main.append(sha)
            load.other.append(other)


def _final_states(served: Served, ids: set[str]) -> dict[str, str]:
    """Wait until every deployment in `ids` is finished; return each one's state."""
    states: dict[str, str] = {}

    def all_final() -> bool:
        for deployment_id in sorted(ids - states.keys()):
            state = served.deployment(deployment_id)["state"]
            if state in ("succeeded", "failed", "superseded"):
                states[deployment_id] = state
        return states.keys() == ids

    wait_for(all_final, timeout=180, what="every accepted delivery's deployment to finish")
    return states


def _outbox(state: Path) -> tuple[int, dict[str, int]]:
    """The commit statuses waiting in the outbox, in all and per commit (read-only, as
    tests.helpers.audit_trail reads the state)."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT sha, count(*) FROM status_outbox WHERE done_at IS NULL GROUP BY sha").fetchall()
    per_commit = {sha[:12]: int(count) for sha, count in rows}
    return sum(per_commit.values()), per_commit


def tree_rss(pid: int) -> int:
    """Resident memory, in bytes, of a process and all its descendants (from /proc)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):  # a child that just exited
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        peak[0] = max(peak[0], tree_rss(pid))

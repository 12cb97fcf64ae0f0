"""Everything the deployer tells the outside world, through a real `deployer serve` killed at the point
where Loki has a batch and the deployer does not know it yet: after a restart every event is in Loki
once in effect (the resend is deduplicated by Loki, as the shipper relies on), every commit has its
final status, the failure is notified, and no secret value is in any of it: Loki's lines, the commit
statuses, the notifications, the audit trail, the API, /metrics and the log.

Loki, the forge and the notification service are stand-ins that check the documented request shapes
(tests/loki.py, tests/servers.py, tests/notify_server.py); gunicorn, git, sops, age, compose and the
engine are real."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.e2e.conftest import Serve
from tests.e2e.served import SECRET, http, wait_for
from tests.e2e.test_crash import kill_hard
from tests.helpers import TEST_IMAGE, ConfigRepo, service
from tests.loki import LokiServer
from tests.notify_server import NotifyServer
from tests.servers import ForgeServer

pytestmark = pytest.mark.usefixtures("engine")

GOOD_SECRET = "told-outside-good-secret-3f9a"
BAD_SECRET = "told-outside-tag-secret-7c1e"
LOKI_TOKEN = "told-outside-loki-token-51d0"


def test_nothing_told_outside_holds_a_secret_and_a_kill_after_loki_took_a_batch_loses_nothing(
    serve: Serve, repo: ConfigRepo, forge: ForgeServer, prefix: str
) -> None:
    good, bad = f"{prefix}-good", f"{prefix}-bad"
    repo.secret("secrets/good.env", {"GOOD_TOKEN": GOOD_SECRET})
    repo.secret("secrets/bad.env", {"IMAGE_TAG": BAD_SECRET})
    repo.stack(
        good, {"main": service(environment={"TOKEN": "${GOOD_TOKEN}"})}, deployer={"secrets": ["secrets/good.env"]}
    )
    # compose names the image it cannot find in its error, the tag a secret: the error must be redacted
    broken = {"image": TEST_IMAGE.rsplit(":", 1)[0] + ":${IMAGE_TAG}", "pull_policy": "never"}
    repo.stack(bad, {"main": broken}, deployer={"secrets": ["secrets/bad.env"]})
    head = repo.commit("two stacks with secrets, one that cannot start")

    loki, notify = LokiServer(token=LOKI_TOKEN), NotifyServer()
    try:
        loki.script = ["take-and-stall"]
        env = {"DEPLOYER_LOKI_URL": loki.url, "DEPLOYER_LOKI_TOKEN": LOKI_TOKEN, "DEPLOYER_NOTIFY_URLS": notify.url}
        served = serve(**env)
        deployment_id = served.push(head)
        done = served.finished(deployment_id)  # while the shipper waits on Loki: deploying never does
        assert done["state"] == "failed"
        assert {s["name"]: s["state"] for s in done["stacks"]} == {good: "succeeded", bad: "failed"}
        wait_for(lambda: loki.stalled == 1 and loki.lines(), timeout=30, what="Loki to hold a batch it has taken")
        kill_hard(served)

        again = serve(**env)
        wait_for(lambda: len(loki.lines()) == len(again.audit()), timeout=90, what="every event in Loki")
        assert loki.duplicates() > 0, "the batch Loki had taken was sent again after the restart"
        assert sorted(map(json.dumps, loki.lines())) == sorted(map(json.dumps, again.audit()))
        wait_for(lambda: forge.latest(head).get("deployer") == "failure", timeout=60, what="the final status")
        assert forge.latest(head) == {"deployer": "failure", f"deployer/{good}": "success",
                                      f"deployer/{bad}": "failure"}  # fmt: skip
        wait_for(lambda: any(bad in p["title"] for p in notify.posts), timeout=60, what="the failure notified")
        assert loki.errors == [] and forge.errors == [] and notify.errors == []

        told = {
            "loki": json.dumps(loki.lines()),
            "statuses": json.dumps([vars(p) for p in forge.posted]),
            "notifications": json.dumps(notify.posts),
            "audit": json.dumps(again.audit()),
            "api": json.dumps(again.deployment(deployment_id)) + json.dumps(again.get("/api/stacks")),
            "metrics": urllib.request.urlopen(f"{again.base}/metrics", timeout=5).read().decode(),  # noqa: S310 -- loopback
            "log": served.log() + again.log(),
        }
        for where, text in told.items():
            for value in (GOOD_SECRET, BAD_SECRET, SECRET, LOKI_TOKEN, forge.token):
                assert value not in text, f"{value!r} in {where}"
        error = next(s["error"] for s in again.deployment(deployment_id)["stacks"] if s["name"] == bad)
        assert "***" in error, f"the compose error names the image, its secret tag redacted: {error}"
        assert http("GET", f"{again.base}/readyz")[1]["warnings"] == []
    finally:
        loki.close()
        notify.close()

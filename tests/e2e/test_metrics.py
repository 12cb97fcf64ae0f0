"""A real Prometheus (Debian's `prometheus`) scraping `/metrics` of a real `deployer serve` with two
gunicorn web workers: counts made by either worker add up in every scrape, survive a web worker
killed and replaced, and the state store's values (deployments, stack durations, the queue) are the
same whichever worker answers. Real git, compose and engine; the forge is tests/servers.py's stand-in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.deliveries import push_payload, sign
from tests.e2e.conftest import Serve
from tests.e2e.served import SECRET, Served, free_port, http, versions, wait_for
from tests.helpers import ConfigRepo, require_tool

pytestmark = pytest.mark.usefixtures("engine")


class Prometheus:
    """prometheus on loopback scraping one target every second; queried through its HTTP API."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
                  "scrape_configs": [{"job_name": "deployer", "static_configs": [{"targets": [target]}]}]}  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self._log = (tmp_path / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [require_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self._ready, timeout=30, what="prometheus to start")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> dict[str, float]:
        """An instant query's samples, keyed by their labels (without job and instance) as JSON."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        found = {}
        for sample in body["data"]["result"]:
            labels = {k: v for k, v in sample["metric"].items() if k not in ("job", "instance")}
            found[json.dumps(labels, sort_keys=True)] = float(sample["value"][1])
        return found

    def value(self, expr: str) -> float | None:
        found = self.query(expr)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)

    def target_health(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/targets", timeout=5) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        return str(targets[0]["health"]) if targets else "none"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[list[Prometheus]]:
    started: list[Prometheus] = []
    yield started
    for server in started:
        server.stop()


def web_workers(served: Served) -> list[int]:
    """The gunicorn web workers' pids: the master's children but the deploy worker (`python -m deployer worker`)."""
    pgrep = subprocess.run(["pgrep", "-P", str(served.process.pid)], capture_output=True, text=True, check=False)
    children = pgrep.stdout.split()
    found = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:  # it exited since pgrep saw it (the worker this test killed)
            continue
        if b"-m" not in cmdline:
            found.append(pid)
    return found


def multiprocess_dir(served: Served) -> Path:
    """The counters' directory `deployer serve` made at start: in the environment the deploy worker was
    started with (the master's /proc/PID/environ shows only what it was started with itself)."""
    pgrep = subprocess.run(["pgrep", "-P", str(served.process.pid)], capture_output=True, text=True, check=False)
    for pid in pgrep.stdout.split():
        if b"-m" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            for pair in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if pair.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                    return Path(pair.split(b"=", 1)[1].decode())
    raise AssertionError("no deploy worker with PROMETHEUS_MULTIPROC_DIR in its environment")


def bad_signatures(served: Served, count: int) -> None:
    """`count` deliveries with a wrong signature, from 8 senders at once, so both web workers answer some."""
    delivery = sign("gitea", push_payload("gitea", after="e" * 40), "not-the-secret")

    def send(_: int) -> int:
        return http("POST", f"{served.base}/webhook", body=delivery.body, headers=delivery.headers)[0]

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, range(count))) == {401}


def test_prometheus_scrapes_two_web_workers_and_their_counts_add_up(
    serve: Serve, repo: ConfigRepo, prefix: str, tmp_path: Path, prometheus_for: list[Prometheus]
) -> None:
    name = f"{prefix}-app"
    head = versions(repo, name, value="1")
    served = serve()
    assert len(web_workers(served)) == 2, "deployer serve runs two web workers"
    assert served.finished(served.push(head))["state"] == "succeeded"
    other = sign("gitea", push_payload("gitea", after="f" * 40, branch="feature"), SECRET)
    assert http("POST", f"{served.base}/webhook", body=other.body, headers=other.headers)[0] == 200
    bad_signatures(served, 40)
    metrics_dir = multiprocess_dir(served)
    counted = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
    assert len(counted) == 2, f"both web workers counted deliveries: {counted}"

    prometheus = Prometheus(tmp_path, f"127.0.0.1:{served.port}")
    prometheus_for.append(prometheus)
    rejected = 'sum(deployer_webhook_deliveries_total{outcome="rejected",reason="signature",forge="gitea"})'
    wait_for(lambda: prometheus.value(rejected) == 40, timeout=30, what="40 rejected deliveries in Prometheus")
    assert prometheus.value('deployer_webhook_deliveries_total{outcome="accepted",reason="queued"}') == 1
    assert prometheus.value('deployer_webhook_deliveries_total{outcome="ignored",reason="other_branch"}') == 1
    assert prometheus.value('deployer_deployments_total{trigger="webhook",result="succeeded"}') == 1
    assert prometheus.value(f'deployer_stack_deploy_duration_seconds_count{{stack="{name}"}}') == 1
    assert prometheus.value(f'deployer_stack_deployments_total{{stack="{name}",result="succeeded"}}') == 1
    last = prometheus.value(f'deployer_stack_last_success_timestamp_seconds{{stack="{name}"}}')
    assert last is not None and abs(last - time.time()) < 300
    assert prometheus.value("deployer_queue_depth") == 0
    assert prometheus.value('deployer_build_info{version="0.1.0"}') == 1
    assert prometheus.value("deployer_state_store_up") == 1
    wait_for(lambda: prometheus.value("deployer_statuses_waiting") == 0, timeout=30, what="statuses delivered")
    assert prometheus.target_health() == "up"

    # A web worker killed: gunicorn replaces it and marks it dead; what it counted is still counted.
    victim = web_workers(served)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(w := web_workers(served)) == 2 and victim not in w, timeout=30, what="a new web worker")
    bad_signatures(served, 10)
    wait_for(lambda: prometheus.value(rejected) == 50, timeout=30, what="50 rejected deliveries after the kill")

    # A restart starts the counts again (a new directory; the old one is removed), never from a stale file.
    served.stop()
    assert not metrics_dir.exists()
    again = serve()
    answer = urllib.request.urlopen(f"{again.base}/metrics", timeout=5).read().decode()  # noqa: S310 -- loopback
    assert 'reason="signature"' not in answer
    assert f'deployer_stack_deployments_total{{result="succeeded",stack="{name}"}} 1.0' in answer

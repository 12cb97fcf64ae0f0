"""A complete `deployer serve` for a benchmark: started on loopback, pushed to, polled, stopped."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import _common as c
from tests.deliveries import push_payload, sign

SECRET = "bench-push-secret"  # noqa: S105 -- a throwaway HMAC key for a loopback service


def get(base: str, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{base}{path}", timeout=10) as answer:  # noqa: S310 -- loopback
        found: dict[str, object] = json.load(answer)
    return found


def push(base: str, sha: str, before: str, *, forge: str = "gitea") -> tuple[str, float]:
    """Deliver a signed push of `sha` as `forge` sends it; return the deployment id and when the answer came (epoch)."""
    delivery = sign(forge, push_payload(forge, after=sha, before=before), SECRET)
    request = urllib.request.Request(f"{base}/webhook", data=delivery.body, headers=delivery.headers,  # noqa: S310
                                     method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 -- loopback
        return str(json.load(answer)["deployment_id"]), time.time()


def finished(base: str, deployment_id: str, *, timeout: float = 600) -> float:
    """Poll the deployment every 5 ms until it is done; return when it was seen succeeded (epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = get(base, f"/api/deployments/{deployment_id}")["state"]
        if state == "succeeded":
            return time.time()
        if state in ("failed", "superseded"):
            raise RuntimeError(f"deployment {deployment_id} {state}: {get(base, f'/api/deployments/{deployment_id}')}")
        time.sleep(0.005)
    raise TimeoutError(f"deployment {deployment_id} not finished in {timeout} s")


@contextmanager
def serving(env: dict[str, str], port: int, log_path: Path) -> Iterator[str]:
    """The complete `deployer serve` on loopback `port`, answering, until the block ends; yields its base URL."""
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        served = subprocess.Popen([c.deployer_exe(), "serve", "--bind", f"127.0.0.1:{port}"],
                                  env={"DEPLOYER_WEBHOOK_SECRET": SECRET, **env}, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    get(base, "/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield base
        finally:
            served.terminate()
            served.wait(timeout=60)

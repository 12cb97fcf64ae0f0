"""The state directory on a disk that fills up or turns read-only under a running `deployer serve`:
deliveries are answered 503 (the forge shows it) and queue nothing, /readyz says why, no deployment
starts unrecorded, one under way is resumed once the disk takes writes again, and nothing recorded
before is lost. The disk is a real tmpfs mounted for the test (root); git, compose and the engine are real."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deliveries import push_payload, sign
from tests.e2e.conftest import Serve
from tests.e2e.served import SECRET, Served, http, versions, wait_for
from tests.helpers import ConfigRepo, service

pytestmark = pytest.mark.usefixtures("engine")


class Disk:
    """An ext4 filesystem in a file on a loop device, mounted `errors=remount-ro` where `deployer serve` keeps
    its state (tests/conftest.py tool_environ: tmp_path/state). `fail()` makes ext4 take it read-only as on
    an I/O error (its own trigger_fs_error), open files and all; `repair()` checks and mounts it again."""

    def __init__(self, tmp_path: Path) -> None:
        self.image = tmp_path / "state.img"
        self.path = tmp_path / "state"
        self.path.mkdir()
        with self.image.open("wb") as out:
            out.truncate(96 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)], check=True)
        self.mount()

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path)], check=True)
        self.device = Path(subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.path)], capture_output=True,
                                          text=True, check=True).stdout.strip())  # fmt: skip

    def fail(self) -> None:
        Path(f"/sys/fs/ext4/{self.device.name}/trigger_fs_error").write_text("1")

    def repair(self) -> None:
        # the service's processes have exited; the kernel may take a moment to let go of their files
        wait_for(lambda: subprocess.run(["umount", str(self.path)], capture_output=True, check=False).returncode == 0,
                 timeout=30, what="the failed disk to unmount")  # fmt: skip
        subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True, check=False)  # 1: fixed
        self.mount()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def state_disk(tmp_path: Path) -> Iterator[Disk]:
    probe = subprocess.run(["losetup", "-f"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        message = f"no loop device for a test filesystem (needs root): {probe.stderr.strip()}"
        if os.environ.get("DEPLOYER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    disk = Disk(tmp_path)
    yield disk
    disk.close()


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk refuses another byte; the WAL is emptied first, so the next
    transaction must grow it."""
    with contextlib.closing(sqlite3.connect(disk / "state.db")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):  # down to the last byte
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
    finally:
        os.close(fd)
    return ballast


def deliver(served: Served, after: str) -> tuple[int, object]:
    delivery = sign(served.forge, push_payload(served.forge, after=after, before="1" * 40), SECRET)
    return http("POST", f"{served.base}/webhook", body=delivery.body, headers=delivery.headers)


def test_a_full_or_read_only_state_disk_refuses_deliveries_and_loses_nothing(
    state_disk: Disk, serve: Serve, repo: ConfigRepo, prefix: str
) -> None:
    name = f"{prefix}-app"
    first = versions(repo, name, value="1")
    served = serve()
    assert served.finished(served.push(first))["state"] == "succeeded"
    wait_for(lambda: http("GET", f"{served.base}/readyz")[0] == 200, timeout=30, what="ready")
    recorded = served.audit()

    # Full: the delivery is refused with a 503, nothing is queued, /readyz says the disk is full.
    second = versions(repo, name, value="2")
    ballast = fill(state_disk.path)
    status, answer = deliver(served, second)
    assert status == 503, answer
    assert isinstance(answer, dict) and answer["error"] == "state_unavailable"
    assert "cannot be written" in answer["message"]
    status, ready = http("GET", f"{served.base}/readyz")
    assert status == 503 and any("KiB free" in p for p in ready["problems"]), ready
    assert [d["commit"] for d in served.deployments()] == [first], "nothing was queued"
    time.sleep(6)  # a heartbeat or two fails meanwhile; the deploy worker waits instead of dying
    ballast.unlink()
    deployed = served.finished(served.push(second))
    assert deployed["state"] == "succeeded" and deployed["commit"] == second

    # Full while a deployment is under way: its stack's result cannot be recorded; once the disk has room
    # again the deployment is resumed and finishes, recorded once.
    repo.stack(name, {"main": service(environment={"VERSION": "3"}, healthy_after=4)})
    slow = repo.commit("v3, slow to become healthy")
    running = served.push(slow)
    wait_for(lambda: served.deployment(running)["state"] == "running", timeout=60, what="the deployment to start")
    ballast = fill(state_disk.path)
    time.sleep(8)  # the stack comes up meanwhile
    ballast.unlink()
    done = served.finished(running, timeout=180)
    assert done["state"] == "succeeded" and done["commit"] == slow
    mine = [e["event"] for e in served.audit() if e["deployment_id"] == running]
    assert "deployment.resumed" in mine and mine.count("deployment.finished") == 1, mine
    resumed = next(e for e in served.audit() if e["event"] == "deployment.resumed" and e["deployment_id"] == running)
    assert "state store" in resumed["reason"]
    log = served.log()
    assert "no deployment starts until the state store can be written again" in log
    assert "Traceback" not in log, "a store that cannot be written is said in one line, not a crash"
    recorded = served.audit()

    # Read-only, as ext4 makes a disk after an I/O error: 503s and /readyz say so; after a repair and a
    # restart everything recorded before is there and the branch head deploys.
    fourth = versions(repo, name, value="4")
    state_disk.fail()
    status, answer = deliver(served, fourth)
    assert status == 503 and answer["error"] == "state_unavailable", answer  # type: ignore[index]
    status, ready = http("GET", f"{served.base}/readyz")
    assert status == 503 and any("read-only" in p for p in ready["problems"]), ready
    served.stop()
    state_disk.repair()
    again = serve()
    assert again.audit()[: len(recorded)] == recorded, "every event recorded before is still there, unchanged"
    assert again.finished(again.push(fourth))["state"] == "succeeded"
    assert again.deployed(name) == fourth

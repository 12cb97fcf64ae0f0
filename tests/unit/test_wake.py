"""The deploy worker's doorbell (deployer/wake.py): a real FIFO."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from deployer.wake import Doorbell


def test_a_ring_wakes_a_waiting_listener_and_rings_before_it_are_all_heard(tmp_path: Path) -> None:
    listener = Doorbell(tmp_path)
    listener.listen()
    try:
        assert listener.wait(0.05) is False
        for _ in range(3):
            Doorbell(tmp_path).ring()
        assert listener.wait(5) is True
        assert listener.wait(0.05) is False, "the earlier rings were all drained"
        threading.Timer(0.2, Doorbell(tmp_path).ring).start()
        started = time.monotonic()
        assert listener.wait(30) is True
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_a_ring_with_nobody_listening_or_a_full_fifo_never_blocks_or_raises(tmp_path: Path) -> None:
    Doorbell(tmp_path).ring()  # no FIFO at all
    listener = Doorbell(tmp_path)
    listener.listen()
    listener.close()
    Doorbell(tmp_path).ring()  # a FIFO nobody holds open
    listener.listen()
    try:
        for _ in range(70_000):  # more than a pipe holds (64 KiB)
            Doorbell(tmp_path).ring()
        assert listener.wait(1) is True
    finally:
        listener.close()


def test_listen_replaces_a_regular_file_at_its_path(tmp_path: Path) -> None:
    (tmp_path / "worker.wake").write_text("not a fifo")
    listener = Doorbell(tmp_path)
    listener.listen()
    try:
        Doorbell(tmp_path).ring()
        assert listener.wait(5) is True
    finally:
        listener.close()


def test_a_process_with_more_than_1024_files_open_still_hears_its_doorbell(tmp_path: Path) -> None:
    """select() cannot watch an fd past FD_SETSIZE (1024); the test processes and a busy worker get there."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 2048), hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    listener = Doorbell(tmp_path)
    try:
        listener.listen()
        assert listener._read is not None and listener._read > 1024
        Doorbell(tmp_path).ring()
        assert listener.wait(5) is True
    finally:
        listener.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

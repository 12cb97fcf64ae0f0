"""`deployer serve`: gunicorn's web workers plus one deploy worker process, started and stopped together.

The gunicorn master runs in this process. The deploy worker (`python -m deployer worker`, at a lower
CPU priority than the web workers) is a child process that a watcher thread restarts if it dies; it
is stopped when gunicorn stops.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from deployer.settings import Settings
from deployer.web.gunicorn_settings import gunicorn_options, prepare_metrics_dir, remove_metrics_dir

__all__ = ["serve"]

log = logging.getLogger("deployer.serve")

#: seconds between restarts of a deploy worker that keeps dying
RESTART_DELAY = 5.0
#: the deploy worker's niceness: git, sops and compose wait on the network and the engine, while a forge
#: gives up on an unanswered webhook after 10 s, so the web workers come first for the CPU
WORKER_NICENESS = 10


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from deployer.web.app import create_app  # in each web worker, after the fork

        return create_app(self.settings)


class _DeployWorker:
    """Keeps one `deployer worker` child running until stopped; a worker that crashes is restarted."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._watch, name="deploy-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

    def _watch(self) -> None:
        while not self._stop.is_set():
            argv = ["nice", "-n", str(WORKER_NICENESS), sys.executable, "-m", "deployer", "worker"]
            self._process = subprocess.Popen(argv)
            code = self._process.wait()
            if self._stop.is_set() or code == 0:
                return  # asked to stop (gunicorn passes its SIGTERM on to us as well)
            log.error("deploy worker exited with %s; restarting in %.0fs", code, RESTART_DELAY)
            self._stop.wait(RESTART_DELAY)


def serve(settings: Settings, *, bind: str) -> int:
    metrics = prepare_metrics_dir()  # before the deploy worker starts and the web workers fork
    worker = _DeployWorker()
    worker.start()
    master = os.getpid()
    try:
        _Gunicorn(settings, gunicorn_options(bind=bind)).run()
    except SystemExit as exit_:
        if os.getpid() != master:
            raise  # a web worker, forked inside run(), leaving: its exit is gunicorn's business
        return int(exit_.code or 0)
    finally:
        # Web workers unwind through here too: only the master stops the deploy worker. (A forked copy
        # would signal it as well and then wait on a lock held at fork time until gunicorn killed it.)
        if os.getpid() == master:
            worker.stop()
            remove_metrics_dir(metrics)
    return 0

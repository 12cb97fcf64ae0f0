"""gunicorn settings for the webhook service, shared by `deployer serve` and deploy/gunicorn.conf.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["gunicorn_options", "prepare_metrics_dir", "remove_metrics_dir"]

#: web worker processes; each has its own state-store connection, and none of them deploys
WORKERS = 2
#: seconds a web worker may spend on one request before the master replaces it. A delivery is
#: answered in about a millisecond; forges give up after 10 s (GitHub) or less.
REQUEST_TIMEOUT = 10
#: seconds the master gives web workers to finish when asked to stop, before it kills them
GRACEFUL_TIMEOUT = 10


#: where prometheus_client's multiprocess mode keeps each web worker's counters
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir() -> Path:
    """A new, empty directory for this run's per-worker counts, and prometheus_client pointed at it: in the
    master, before any web worker forks and before prometheus_client is imported (it chooses multiprocess
    mode at import). Not in the state directory: a full or read-only state disk must not break a request
    that only counts. The caller removes it when the service stops."""
    path = Path(tempfile.mkdtemp(prefix="deployer-metrics-"))
    os.environ[METRICS_ENV] = str(path)
    return path


def remove_metrics_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _child_exit(server: Any, worker: Any) -> None:
    """gunicorn's hook, in the master, when a web worker has exited: its live gauges go, its counts stay."""
    if os.environ.get(METRICS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def gunicorn_options(*, bind: str, workers: int = WORKERS) -> dict[str, Any]:
    """Sync workers (deployer.web.gunicorn_worker): each takes connections off the shared listening
    socket into its hall, reads them without blocking, and answers each whole request before the next,
    so deliveries are served in arrival order. Under 50 concurrent senders this halved the slowest
    acknowledgements against `gthread` workers, whose threads hand every connection between an
    accepting thread and a pool under one GIL (docs/benchmarks.md). A client that trickles its request
    holds no worker; one not whole within gunicorn_worker.REQUEST_DEADLINE gets a 408.
    """
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": "deployer.web.gunicorn_worker.SyncWorker",
        "timeout": REQUEST_TIMEOUT,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        # Webhook bodies are read whole and checked against DEPLOYER_MAX_BODY by the app itself.
        "limit_request_field_size": 16 * 1024,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "deployer",
        # gunicorn >= 25.1 opens a control socket at one path per user ($XDG_RUNTIME_DIR or ~/.gunicorn),
        # which a second service of the same user would take over; the service is run by signals instead.
        "control_socket_disable": True,
        "child_exit": _child_exit,
    }

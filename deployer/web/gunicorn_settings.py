"""gunicorn settings for the webhook service, shared by `deployer serve` and deploy/gunicorn.conf.py."""

from __future__ import annotations

from typing import Any

__all__ = ["gunicorn_options"]

#: web worker processes; each has its own state-store connection, and none of them deploys
WORKERS = 2
#: threads per web worker (gthread): a webhook is answered in milliseconds, so a few go a long way
THREADS = 16


def gunicorn_options(*, bind: str, workers: int = WORKERS) -> dict[str, Any]:
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": "gthread",
        "threads": THREADS,
        "timeout": 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        # Webhook bodies are read whole and checked against DEPLOYER_MAX_BODY by the app itself.
        "limit_request_field_size": 16 * 1024,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "deployer",
    }

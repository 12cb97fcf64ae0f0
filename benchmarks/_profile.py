"""webhook_ack's profiles: py-spy samples of ours' web workers under the load, summarized and read."""

from __future__ import annotations

import argparse
import linecache
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from benchmarks._procs import running
from benchmarks._servers import generate, start_gunicorn

PROFILE_HZ = 100


def profile_run(args: argparse.Namespace, tmp: Path, *, gil: bool) -> dict[str, Any]:
    """py-spy samples of ours' web workers under the same load: of the thread holding the GIL (`gil`: where
    Python CPU goes) or of every non-idle thread (also lock waits). Sampling slows the run."""
    where = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp))
    proc, url = start_gunicorn(where)
    raw = where / "profile.txt"
    with running(proc):
        seconds = max(2, int(args.duration) - 2)
        spy_argv = ["py-spy", "record", "--pid", str(proc.pid), "--subprocesses", "--rate", str(PROFILE_HZ),
                    "--nonblocking", *(["--gil"] if gil else []), "--duration", str(seconds), "--format", "raw",
                    "--output", str(raw)]  # fmt: skip
        spy: list[subprocess.CompletedProcess[str]] = []

        def sample() -> None:
            time.sleep(args.warmup + 1)
            spy.append(subprocess.run(spy_argv, capture_output=True, text=True, check=False))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary = generate(url, 202, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
                           out=where / "load.json", server=proc)  # fmt: skip
        sampler.join(timeout=seconds + 60)
    if not raw.exists():
        return {"error": spy[0].stderr[-500:] if spy else "py-spy did not finish", "load": summary}
    return {"load": summary, "seconds": seconds, **summarize_profile(raw)}


def _source(frame: str) -> tuple[str, str]:
    """('func (file:line)', the source line) of a py-spy frame."""
    func, _, location = frame.rpartition(" (")
    path, _, line = location.rstrip(")").rpartition(":")
    text = ""
    for base in sys.path:
        candidate = Path(base or ".") / path
        if candidate.exists():
            text = linecache.getline(str(candidate), int(line) if line.isdigit() else 0).strip()
            break
    return f"{func} ({path}:{line})", text


def summarize_profile(raw: Path) -> dict[str, Any]:
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        # the master's own samples are not a web worker's; a line that a frame's text broke has no count
        if stack.count("process ") < 2 or not frames or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf[frames[-1]] += n
        for name in {f.rpartition(" (")[0] for f in frames}:
            inclusive[name] += n
    top = [(*_source(frame), n / total) for frame, n in leaf.most_common(10)] if total else []
    kinds = {"store": "(deployer/state.py:", "close": "close_graceful ("}
    shares = {k: sum(n for frame, n in leaf.items() if mark in frame) / max(1, total) for k, mark in kinds.items()}
    watch = ["Flask.wsgi_app", "webhook", "Queue.enqueue", "write_told", "Logger.info", "Request.__init__",
             "SyncWorker.wait", "close_graceful"]  # fmt: skip
    return {"samples": total, "top": top, "shares": shares,
            "inclusive": {w: inclusive[w] / total for w in watch} if total else {}}  # fmt: skip


def profile_reading(kind: str, profile: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    inc = profile["inclusive"]
    load = profile["load"]
    if kind == "profile":
        outside = 1 - inc.get("Flask.wsgi_app", 0)
        return (
            f"CPU profile (py-spy `--gil`: the thread holding the GIL in each web worker, {PROFILE_HZ} Hz, "
            f"{profile['samples']} samples; the run slowed to {load['accepted_per_s']:.0f}/s): "
            f"{inc.get('Flask.wsgi_app', 0) * 100:.0f}% inside Flask (in the webhook handler itself "
            f"{inc.get('webhook', 0) * 100:.0f}%: `Queue.enqueue` {inc.get('Queue.enqueue', 0) * 100:.0f}%, "
            f"of which the audit event and status rows (`write_told`) {inc.get('write_told', 0) * 100:.0f}%, logging "
            f"{inc.get('Logger.info', 0) * 100:.0f}%); {outside * 100:.0f}% in gunicorn around it (request parsing "
            f"{inc.get('Request.__init__', 0) * 100:.0f}%, waiting for a connection "
            f"{inc.get('SyncWorker.wait', 0) * 100:.0f}%, closing connections "
            f"{inc.get('close_graceful', 0) * 100:.0f}%). Top lines:\n\n"
            + c.table(
                ["frame", "source line", "share"],
                [[f"`{f}`", f"`{t[:70]}`" if t else "", f"{sh * 100:.1f}%"] for f, t, sh in profile["top"]],
            )
        )
    sh = profile["shares"]
    return (
        f"Wait profile (py-spy, every non-idle thread, {PROFILE_HZ} Hz, {profile['samples']} samples; "
        f"{load['accepted_per_s']:.0f}/s): {sh['store'] * 100:.0f}% of the samples are in the state store (its "
        f"SQL, the audit event written with each delivery, and the wait for the other worker's write), "
        f"{sh['close'] * 100:.0f}% in gunicorn's `close_graceful` (where gunicorn's own sync worker waits for each "
        f"sender to close)."
    )

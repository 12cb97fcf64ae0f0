"""Closed-loop HTTP load generator for webhook receivers: N concurrent senders of signed GitHub push deliveries.

Runs as its own process (`python -m benchmarks._loadgen ...`), so that its CPU is not the server's.
Every request is a GitHub-shaped push delivery (tests/deliveries.py: push_payload + sign) with a
unique `X-GitHub-Delivery` and a unique `after` sha, signed with HMAC-SHA256 in X-Hub-Signature-256.
The bodies are built from one template (the sha substituted, then signed): the first one is checked
byte for byte against `sign()` at start, and building one costs ~10 us, so they are made on the fly.

Each sender opens a new TCP connection per delivery (as a forge does; `--keepalive` reuses one),
sends, reads the whole answer, and records the time from connect to the answer's last byte. A
warm-up phase runs first at the same concurrency and is not recorded. The summary (JSON, to --out
or stdout) has the latencies, the answer codes, errors and the generator's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import resource
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.deliveries import push_payload, sign  # noqa: E402 -- after the path fix above

PLACEHOLDER = "deadbeef" * 5
#: seconds one request may take before it counts as an error
REQUEST_TIMEOUT = 30.0


class Deliveries:
    """Signed GitHub push deliveries with unique delivery ids and `after` shas, as raw HTTP requests."""

    def __init__(self, *, url: str, secret: str, tag: str, keepalive: bool) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        self.secret = secret.encode()
        self.tag = tag
        self.keepalive = keepalive
        self.count = 0
        self.template = json.dumps(push_payload("github", after=PLACEHOLDER), indent=2).encode()
        self.placeholder = PLACEHOLDER.encode()
        # The fast path must produce exactly what tests/deliveries.py produces.
        sha, delivery_id = self._ids(0)
        reference = sign("github", push_payload("github", after=sha), secret, delivery_id=delivery_id)
        body, headers = self._build(sha, delivery_id)
        assert body == reference.body and headers == reference.headers, "delivery template drifted from sign()"

    def _ids(self, n: int) -> tuple[str, str]:
        return f"{self.tag}{n + 1:032x}", str(uuid.UUID(f"{self.tag}{n + 1:024x}"))

    def _build(self, sha: str, delivery_id: str) -> tuple[bytes, dict[str, str]]:
        body = self.template.replace(self.placeholder, sha.encode())
        mac = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery_id,
                   "X-GitHub-Hook-ID": "1", "X-Hub-Signature-256": f"sha256={mac}",
                   "User-Agent": "GitHub-Hookshot/abc"}  # fmt: skip
        return body, headers

    def next_request(self) -> bytes:
        self.count += 1
        body, headers = self._build(*self._ids(self.count))
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("Connection: keep-alive" if self.keepalive else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer; return its status code and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip().lower()
    if "content-length" in fields:
        await reader.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()  # delimited by the connection's end
        return code, False
    return code, fields.get("connection") != "close"


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.codes: Counter[int] = Counter()
        self.errors: list[str] = []


async def sender(deliveries: Deliveries, deadline: float, record: Recorder, expect: int) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < deadline:
        request = deliveries.next_request()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                if writer is None:
                    reader, writer = await asyncio.open_connection(deliveries.host, deliveries.port)
                assert reader is not None
                writer.write(request)
                code, keep = await read_answer(reader)
            took = time.perf_counter() - started
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as error:
            record.errors.append(f"{type(error).__name__}: {error}")
            reader, writer = await _close(reader, writer, wait_eof=False)
            continue
        record.latencies.append(took)
        record.codes[code] += 1
        if code != expect:
            record.errors.append(f"answer {code}")
        if not (deliveries.keepalive and keep):
            reader, writer = await _close(reader, writer, wait_eof=not keep)
    await _close(reader, writer, wait_eof=False)


async def _close(
    reader: asyncio.StreamReader | None, writer: asyncio.StreamWriter | None, *, wait_eof: bool
) -> tuple[None, None]:
    """Close a connection; after `Connection: close` let the server close first (TIME_WAIT stays there)."""
    if writer is None:
        return None, None
    try:
        if wait_eof and reader is not None:
            async with asyncio.timeout(2):
                await reader.read()
        writer.close()
        await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()
    return None, None


async def phase(deliveries: Deliveries, seconds: float, concurrency: int, expect: int) -> tuple[Recorder, float]:
    record = Recorder()
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(sender(deliveries, deadline, record, expect) for _ in range(concurrency)))
    return record, time.perf_counter() - started


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    deliveries = Deliveries(url=args.url, secret=args.secret, tag=args.tag, keepalive=args.keepalive)
    warm, _ = await phase(deliveries, args.warmup, args.concurrency, args.expect)
    before = resource.getrusage(resource.RUSAGE_SELF)
    record, elapsed = await phase(deliveries, args.duration, args.concurrency, args.expect)
    after = resource.getrusage(resource.RUSAGE_SELF)
    lat = sorted(record.latencies)
    accepted = record.codes.get(args.expect, 0)
    return {
        "url": args.url,
        "concurrency": args.concurrency,
        "keepalive": args.keepalive,
        "warmup_requests": len(warm.latencies),
        "warmup_errors": len(warm.errors),
        "requests": len(record.latencies) + sum(1 for e in record.errors if not e.startswith("answer")),
        "accepted": accepted,
        "errors": len(record.errors),
        "error_samples": sorted(Counter(record.errors).items(), key=lambda kv: -kv[1])[:5],
        "codes": {str(k): v for k, v in record.codes.items()},
        "elapsed_s": elapsed,
        "accepted_per_s": accepted / elapsed,
        "p50_ms": percentile(lat, 50) * 1000,
        "p90_ms": percentile(lat, 90) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] if lat else float("nan")) * 1000,
        "mean_ms": (statistics.fmean(lat) if lat else float("nan")) * 1000,
        "generator_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "deliveries_built": deliveries.count,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="where to POST, e.g. http://127.0.0.1:8000/webhook")
    p.add_argument("--secret", required=True, help="the HMAC secret the receiver checks")
    p.add_argument("--expect", type=int, default=202, help="the answer code that means accepted")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds first")
    p.add_argument("--keepalive", action="store_true", help="reuse connections instead of one per delivery")
    p.add_argument("--tag", default=uuid.uuid4().hex[:8], help="8 hex digits making this run's shas unique")
    p.add_argument("--out", type=Path, help="write the JSON summary here (default: stdout)")
    args = p.parse_args()
    if len(args.tag) != 8 or any(ch not in "0123456789abcdef" for ch in args.tag):
        p.error("--tag must be 8 lowercase hex digits")
    summary = asyncio.run(main_async(args))
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Generated state.db contents for record_backlog and record_scrape, in the deployer's schema: audit event
lines shaped as deployer.state writes them, a backlog of unshipped events, and a history of deployments over
many stacks with their stack rows and audit events.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.model import rfc3339
from deployer.state import StateStore, duration_bucket

SCRAPE_STACKS = 200
SCRAPE_DEPLOYMENTS = 10_000
UNSHIPPED = 1000


DEPLOYMENT_COLUMNS = (
    "id, commit_sha, ref, trigger, actor, state, created_at, started_at, finished_at, error, error_code, forge_repo,"
    " forge_api_url, superseded_by, reason, rewound_from, retry_at, requested_stacks, force"
)


def compose_output(rng: random.Random, stack: str, *, big: bool, failed: bool) -> str:
    """What `docker compose up --wait` prints, as the service keeps it: ~0.4 KB, or ~4 KB for a big stack."""
    services = [f"{stack}-{n}" for n in (["app", "worker", "web", "db", "cache", "cron", "proxy", "init"] if big
                                         else ["app"])]  # fmt: skip
    lines = [f" Network {stack}_default  Creating", f" Network {stack}_default  Created"]
    for svc in services:
        lines += [f" Container {svc}-1  {step}" for step in ("Recreate", "Recreated", "Starting", "Started")]
    for svc in services:
        lines += [f" Container {svc}-1  Waiting", f" Container {svc}-1  Healthy"]
    if big:
        lines += [f" {svc} Pulling fs layer {rng.randrange(16**12):012x}" for svc in services for _ in range(4)]
    if failed:
        lines += [f" Container {services[0]}-1  Error", f"dependency failed: container {services[0]}-1 is unhealthy"]
    return "\n".join(lines) + "\n"


@dataclass
class Rows:
    """Rows of a generated history: of `deployments`, `deployment_stacks`, and each stack's last success."""

    deployments: list[tuple[Any, ...]] = field(default_factory=list)
    stacks: list[tuple[Any, ...]] = field(default_factory=list)
    last_good: dict[str, tuple[str, str, str]] = field(default_factory=dict)


EVENT_KINDS = ("deployment.queued", "deployment.started", "stack.started", "stack.succeeded", "stack.failed",
               "deployment.finished", "request.refused", "secrets.decrypted")  # fmt: skip
APPS = ("traefik", "authentik", "postgres", "redis", "gitea", "grafana", "prometheus", "loki", "nextcloud",
        "vaultwarden", "immich", "paperless", "jellyfin", "homeassistant", "uptime-kuma", "backup", "mealie",
        "miniflux", "syncthing", "navidrome", "photoprism", "bookstack", "wikijs", "n8n", "nodered", "mosquitto",
        "zigbee2mqtt", "frigate", "adguard", "pihole", "wireguard", "tailscale", "minio", "registry", "drone",
        "woodpecker", "outline", "hedgedoc", "calibre", "audiobookshelf")  # fmt: skip


def audit_line(rng: random.Random, *, kind: str, ts_ns: int, deployment: str, commit: str, stack: str) -> str:
    """One event line as deployer.state writes it, its fields filled in so lines are 300-600 bytes."""
    line: dict[str, Any] = {"event": kind, "deployment_id": deployment, "commit": commit, "time": rfc3339(ts_ns / 1e9)}
    if kind == "deployment.queued":
        line |= {"ref": "refs/heads/main", "trigger": "webhook", "actor": "op", "reason": "push by op",
                 "forge": "github", "delivery_id": f"{rng.randrange(16**32):032x}"}  # fmt: skip
    elif kind == "deployment.started":
        line |= {"trigger": "webhook", "actor": "op", "stacks": [stack],
                 "planned": {stack: [f"changed: stacks/{stack}/compose.yaml"]}}  # fmt: skip
    elif kind.startswith("stack."):
        line |= {"stack": stack, "action": "deploy", "result": kind.split(".")[1],
                 "duration_ms": rng.randrange(800, 60_000)}  # fmt: skip
        if kind == "stack.failed":
            line |= {"reason": "HealthCheckFailed", "error": f"stack {stack}: service {stack}-app did not become "
                                                             "healthy within 60 s"}  # fmt: skip
    elif kind == "secrets.decrypted":
        line |= {"stack": stack, "files": [f"stacks/{stack}/secrets.env", f"stacks/{stack}/db.sops.yaml"]}
    else:
        line |= {"result": "succeeded", "trigger": "webhook", "actor": "op", "duration_ms": rng.randrange(2000, 90_000)}
    text = json.dumps(line, separators=(",", ":"))
    want = rng.randrange(300, 601)
    if len(text) < want:  # a push's own words: what the reason field holds
        line["reason"] = line.get("reason", "push by op") + ": " + " ".join(rng.choice(APPS) for _ in range(80))
        text = json.dumps(line, separators=(",", ":"))
        line["reason"] = line["reason"][: max(0, len(line["reason"]) - (len(text) - want))]
        text = json.dumps(line, separators=(",", ":"))
    return text


def backlog_store(path: Path, events: int, rng: random.Random) -> dict[str, Any]:
    """state.db (deployer's schema) with `events` unshipped audit events of the last hour, distinct, oldest first."""
    started = time.perf_counter()
    StateStore(path).close()
    now = time.time_ns()
    step = 3_600_000_000_000 // events
    rows = []
    deployment, commit = "", ""
    for i in range(events):
        kind = EVENT_KINDS[rng.choices(range(len(EVENT_KINDS)), weights=(2, 2, 4, 4, 1, 2, 0.5, 0.5))[0]]
        if kind == "deployment.queued" or not deployment:
            deployment, commit = f"{rng.randrange(16**12):012x}", f"{rng.randrange(16**40):040x}"
        stack = rng.choice(APPS)
        ts = now - 3_600_000_000_000 + i * step + rng.randrange(step // 2)
        line = audit_line(rng, kind=kind, ts_ns=ts, deployment=deployment, commit=commit, stack=stack)
        rows.append((ts, kind, deployment, stack if kind.startswith(("stack.", "secrets.")) else None, "op", line))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO audit_events (ts_ns, event, deployment_id, stack, actor, line)"
                       " VALUES (?, ?, ?, ?, ?, ?)", rows)  # fmt: skip
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sizes = [len(r[5].encode()) for r in rows]
    return {"built_s": time.perf_counter() - started, "events": events, "min_bytes": min(sizes),
            "max_bytes": max(sizes), "median_bytes": statistics.median(sizes), "line_mib": sum(sizes) / 2**20,
            "db_mib": path.stat().st_size / 2**20}  # fmt: skip


def stack_names(count: int) -> list[str]:
    suffixes = ("", "-db", "-cache", "-worker", "-backup")
    return [f"{app}{suffix}" for suffix in suffixes for app in APPS][:count]


@dataclass
class _History(Rows):
    """The rows of a generated history and what the report says of them."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)


STACK_COLUMNS = ("deployment_id, position, name, action, reasons, state, reason, started_at, finished_at, error, "
                 "output, depends_on, duration_ms, duration_bucket")  # fmt: skip


def _one_deployment(h: _History, rng: random.Random, names: list[str], weights: list[float], at: float) -> None:
    """One deployment of the generated history: its row, its stack rows and its audit events."""
    did, sha = f"{rng.randrange(16**12):012x}", f"{rng.randrange(16**40):040x}"
    state = rng.choices(("succeeded", "failed", "superseded"), weights=(80, 12, 8))[0]
    trigger = rng.choices(("webhook", "poll", "manual", "cli"), weights=(85, 10, 4, 1))[0]
    clock = at + rng.uniform(0.05, 2.0)
    told_: list[tuple[str, str | None, float]] = [("deployment.queued", None, at), ("deployment.started", None, clock)]
    if state != "superseded":
        told_ += _stack_rows(h, rng, did, sha, _chosen(rng, names, weights), failing=state == "failed", clock=clock)
        clock = told_[-1][2]
    finished = clock + 0.1
    h.deployments.append((did, sha, "refs/heads/main", trigger, "op", state, rfc3339(at), rfc3339(at + 0.05),
                          rfc3339(finished), None, "HealthCheckFailed" if state == "failed" else None, None, None,
                          f"{rng.randrange(16**40):040x}" if state == "superseded" else None, "push by op", "[]",
                          None, "[]", 0))  # fmt: skip
    for i, (kind, stack, at_s) in enumerate([*told_, ("deployment.finished", None, finished)]):
        ts = int(at_s * 1e9) + i
        line = audit_line(rng, kind=kind, ts_ns=ts, deployment=did, commit=sha, stack=stack or names[0])
        h.events.append((ts, kind, did, stack, "op", line, ts / 1e9 + 2))


def _chosen(rng: random.Random, names: list[str], weights: list[float]) -> list[str]:
    """3-8 distinct stacks, the often-changed ones more likely."""
    chosen: list[str] = []
    wanted = rng.randint(3, 8)
    while len(chosen) < wanted:
        pick = rng.choices(names, weights=weights)[0]
        if pick not in chosen:
            chosen.append(pick)
    return chosen


def _stack_rows(h: _History, rng: random.Random, did: str, sha: str, chosen: list[str], *, failing: bool,
                clock: float) -> list[tuple[str, str | None, float]]:  # fmt: skip
    """The stack rows of a deployment that ran (one failed or rolled back and the rest skipped when `failing`);
    return their events: (kind, stack, when)."""
    broken = rng.randrange(len(chosen)) if failing else None
    events: list[tuple[str, str | None, float]] = []
    broke = False
    for position, name in enumerate(chosen):
        if broke:
            s_state, s0, s1 = "skipped", clock, clock
        else:
            s0, s1 = clock, clock + rng.uniform(1.5, 40.0) * (8 if rng.random() < 0.02 else 1)
            s_state = "succeeded"
            if position == broken:
                s_state, broke = rng.choices(("failed", "rolled_back"), weights=(3, 1))[0], True
            clock = s1
        h.states[s_state] = h.states.get(s_state, 0) + 1
        output = None if s_state == "skipped" else compose_output(rng, name, big=False, failed=s_state != "succeeded")
        h.stacks.append((did, position, name, "deploy", json.dumps([f"changed: stacks/{name}/compose.yaml"]), s_state,
                         "HealthCheckFailed" if s_state in ("failed", "rolled_back") else None, rfc3339(s0),
                         rfc3339(s1), None, output, "[]", round((s1 - s0) * 1000),
                         duration_bucket(round((s1 - s0) * 1000))))  # fmt: skip
        if s_state == "succeeded":
            h.last_good[name] = (sha, rfc3339(s1), did)
        events.append((f"stack.{s_state}", name, s1))
    return events


def scrape_store(path: Path, rng: random.Random) -> dict[str, Any]:
    """SCRAPE_DEPLOYMENTS deployments over SCRAPE_STACKS stacks, 10 minutes apart, with their audit events (the
    newest UNSHIPPED not shipped): the deployer's schema, every row inserted in one transaction."""
    started = time.perf_counter()
    StateStore(path).close()
    names = stack_names(SCRAPE_STACKS)
    weights = [1 / (i + 1) ** 0.8 for i in range(len(names))]  # a few change often, most rarely
    h = _History()
    epoch0 = time.time() - SCRAPE_DEPLOYMENTS * 600.0
    for number in range(SCRAPE_DEPLOYMENTS):
        _one_deployment(h, rng, names, weights, epoch0 + number * 600.0 + rng.uniform(0, 120))
    events = [(*e[:6], None if i >= len(h.events) - UNSHIPPED else e[6]) for i, e in enumerate(h.events)]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(f"INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) VALUES ({', '.join('?' * 19)})",  # noqa: S608
                       h.deployments)  # fmt: skip
        db.executemany(f"INSERT INTO deployment_stacks ({STACK_COLUMNS}) VALUES ({', '.join('?' * 14)})",  # noqa: S608
                       h.stacks)  # fmt: skip
        db.executemany("INSERT INTO stacks (name, last_good_commit, deployed_at, deployment_id) VALUES (?, ?, ?, ?)",
                       [(n, *v) for n, v in h.last_good.items()])  # fmt: skip
        db.executemany("INSERT INTO audit_events (ts_ns, event, deployment_id, stack, actor, line, shipped_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)", events)  # fmt: skip
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stacked = len({s[2] for s in h.stacks})
    return {"built_s": time.perf_counter() - started, "deployments": len(h.deployments), "stack_rows": len(h.stacks),
            "stacks": stacked, "events": len(events), "states": h.states, "db_mib": path.stat().st_size / 2**20,
            "deployment_states": {s: sum(d[5] == s for d in h.deployments)
                                  for s in ("succeeded", "failed", "superseded")}}  # fmt: skip

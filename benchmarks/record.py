"""Recording (issue 11 item 9): its cost before and after "one recorder", a Loki backlog, /metrics at scale.

Subcommands, each writing its own section of docs/benchmarks.md (`--write-docs`):
  cost     What recording costs per deployment and per accepted webhook, BEFORE (`8af9b29^`: the state store,
           an fsynced JSONL journal, statuses queued by the worker) and AFTER (the working tree), interleaved,
           with by default `b58f1c7` (the last commit with synchronous=NORMAL) and a what-if of AFTER with NORMAL
           beside them (`--trees`); each tree but the working one a `git worktree`, imported with PYTHONPATH.
           Per deployment: benchmarks/_record_child.py drives the tree's own web `Service.enqueue_push`,
           `Queue.claim` and `Worker.run_claim` (which runs `deployer.pipeline.deploy`) over a config repository
           of 5 stacks with a stack backend that succeeds at once, timing its recording calls by wrapping them.
           Per webhook: `enqueue_push` alone, and the acknowledgement of `POST /webhook` through gunicorn with
           the tree's deploy/gunicorn.conf.py (benchmarks/webhook.py's load generator) beside adnanh/webhook.
  backlog  100,000 unshipped audit events in state.db, `deployer serve` with a Loki stand-in (tests/loki.py):
           the time until Loki has them all, events/s, the peak RSS of the deploy worker and of the service.
           Baseline: the same lines pushed by a minimal `requests` loop. Targets: <= 60 s, memory bounded.
  scrape   `GET /metrics` from `deployer serve` over a state.db of 200 stacks and 10,000 deployments: repeated
           (the history part cached) and each after a new audit event (recomputed). Baseline: `GET /healthz`.
           Target: <= 50 ms.
Run from the repository root: `python -m benchmarks.record cost|backlog|scrape [--runs N] [--write-docs]
[--wait-idle]`; `--quick` makes short development runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:
    from benchmarks import _common as c
except ImportError:  # run as `python benchmarks/record.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import _common as c

from benchmarks import webhook as wh
from benchmarks.api_scale import DEPLOYMENT_COLUMNS, compose_output, percentile, request
from benchmarks.convergence import imported_from
from deployer.model import rfc3339, told
from deployer.report import metrics
from deployer.state import StateStore, duration_bucket
from tests.helpers import ConfigRepo, git, service
from tests.loki import LokiServer

#: the deployer before "One recorder (issue 11, part 1)", and that commit alone
BEFORE, CHANGE = "8af9b29^", "8af9b29"
#: the last commit whose state store used synchronous=NORMAL (cc2a733 made it FULL)
NORMAL_LAST = "b58f1c7"
CHILD = Path(__file__).with_name("_record_child.py")
STACKS_PER_DEPLOYMENT = 5
BACKLOG = 100_000
SMALL_BACKLOG = 10_000
BATCH = 500
TARGET_BACKLOG_S = 60.0
#: memory is bounded when the deploy worker's peak at BACKLOG is within this of its peak at SMALL_BACKLOG
BOUND_MIB = 10.0
TARGET_SERVICE_MIB = 150.0  # the idle service's target (benchmarks/webhook.py memory)
SAMPLE_EVERY = 0.1
SCRAPE_STACKS = 200
SCRAPE_DEPLOYMENTS = 10_000
UNSHIPPED = 1000
TARGET_SCRAPE_MS = 50.0
SEED = 11


# --------------------------------------------------------------------------------------------- the trees


@dataclass(frozen=True)
class Tree:
    """One version of the deployer: its key, a label for the report, where its code is, what `import deployer`
    found there, and the directory of a what-if `sitecustomize` put first on PYTHONPATH (or None)."""

    key: str
    label: str
    path: Path
    imported: str = ""
    what_if: str | None = None

    @property
    def pythonpath(self) -> str:
        return f"{self.what_if}:{self.path}" if self.what_if else str(self.path)


#: the revisions a tree can be, what each is (for the report) and its short name in sentences
TREES: Mapping[str, tuple[str, str, str]] = {
    "before": (BEFORE, "the parent of \"One recorder (issue 11, part 1)\": each change in the state store, then its "
               "audit line appended to `audit.jsonl` (fsynced by the deploy worker, not by the web workers), the final "
               "statuses queued by `Worker.run_claim` after the deployment", "BEFORE"),
    "change": (CHANGE, "\"One recorder\" alone: every change written with its audit events and statuses in one SQLite "
               "transaction (`Told`, `write_told`), no journal", CHANGE),
    "part3": (NORMAL_LAST, "GET /metrics (issue 11, part 3), the last commit with `synchronous=NORMAL`: one recorder, "
              "the Loki shipper, /metrics", NORMAL_LAST),
    "head": ("HEAD", "the last commit (the working tree has uncommitted changes in deployer/)", "HEAD"),
    "after": ("", "the working tree as it was during the run", "AFTER"),
    "normal": ("", "a what-if: AFTER with every state-store connection set to `PRAGMA synchronous=NORMAL` after it "
               "opens (a `sitecustomize` on PYTHONPATH; deployer/ unchanged)", "AFTER with NORMAL"),
}  # fmt: skip
WHAT_IF_NORMAL = '''"""benchmarks/record.py's what-if: the tree's state store, synchronous=NORMAL once it opens."""
import deployer.state as _state

_opened = _state.StateStore.__init__


def _normal(self, *args, **kwargs):
    _opened(self, *args, **kwargs)
    self._db.execute("PRAGMA synchronous=NORMAL")


_state.StateStore.__init__ = _normal
'''


def name_of(tree: Tree) -> str:
    return TREES[tree.key][2]


@contextmanager
def trees(tmp: Path, keys: Sequence[str]) -> Iterator[list[Tree]]:
    """The trees `keys` names: the working tree ("after", and its what-if "normal") as it is, the others as
    `git worktree`s (removed afterwards); each checked to import its own `deployer` with PYTHONPATH at it. "head"
    is left out when deployer/ has no uncommitted change (it would be the working tree again)."""
    made: list[Path] = []
    dirty = "uncommitted" in c.revision()
    what_if = tmp / "what-if-normal"
    what_if.mkdir()
    (what_if / "sitecustomize.py").write_text(WHAT_IF_NORMAL)
    try:
        found = []
        for key in keys:
            revision = TREES[key][0]
            if key in ("after", "normal"):
                found.append(Tree(key, f"working tree ({c.revision()}){', synchronous=NORMAL' * (key == 'normal')}",
                                  c.ROOT, what_if=str(what_if) if key == "normal" else None))  # fmt: skip
                continue
            if key == "head" and not dirty:
                continue
            path = tmp / f"deployer-{key}"
            git(c.ROOT, "worktree", "add", "--detach", "--quiet", str(path), revision)
            made.append(path)
            sha = git(path, "rev-parse", "--short", "HEAD")
            found.append(Tree(key, f"`{revision}` ({sha})" if revision != sha else f"`{sha}`", path))
        yield [Tree(t.key, t.label, t.path, imported_from(t.path, tmp), t.what_if) for t in found]
    finally:
        for path in made:
            subprocess.run(["git", "-C", str(c.ROOT), "worktree", "remove", "--force", str(path)], check=False,
                           capture_output=True)  # fmt: skip


def rotated(items: Sequence[Any], run: int) -> list[Any]:
    """`items` rotated by `run`: each takes every place in turn over the runs."""
    k = run % len(items)
    return [*items[k:], *items[:k]]


# ------------------------------------------------------------------------------------ cost: per deployment


def cost_repo(path: Path, commits: int) -> list[str]:
    """A config repository of 5 stacks where every commit after the first changes all five; its shas after the first."""
    repo = ConfigRepo(path)
    history = c.FastImport()
    names = [f"stack-{letter}" for letter in "abcde"]
    for number in range(commits + 1):
        text = yaml.safe_dump({"services": {"app": service(environment={"V": str(number)})}}, sort_keys=False)
        history.commit({f"stacks/{name}/compose.yaml": text for name in names})
    history.write(repo.path)
    return git(repo.path, "rev-list", "--reverse", "main").split()[1:]


def run_child(tree: Tree, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """benchmarks/_record_child.py with PYTHONPATH at `tree`; its JSON answer."""
    out = cwd / f"child-{os.urandom(4).hex()}.json"
    environ = {**os.environ, **(env or {}), "PYTHONPATH": tree.pythonpath}
    result = subprocess.run([sys.executable, str(CHILD), *argv, "--out", str(out)], cwd=cwd, env=environ,
                            capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{tree.key}: {CHILD.name} {argv[0]} exited {result.returncode}:\n{result.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return found


def measure_deployments(args: argparse.Namespace, tmp: Path, found: list[Tree], quiet: wh.Quiet) -> dict[str, Any]:
    """Rounds of K deployments per tree and stack parallelism, each a fresh child process and state dir."""
    shas = cost_repo(tmp / "config", args.warm_deployments + args.deployments)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t.key: {"4": [], "1": []} for t in found}
    webhooks: dict[str, list[float]] = {t.key: [] for t in found}
    wrapped: dict[str, list[str]] = {}
    synchronous: dict[str, str] = {}
    variants = [(t, p) for t in found for p in ("4", "1")]
    for run in range(args.rounds):
        for tree, parallel in rotated(variants, run):
            quiet.before_run()
            state = Path(tempfile.mkdtemp(prefix=f"{tree.key}-{parallel}-", dir=tmp)) / "state"
            answer = run_child(tree, ["deploy", "--repo", str(tmp / "config"), "--state", str(state), "--commits",
                                      ",".join(shas), "--warmup", str(args.warm_deployments), "--webhooks",
                                      str(args.webhooks)],
                               cwd=state.parent, env={"DEPLOYER_MAX_PARALLEL": parallel})  # fmt: skip
            quiet.after_run()
            if not answer["deployer"].startswith(str(tree.path)):
                raise RuntimeError(f"{tree.key}: the child imported deployer from {answer['deployer']}")
            results[tree.key][parallel] += answer["deployments"]
            webhooks[tree.key] += answer["webhook_ms"]
            wrapped[tree.key] = answer["wrapped"]
            synchronous[tree.key] = answer["synchronous"]
            shutil.rmtree(state.parent, ignore_errors=True)
        print(f"deployments round {run + 1}/{args.rounds}: " + ", ".join(
            f"{t.key} recording {statistics.median(_recording(results[t.key]['4'])):.2f} ms" for t in found),
            flush=True)  # fmt: skip
    return {"results": results, "webhooks": webhooks, "wrapped": wrapped, "synchronous": synchronous}


def _recording(samples: list[dict[str, Any]], phase: str = "run") -> list[float]:
    return [s[phase]["seconds_ms"].get("recording", 0.0) for s in samples]


def _phase(samples: list[dict[str, Any]], key: str, *, phase: str = "run", calls: bool = False) -> list[float]:
    return [float(s[phase]["calls" if calls else "seconds_ms"].get(key, 0)) for s in samples]


# --------------------------------------------------------------------------------------- cost: per webhook


def start_tree_gunicorn(tree: Tree, where: Path) -> tuple[wh.Proc, str, int]:
    """The tree's web side as benchmarks/webhook.py ack runs ours: gunicorn with the tree's deploy/gunicorn.conf.py,
    from the tree's directory, PYTHONPATH at it; no deploy worker."""
    port = wh.free_port()
    env = wh.ours_env(where / "state", port) | {"PYTHONPATH": tree.pythonpath}
    argv = [sys.executable, "-m", "gunicorn", "--config", str(tree.path / "deploy" / "gunicorn.conf.py")]
    proc = wh.Proc(argv, env=env, log=where / "gunicorn.log", cwd=tree.path)
    base = f"http://127.0.0.1:{port}"
    wh.answering(proc, base, f"gunicorn of {tree.key}")
    return proc, f"{base}/webhook", 202


def ack_starters(found: list[Tree]) -> dict[str, wh.Starter]:
    def baseline(where: Path) -> tuple[wh.Proc, str, int]:
        proc, url = wh.start_webhook(where)
        return proc, url, 200

    return {t.key: _gunicorn_of(t) for t in found} | {"webhook": baseline}


def _gunicorn_of(tree: Tree) -> wh.Starter:
    return lambda where: start_tree_gunicorn(tree, where)


def measure_acks(args: argparse.Namespace, tmp: Path, found: list[Tree], quiet: wh.Quiet) -> dict[str, Any]:
    """N runs of each (the three trees and adnanh/webhook), the order rotating, after one unmeasured run of each."""
    starters = ack_starters(found)
    for name, start in starters.items():
        wh.one_load(tmp, f"warm-{name}", start, args)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in starters}
    for run in range(args.runs):
        print(f"ack run {run + 1}/{args.runs}", flush=True)
        for name in rotated(list(starters), run):
            quiet.before_run()
            results[name].append(wh.one_load(tmp, f"{name}-{run}", starters[name], args))
            quiet.after_run()
            wh.show(name, results[name][-1])
    journal = {t.key: any((tmp / d / "state" / "audit.jsonl").exists() for d in os.listdir(tmp)
                          if d.startswith(f"{t.key}-")) for t in found}  # fmt: skip
    return {"results": results, "journal": journal}


def documented_ack() -> dict[str, str]:
    """The figures of docs/benchmarks.md's "Webhook acknowledgement" section as they are now (its table's cells)."""
    text = c.DOCS.read_text()
    section = text.split("<!-- benchmark:webhook_ack:start -->", 1)[-1].split("<!-- benchmark:webhook_ack:end -->")[0]
    found = {"revision": "?", "date": "?"}
    if match := re.search(r"deployer at (\S+)", section):
        found["revision"] = match.group(1)
    if match := re.search(r"Date: ([^;]+);", section):
        found["date"] = match.group(1).strip()
    for row in re.finditer(r"^\| (ours|adnanh/webhook): ([^|]+) \| ([^|]+) \|$", section, re.MULTILINE):
        found[f"{row.group(1)}: {row.group(2).strip()}"] = row.group(3).strip()
    return found


def _leading(cell: str) -> float:
    """The median at the start of a `median unit (min ...)` cell."""
    match = re.match(r"([\d.]+)", cell)
    return float(match.group(1)) if match else float("nan")


def measure_cost(args: argparse.Namespace, prefix: str, tmp: Path, quiet: wh.Quiet) -> dict[str, Any]:
    info = c.run_info() | {"containers": wh.running_containers()}
    with trees(tmp, args.trees.split(",")) as found:
        deployments = measure_deployments(args, tmp, found, quiet)
        acks = measure_acks(args, tmp, found, quiet)
    return {"info": info, "trees": [asdict(t) | {"path": str(t.path)} for t in found], "deployments": deployments,
            "acks": acks, "documented": documented_ack()}  # fmt: skip


def report_cost(args: argparse.Namespace, data: Mapping[str, Any], quiet: wh.Quiet) -> str:
    found = [Tree(t["key"], t["label"], Path(t["path"]), t["imported"]) for t in data["trees"]]
    d, info = data["deployments"], data["info"]
    res = d["results"]
    n = len(res[found[0].key]["4"])
    header = ["what (per deployment of 5 stacks)", *(t.label for t in found)]

    def row(label: str, pick: Callable[[list[dict[str, Any]]], list[float]], *, parallel: str = "4",
            unit: str = "ms", digits: int = 2) -> list[str]:  # fmt: skip
        cells = []
        for t in found:
            values = pick(res[t.key][parallel])
            cells.append(c.fmt(values, unit, digits=digits) if any(values) else "-")
        return [label, *cells]

    whole = [row("whole deployment: queued + claimed + `run_claim`",
                 lambda s: [x["queued"]["ms"] + x["claim"]["ms"] + x["run"]["ms"] for x in s]),
             row("`Worker.run_claim` (deploy, statuses)", lambda s: [x["run"]["ms"] for x in s]),
             row("**recording** in `run_claim` (DEPLOYER_MAX_PARALLEL=4, the default)", _recording),
             row("**recording** in `run_claim`, stacks one at a time (DEPLOYER_MAX_PARALLEL=1)", _recording,
                 parallel="1"),
             row("... of it the journal's appends (`Journal.record_many`, fsync each)",
                 lambda s: _phase(s, "detail:journal")),
             row("... of it Python's `os.fsync` calls", lambda s: _phase(s, "detail:fsync")),
             row("... of it the `Told` rows (`write_told`: audit_events, status_outbox)",
                 lambda s: _phase(s, "detail:write_told")),
             row("`os.fsync` calls", lambda s: _phase(s, "detail:fsync", calls=True), unit="", digits=0),
             row("SQLite write transactions (queued to finished)",
                 lambda s: [sum(_phase([x], "detail:transactions", phase=p, calls=True)[0]
                                for p in ("queued", "claim", "run")) for x in s], unit="", digits=0),
             row("audit events written", lambda s: [float(x["events"]) for x in s], unit="", digits=0),
             row("commit statuses queued", lambda s: [float(x["statuses"]) for x in s], unit="", digits=0),
             row("the web worker's `enqueue_push` (recording the push)", lambda s: [x["queued"]["ms"] for x in s]),
             row("state-store reads in `run_claim`", lambda s: _phase(s, "reads")),
             row("git (`Mirror`: fetch, checkouts, diffs; summed over the stack threads)", lambda s: _phase(s, "git")),
             row("catalog and plan (`load_catalog`, `make_plan`)", lambda s: _phase(s, "plan"))]  # fmt: skip
    per_call = _per_call_rows(found, res)
    hook_rows = [["`Service.enqueue_push` in one process (what a web worker records per push)",
                  *(c.fmt(d["webhooks"][t.key], "ms", digits=3) for t in found)]]  # fmt: skip
    med = {t.key: statistics.median(_recording(res[t.key]["4"])) for t in found}
    med1 = {t.key: statistics.median(_recording(res[t.key]["1"])) for t in found}
    hooks = {t.key: statistics.median(d["webhooks"][t.key]) for t in found}
    before, after = "before", "after"
    sync = d["synchronous"]
    trees_text = "\n".join(
        f"- {name_of(t)}: {t.label}, {TREES[t.key][1]}; "
        f"SQLite `synchronous={sync.get(t.key, '?')}`; imports `{_short(t.imported)}`."
        for t in found
    )  # fmt: skip
    recorded = ", ".join(f"{name_of(t)} {med[t.key]:.2f} ms" for t in found)
    return f"""## The cost of recording, before and after "one recorder" (benchmarks/record.py cost)

{len(found)} versions of the deployer, each imported with `PYTHONPATH` at its own tree (all but the working tree
`git worktree`s, removed afterwards), measured in the same run and interleaved:

{trees_text}

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; load average before: {info["load"]}; {_containers(info)}; {quiet.line()}.

**Per deployment.** benchmarks/_record_child.py, one process per tree and round ({args.rounds} rounds, the order
of trees and parallelism rotating), each with a fresh state directory, runs {args.warm_deployments} unmeasured and then
{args.deployments} measured deployments (N = {n} per tree) of a config repository of {STACKS_PER_DEPLOYMENT} stacks
in which every commit changes all five, as the service makes them: the web side's `Service.enqueue_push` of a
GitHub push of the branch head (`DEPLOYER_FORGE=github`, so statuses are queued), the deploy worker's
`Queue.claim` and `Worker.run_claim`, which runs the tree's own `deployer.pipeline.deploy` (fetch from the
repository, plan, preflight, apply, record) with `Deps.backend` a stack backend whose check, up, down and ping
succeed at once: the engine is not in the measurement, git and the plan are. **Recording** is the wall time of
the outermost of these calls the tree has, wrapped with timers in the child: `Recorder.*` (started, stack,
released / release_held, hold_or_release, secrets_decrypted, refused, finish), the `StateStore` writes
(start_deployment, record_stack, finish_deployment, release, hold, tell, supersede, set_retry), `Queue.enqueue`,
`supersede_older`, `add_statuses`, `add_statuses_of`, `Journal.record` / `record_many` and BEFORE's
`Worker._superseded`; a call inside another counts once. With the default 4 stack threads the recorder's calls
(on the deploy thread) overlap the stacks' git worktree checkouts in other threads, so they include waits for
the GIL; with `DEPLOYER_MAX_PARALLEL=1` nothing else runs meanwhile. SQLite's own fsyncs are not Python calls and
not counted as such, but their wait is in the recording calls' time: in WAL mode `synchronous=NORMAL` fsyncs at
checkpoints only, `FULL` the WAL at every commit.

{c.table(header, whole)}

Per recording call (median per deployment, default parallelism):

{c.table(["call", *(t.label for t in found)], per_call)}

**Recording per deployment (median): {recorded}; AFTER {_ratio(med[after], med[before])} than BEFORE; one stack at
a time {med1[before]:.2f} -> {med1[after]:.2f} ms ({_ratio(med1[after], med1[before])}).**
{_cost_reading(found, d, med)}

**Per accepted webhook, in one process.** After its deployments, each child times {args.webhooks}
`Service.enqueue_push` calls of new pushes (fresh state directory; nothing claims them): what a web worker writes
per accepted delivery (BEFORE: the deployment, delivery and pending status in one transaction, then the
`deployment.queued` line appended without fsync; after: all of it, with the audit row, in one transaction).

{c.table(["what", *(t.label for t in found)], hook_rows)}

{_ack_text(args, data, found, hooks)}

Reproduce: `python -m benchmarks.record cost --runs {args.runs} --rounds {args.rounds} --write-docs`
"""


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-3:]) if "deployer-" in path else str(Path(path).relative_to(c.ROOT))


def _ratio(new: float, old: float) -> str:
    if not old:
        return "?"
    change = new / old - 1
    return f"{abs(change) * 100:.0f}% {'less' if change < 0 else 'more'}"


def _per_call_rows(found: list[Tree], res: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> list[list[str]]:
    names: list[str] = []
    for t in found:
        for sample in res[t.key]["4"]:
            for key in sample["run"]["calls"]:
                if "." in key and not key.startswith(("detail:", "Mirror.", "deployer.")) and key not in names:
                    names.append(key)
    reads = ("StateStore.last_good", "StateStore.held", "Queue.status_target", "Queue.meta", "Queue.latest_attempt")
    rows = []
    for name in sorted(n for n in names if n not in reads):
        cells = []
        for t in found:
            samples = res[t.key]["4"]
            calls = statistics.median(_phase(samples, name, calls=True))
            cells.append(f"{statistics.median(_phase(samples, name)):.2f} ms ({calls:g} calls)" if calls else "-")
        rows.append([f"`{name}`", *cells])
    return rows


def _cost_reading(found: list[Tree], d: Mapping[str, Any], med: Mapping[str, float]) -> str:
    res, sync = d["results"], d["synchronous"]
    before, after = "before", "after"
    fsyncs = statistics.median(_phase(res[before]["4"], "detail:fsync", calls=True))
    fsync_ms = statistics.median(_phase(res[before]["4"], "detail:fsync"))
    journal_ms = statistics.median(_phase(res[before]["4"], "detail:journal"))
    told_ms = statistics.median(_phase(res[after]["4"], "detail:write_told"))
    run = statistics.median(x["run"]["ms"] for x in res[after]["4"])
    text = (
        f"BEFORE spent {journal_ms:.2f} ms of it appending {fsyncs:.0f} journal lines, each fsynced "
        f"({fsync_ms:.2f} ms in `os.fsync`); AFTER writes the same events as rows in the transactions it makes anyway "
        f"({told_ms:.2f} ms in `write_told`)."
    )
    if "normal" in med and sync.get(after) == "FULL":
        commits = statistics.median(sum(_phase([x], "detail:transactions", phase=p, calls=True)[0]
                                        for p in ("queued", "claim", "run")) for x in res[after]["4"])  # fmt: skip
        text += (
            f" AFTER's state store has `synchronous=FULL`: each of a deployment's {commits:.0f} commits waits for an "
            f"fsync of the WAL. The same code with `NORMAL` (the what-if) records in {med['normal']:.2f} ms, so FULL "
            f"costs {med[after] - med['normal']:.2f} ms per deployment here."
        )
    return text + (
        f" Recording is a small part of a deployment whose engine work is free here: {med[after]:.2f} of the "
        f"{run:.0f} ms of `run_claim` AFTER; git (a fetch, a clean checkout, a worktree per stack) is most of the rest."
    )


def _ack_text(args: argparse.Namespace, data: Mapping[str, Any], found: list[Tree], hooks: Mapping[str, float]) -> str:
    res, doc = data["acks"]["results"], data["documented"]
    keys = [*(t.key for t in found), "webhook"]
    labels = {**{t.key: t.label for t in found}, "webhook": "adnanh/webhook"}
    measures = (("accepted deliveries per second", "accepted_per_s", "/s", 0),
                ("p50 acknowledgement", "p50_ms", "ms", 1), ("p99 acknowledgement", "p99_ms", "ms", 1),
                ("max acknowledgement", "max_ms", "ms", 1),
                ("server CPU per delivery", "server_cpu_ms_per_request", "ms", 2))  # fmt: skip
    rows = [[f"{labels[k]}: {what}", c.fmt([r[key] for r in res[k]], unit, digits=digits)]
            for k in keys for what, key, unit, digits in measures]  # fmt: skip
    rows += [[f"{labels[k]}: answers / errors (all runs)",
              f"{sum(r['requests'] for r in res[k])} / {sum(r['errors'] for r in res[k])}"] for k in keys]  # fmt: skip
    before, after = "before", "after"
    p50 = {k: statistics.median(r["p50_ms"] for r in res[k]) for k in keys}
    p99 = {k: statistics.median(r["p99_ms"] for r in res[k]) for k in keys}
    rate = {k: statistics.median(r["accepted_per_s"] for r in res[k]) for k in keys}
    doc_p50 = _leading(doc.get("ours: p50 acknowledgement", ""))
    doc_p99 = _leading(doc.get("ours: p99 acknowledgement", ""))
    doc_rate = _leading(doc.get("ours: accepted deliveries per second", ""))
    doc_hook = _leading(doc.get("adnanh/webhook: accepted deliveries per second", ""))
    met = p99[after] <= doc_p99 and p50[after] <= doc_p50
    paired = [a["p99_ms"] / b["p99_ms"] for a, b in zip(res[after], res[before], strict=True)]
    journal = data["acks"]["journal"]
    sync = data["deployments"]["synchronous"]
    per_tree = "; ".join(f"{name_of(t)} p50 {p50[t.key]:.1f} ms, p99 {p99[t.key]:.1f} ms, {rate[t.key]:.0f}/s "
                         f"(deploy worker `synchronous={sync.get(t.key, '?')}`; in one process "
                         f"{hooks[t.key]:.3f} ms per push)"
                         for t in found)  # fmt: skip
    return f"""**Per accepted webhook, over HTTP.** As `benchmarks/webhook.py ack` measures ours: {args.concurrency} concurrent
senders (benchmarks/_loadgen.py, its own process) of signed GitHub push deliveries on loopback, a new connection
each, {args.duration:g} s after {args.warmup:g} s of warm-up, against gunicorn with the tree's own
`deploy/gunicorn.conf.py` (2 web workers, no deploy worker), started from the tree with `PYTHONPATH` at it, a
fresh state directory each run; adnanh/webhook beside them as the fixed reference. One unmeasured run of each,
then N = {args.runs} runs of each, the order rotating. The BEFORE server wrote `audit.jsonl`:
{_yes(journal.get(before, False))}; AFTER: {_yes(journal.get(after, False))} (AFTER's audit events are rows).

{c.table(["what", "median (spread) over runs"], rows)}

Today's figures (docs/benchmarks.md, "Webhook acknowledgement", deployer at {doc.get("revision", "?")}, {doc.get("date", "?")}):
ours {doc.get("ours: accepted deliveries per second", "?")} accepted; p50 {doc.get("ours: p50 acknowledgement", "?")};
p99 {doc.get("ours: p99 acknowledgement", "?")}; adnanh/webhook then {doc.get("adnanh/webhook: accepted deliveries per second", "?")}.

**Target: the acknowledgement is not slower than today's figures (p50 <= {doc_p50:g} ms and p99 <= {doc_p99:g} ms).
AFTER measured p50 {p50[after]:.1f} ms, p99 {p99[after]:.1f} ms: {"met" if met else "NOT met"}.** In this run:
{per_tree}; AFTER / BEFORE p99 per run {c.fmt(paired, "x")}. Today's figure was {doc_rate:.0f}/s; adnanh/webhook
made {rate["webhook"]:.0f}/s here and {doc_hook:.0f}/s then, so the machine gave the fixed reference
{rate["webhook"] / doc_hook if doc_hook else float("nan"):.2f}x of that day's throughput.

{_ack_reading(p50, p99, rate, hooks, doc_p50=doc_p50, doc_p99=doc_p99)}"""  # noqa: E501 -- the target line stays whole


def _within(value: float, limit: float) -> str:
    return "within it" if value <= limit else f"{value - limit:.1f} MiB over it"


def _ack_reading(p50: Mapping[str, float], p99: Mapping[str, float], rate: Mapping[str, float],
                 hooks: Mapping[str, float], *, doc_p50: float, doc_p99: float) -> str:  # fmt: skip
    """What the acknowledgement figures say, from this run's medians."""
    before, after = "before", "after"
    text = "**Reading.** "
    if p50[before] > doc_p50 or p99[before] > doc_p99:
        text += (
            f"BEFORE, nearly the code today's figures were measured on, does not reach them either here (p50 "
            f"{p50[before]:.1f} ms, p99 {p99[before]:.1f} ms): the machine is slower today, so the comparison that "
            f"holds is the one within this run. "
        )
    text += (
        f"Against BEFORE, AFTER answers {rate[after] / rate[before]:.2f}x the deliveries per second, with p50 "
        f"{p50[after] - p50[before]:+.1f} ms and p99 {p99[after] - p99[before]:+.1f} ms."
    )
    if "normal" in p50:
        text += (
            f" The same code with `synchronous=NORMAL` for every connection (the what-if): "
            f"{rate['normal'] / rate[before]:.2f}x, p50 {p50['normal'] - p50[before]:+.1f} ms, p99 "
            f"{p99['normal'] - p99[before]:+.1f} ms. The web workers commit with NORMAL in both (since 158096e; "
            f"the deploy worker with FULL), so the two differ only off the acknowledgement's path: what separates "
            f"them is this run's noise. In one process a push's recording costs {hooks[before]:.3f} ms BEFORE and "
            f"{hooks[after]:.3f} ms AFTER; the rest of AFTER's p50 increase is what else runs per delivery since "
            f"BEFORE (the metrics counter, the identity gate's public-path check, the refused-request seam)."
        )
    return text


def _share(part: float, whole: float) -> str:
    if whole <= 0:
        return "none"
    return f"{min(1.0, max(0.0, part / whole)) * 100:.0f}%"


def _containers(info: Mapping[str, str]) -> str:
    """Containers on the engine while measuring: none are this benchmark's, but their healthchecks use the CPU."""
    n = info.get("containers", "?")
    return f"containers running on the engine: {n}" + (" (others', with healthchecks)" if n not in ("0", "?") else "")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


# ---------------------------------------------------------------------------------------------- backlog


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


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(rest.split()[0])
    return found


class Sampler:
    """RSS of every process of `deployer serve` every SAMPLE_EVERY seconds, by role, in a thread."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak: dict[str, int] = {}
        self.hwm: dict[str, int] = {}
        self.sum_peak = 0
        self.helper_peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_EVERY)

    def sample(self) -> None:
        total = 0
        master = wh.cmdline(self.root)
        for pid in wh.process_tree(self.root):
            cmd = wh.cmdline(pid)
            if pid == self.root:
                role = "gunicorn master"
            elif cmd[-3:] == ["-m", "deployer", "worker"]:
                role = "deploy worker"
            elif cmd == master:
                role = f"web worker {pid}"
            else:
                role = "helper"
            try:
                kib = status_kib(pid)
            except (OSError, KeyError):
                continue
            if role == "helper":
                self.helper_peak = max(self.helper_peak, kib.get("VmRSS", 0))
                continue
            total += kib.get("VmRSS", 0)
            self.peak[role] = max(self.peak.get(role, 0), kib.get("VmRSS", 0))
            self.hwm[role] = max(self.hwm.get(role, 0), kib.get("VmHWM", 0))
        self.sum_peak = max(self.sum_peak, total)
        self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def one_backlog(tmp: Path, template: Path, run: str, *, events: int) -> dict[str, Any]:
    """A fresh copy of the backlog's state.db, `deployer serve` started; until Loki has every event."""
    where = Path(tempfile.mkdtemp(prefix=f"backlog-{run}-", dir=tmp))
    state = where / "state"
    state.mkdir()
    shutil.copy(template, state / "state.db")
    repo = ConfigRepo(where / "config")
    repo.write("README.md", "no stacks\n")
    repo.commit("empty")
    loki = LokiServer()
    port = wh.free_port()
    env = c.tool_env(state, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=wh.SECRET, DEPLOYER_LOKI_URL=loki.url,
                     DEPLOYER_POLL_INTERVAL="0", DEPLOYER_PUBLIC_URL=f"http://127.0.0.1:{port}")  # fmt: skip
    try:
        started = time.monotonic()
        proc = wh.Proc([c.deployer_exe(), "serve", "--bind", f"127.0.0.1:{port}"], env=env, log=where / "serve.log")
        sampler = Sampler(proc.pid)
        first = answered = None
        with wh.running(proc):
            try:
                while len(loki.received) < events and time.monotonic() - started < 180:
                    if first is None and loki.received:
                        first = time.monotonic()
                    if answered is None and _healthy(port):
                        answered = time.monotonic()
                    if not proc.alive():
                        raise RuntimeError(f"deployer serve exited:\n{proc.log_path.read_text()[-2000:]}")
                    time.sleep(0.05)
                done = time.monotonic()
                sampler.sample()
            finally:
                sampler.stop()
        with closing(sqlite3.connect(state / "state.db")) as db:
            left = db.execute("SELECT COUNT(*) FROM audit_events WHERE shipped_at IS NULL").fetchone()[0]
        return {"seconds": done - started, "got": len(loki.received), "first_s": (first or done) - started,
                "answered_s": (answered or done) - started, "duplicates": loki.duplicates(),
                "errors": list(loki.errors), "requests": loki.requests, "unshipped_left": left,
                "peak_kib": sampler.peak, "hwm_kib": sampler.hwm,
                "sum_peak_kib": sampler.sum_peak, "helper_peak_kib": sampler.helper_peak, "samples": sampler.samples,
                "events": events}  # fmt: skip
    finally:
        loki.close()
        shutil.rmtree(where, ignore_errors=True)


def _healthy(port: int) -> bool:
    try:
        return request(port, "/healthz")[1] == 200
    except OSError:
        return False


def one_push_baseline(tmp: Path, template: Path, found: list[Tree]) -> dict[str, Any]:
    loki = LokiServer()
    try:
        answer = run_child(found[0], ["push", "--db", str(template), "--url", loki.url, "--batch", str(BATCH)], cwd=tmp)
        return answer | {"got": len(loki.received), "errors": list(loki.errors)}
    finally:
        loki.close()


def measure_backlog(args: argparse.Namespace, prefix: str, tmp: Path, quiet: wh.Quiet) -> dict[str, Any]:
    rng = random.Random(SEED)
    events = args.events
    template = tmp / "backlog.db"
    built = backlog_store(template, events, rng)
    small = tmp / "small.db"
    backlog_store(small, min(SMALL_BACKLOG, events), random.Random(SEED + 1))
    print(f"backlog: {events:,} events, lines {built['min_bytes']}-{built['max_bytes']} bytes, "
          f"state.db {built['db_mib']:.0f} MiB, built in {built['built_s']:.1f} s", flush=True)  # fmt: skip
    info = c.run_info() | {"containers": wh.running_containers()}
    pusher = [Tree("pusher", "", c.ROOT)]
    runs, baseline = [], []
    for run in range(args.runs):
        for kind in rotated(["ours", "baseline"], run):
            quiet.before_run()
            if kind == "ours":
                runs.append(one_backlog(tmp, template, str(run), events=events))
                r = runs[-1]
                print(f"backlog run {run + 1}: {r['got']:,} in {r['seconds']:.1f} s, deploy worker peak "
                      f"{r['hwm_kib'].get('deploy worker', 0) / 1024:.1f} MiB", flush=True)  # fmt: skip
            else:
                baseline.append(one_push_baseline(tmp, template, pusher))
                print(f"baseline run {run + 1}: {baseline[-1]['got']:,} in {baseline[-1]['seconds']:.1f} s", flush=True)
            quiet.after_run()
    quiet.before_run()
    smaller = one_backlog(tmp, small, "small", events=min(SMALL_BACKLOG, events))
    return {"info": info, "built": built, "runs": runs, "baseline": baseline, "small": smaller}


def report_backlog(args: argparse.Namespace, data: Mapping[str, Any], quiet: wh.Quiet) -> str:
    runs, base, info, built, small = data["runs"], data["baseline"], data["info"], data["built"], data["small"]
    events = built["events"]
    mib = 1024.0

    def role(r: Mapping[str, Any], name: str, kind: str = "hwm_kib") -> float:
        return float(r[kind].get(name, 0)) / mib

    def web(r: Mapping[str, Any]) -> float:
        return max((v for k, v in r["hwm_kib"].items() if k.startswith("web worker")), default=0) / mib

    ship = [r["seconds"] - r["first_s"] for r in runs]
    rows = [
        ["start -> Loki has all events", c.fmt([r["seconds"] for r in runs], "s")],
        ["start -> `/healthz` answers", c.fmt([r["answered_s"] for r in runs], "s")],
        ["start -> the first event at Loki", c.fmt([r["first_s"] for r in runs], "s")],
        ["first event -> last event at Loki", c.fmt(ship, "s")],
        ["events per second (first -> last)", c.fmt([events / s for s in ship], "/s", digits=0)],
        ["events per second (from start)", c.fmt([events / r["seconds"] for r in runs], "/s", digits=0)],
        ["deploy worker: peak RSS (VmHWM)", c.fmt([role(r, "deploy worker") for r in runs], "MiB", digits=1)],
        ["gunicorn master: peak RSS (VmHWM)", c.fmt([role(r, "gunicorn master") for r in runs], "MiB", digits=1)],
        ["web workers: peak RSS (VmHWM, the larger)", c.fmt([web(r) for r in runs], "MiB", digits=1)],
        ["service: peak of the summed RSS (samples every 100 ms)", c.fmt([r["sum_peak_kib"] / mib for r in runs],
                                                                          "MiB", digits=1)],
        ["baseline: the same lines pushed by a `requests` loop", c.fmt([b["seconds"] for b in base], "s")],
        ["baseline: events per second", c.fmt([b["lines"] / b["seconds"] for b in base], "/s", digits=0)],
    ]  # fmt: skip
    worst = max(r["seconds"] for r in runs)
    complete = all(r["got"] == events and not r["errors"] and r["unshipped_left"] == 0 for r in runs)
    complete_base = all(b["got"] == events and not b["errors"] for b in base)
    peak = max(role(r, "deploy worker") for r in runs)
    small_peak = role(small, "deploy worker")
    service_peak = max(r["sum_peak_kib"] for r in runs) / mib
    small_service = small["sum_peak_kib"] / mib
    bounded = peak - small_peak <= BOUND_MIB
    helper = max(r["helper_peak_kib"] for r in runs) / mib
    helper_text = f"at most {helper:.0f} MiB" if helper else "none seen"
    ratio = statistics.median(ship) / statistics.median(b["seconds"] for b in base)
    return f"""## A 100,000-event audit backlog shipped to Loki (benchmarks/record.py backlog)

A long Loki outage, over: a state.db made with `deployer.state.StateStore` (its schema) holds {events:,} audit events
never shipped, inserted with sqlite3 in one transaction: lines shaped as deployer.state writes them (queued,
started, stack results, finished, refused, secrets decrypted; their fields filled in), {built["min_bytes"]}-{built["max_bytes"]}
bytes (median {built["median_bytes"]:.0f}; {built["line_mib"]:.0f} MiB of lines, state.db {built["db_mib"]:.0f} MiB),
distinct, `ts_ns` spread over the last hour. Each run copies it into a fresh state directory and starts the
complete `deployer serve` (gunicorn master, 2 web workers, the deploy worker; `DEPLOYER_POLL_INTERVAL=0`, a config
repository with no stacks) with `DEPLOYER_LOKI_URL` at the Loki stand-in (tests/loki.py: it checks the push shape
and keeps entries as Loki does, deduplicated), in this process, polled every 50 ms. The deploy worker's shipper
sends batches of {BATCH} (deployer.report.loki). Memory: `/proc/PID/status` of every process of the service every
{SAMPLE_EVERY * 1000:.0f} ms: VmHWM is the kernel's peak RSS of a process; the summed RSS is of the four deployer
processes (short-lived helpers such as the heartbeat's `docker version` not counted: {helper_text}).
Baseline, interleaved: the same lines read from the same state.db and pushed to a fresh stand-in by a minimal
`requests` loop in batches of {BATCH} (benchmarks/_record_child.py push, its own process, timed from the first
push to the last answer): what the network and the stand-in cost alone. N = {len(runs)} runs of each, then one
run with {small["events"]:,} events to see whether memory grows with the backlog.

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; load average before: {info["load"]}; {_containers(info)}; {quiet.line()}.

{c.table(["what", "median (spread) over runs"], rows)}

Every run: Loki had all {events:,} distinct entries, none refused, state.db left nothing unshipped:
{_yes(complete)} (duplicates pushed: {", ".join(str(r["duplicates"]) for r in runs)}; push requests:
{", ".join(str(r["requests"]) for r in runs)}); baseline complete: {_yes(complete_base)}. With {small["events"]:,}
events the deploy worker peaked at {small_peak:.1f} MiB and the service's summed RSS at {small_service:.1f} MiB
({small["seconds"]:.1f} s to ship them all).

**Target: the backlog ships within {TARGET_BACKLOG_S:g} s of the start. Slowest run {worst:.1f} s:
{"met" if worst <= TARGET_BACKLOG_S and complete else "NOT met"}.** **Target: memory bounded, read as the deploy worker's
peak within {BOUND_MIB:g} MiB of its peak with a backlog {events // small["events"]} times smaller: {peak:.1f} MiB at
{events:,} vs {small_peak:.1f} MiB at {small["events"]:,}: {"met" if bounded else "NOT met"}.** The whole service
peaked at {service_peak:.1f} MiB summed RSS ({small_service:.1f} MiB with the small backlog), against the idle
service's {TARGET_SERVICE_MIB:g} MiB target (benchmarks/webhook.py memory): {_within(service_peak, TARGET_SERVICE_MIB)}.
Shipping took {ratio:.1f}x the baseline's time for
the same lines: the rest is reading each batch from SQLite, marking it shipped in a write transaction, and the
stand-in sharing this process with the poller and the sampler.

Reproduce: `python -m benchmarks.record backlog --runs {len(runs)} --write-docs`
"""  # noqa: E501 -- the target line stays whole


# ----------------------------------------------------------------------------------------------- scrape


def stack_names(count: int) -> list[str]:
    suffixes = ("", "-db", "-cache", "-worker", "-backup")
    return [f"{app}{suffix}" for suffix in suffixes for app in APPS][:count]


@dataclass
class _History:
    """The rows of a generated history and what the report says of them."""

    deployments: list[tuple[Any, ...]] = field(default_factory=list)
    stacks: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    last_good: dict[str, tuple[str, str, str]] = field(default_factory=dict)
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


@dataclass
class Probe:
    """One kind of request of the scrape run and its measurements."""

    label: str
    path: str
    before: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def hit(self, port: int) -> None:
        self.before()
        took, status, _, size = request(port, self.path)
        if status != 200:
            raise RuntimeError(f"{self.label}: GET {self.path} answered {status}")
        self.times.append(took)
        self.sizes.append(size)


def measure_scrape(args: argparse.Namespace, prefix: str, tmp: Path, quiet: wh.Quiet) -> dict[str, Any]:
    rng = random.Random(SEED)
    state = tmp / "state"
    built = scrape_store(state / "state.db", rng)
    print(f"generated {built['deployments']:,} deployments over {built['stacks']} stacks ({built['stack_rows']:,} "
          f"stack rows, {built['events']:,} audit events, {built['db_mib']:.0f} MiB) in {built['built_s']:.1f} s",
          flush=True)  # fmt: skip
    in_process = collector_costs(state / "state.db")
    queries = history_queries(state / "state.db", tmp / "what-if.db")
    repo = ConfigRepo(tmp / "config")
    repo.write("README.md", "no stacks\n")
    repo.commit("empty")
    info = c.run_info() | {"containers": wh.running_containers()}
    nobody = f"http://127.0.0.1:{wh.free_port()}"  # Loki down: the waiting events stay waiting
    env = c.tool_env(state, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=wh.SECRET, DEPLOYER_POLL_INTERVAL="0",
                     DEPLOYER_LOKI_URL=nobody, DEPLOYER_AUDIT_RETENTION_DAYS="3650")  # fmt: skip
    port = wh.free_port()
    proc = wh.Proc([c.deployer_exe(), "serve", "--bind", f"127.0.0.1:{port}"], env=env, log=tmp / "serve.log")
    wh.answering(proc, f"http://127.0.0.1:{port}", "deployer serve")
    writer = StateStore(state / "state.db")
    writes: list[float] = []

    names = stack_names(SCRAPE_STACKS)
    pick = random.Random(7)

    def new_event() -> None:
        """What a deployment of 5 stacks finishing records: their results' events and its end (the rows stay
        as they are, so the totals do not change, but the web worker reads those 5 stacks again)."""
        did = os.urandom(6).hex()
        results = [{"deployment_id": did, "commit": "c" * 40, "stack": name, "result": "succeeded"}
                   for name in pick.sample(names, 5)]  # fmt: skip
        started = time.perf_counter()
        writer.tell(told("stack.succeeded", *results) + told("deployment.finished", {"deployment_id": did}))
        writes.append(time.perf_counter() - started)

    floor_a, cached = Probe("`GET /healthz`", "/healthz"), Probe("`GET /metrics`, nothing recorded since", "/metrics")
    floor_b = Probe("`GET /healthz`", "/healthz")
    fresh = Probe("`GET /metrics` after a deployment of 5 stacks was recorded", "/metrics", before=new_event)
    try:
        with wh.running(proc):
            body = _body(port)
            for block in range(2):  # cached, fresh, cached, fresh: each half of the runs in its block
                quiet.before_run()
                _interleave([floor_a, cached], port, args.runs // 2, rng, warmup=20)
                _interleave([floor_b, fresh], port, args.runs // 2, rng, warmup=5)
                quiet.after_run()
                print(f"scrape block {block + 1}/2: cached {statistics.median(cached.times) * 1000:.1f} ms, fresh "
                      f"{statistics.median(fresh.times) * 1000:.1f} ms, healthz "
                      f"{statistics.median(floor_a.times) * 1000:.1f} ms", flush=True)  # fmt: skip
    finally:
        writer.close()
    return {"info": info, "built": built, "in_process": in_process, "queries": queries, "writes": writes,
            "body": _describe_body(body),
            "probes": [{"label": p.label, "times": p.times, "sizes": p.sizes}
                       for p in (floor_a, cached, floor_b, fresh)]}  # fmt: skip


def _interleave(probes: list[Probe], port: int, runs: int, rng: random.Random, *, warmup: int) -> None:
    """`warmup` unmeasured rounds, then `runs` rounds of each probe once, in a fresh random order every round."""
    for _ in range(warmup):
        for probe in probes:
            probe.hit(port)
            probe.times.pop()
            probe.sizes.pop()
    order = list(probes)
    for _ in range(runs):
        rng.shuffle(order)
        for probe in order:
            probe.hit(port)


def _body(port: int) -> bytes:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read()
    finally:
        conn.close()


def _describe_body(body: bytes) -> dict[str, Any]:
    lines = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    families: dict[str, int] = {}
    for line in lines:
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for suffix in ("_bucket", "_sum", "_count", "_total"):
            name = name.removesuffix(suffix)
        families[name] = families.get(name, 0) + 1
    return {"bytes": len(body), "series": len(lines), "families": families}


def collector_costs(path: Path, calls: int = 30) -> dict[str, list[float]]:
    """In this process, on the same state.db: the history's queries for every stack, the per-scrape queries, and
    rendering the whole scrape with the history unchanged, with 5 stacks changed, and read anew from nothing."""
    store = StateStore(path)
    try:
        scrape = metrics.Metrics(store, shipping=True)
        names = stack_names(SCRAPE_STACKS)

        def history() -> None:
            with store.read() as db:
                metrics._stack_totals(db, None)
                metrics._deployments(db)

        def outboxes() -> None:
            with store.read() as db:
                list(metrics._outboxes(db, now=time.time(), shipping=True))

        def changed() -> None:
            store.tell(
                told("stack.succeeded", *({"deployment_id": "x", "commit": None, "stack": n} for n in names[:5]))
            )

        def forget() -> None:
            scrape._seen = -1

        scrape.render()
        return {"history": c.timed(history, calls), "outboxes": c.timed(outboxes, calls),
                "render, history cached": c.timed(scrape.render, calls),
                "render, 5 stacks changed": c.timed(scrape.render, calls, setup=changed),
                "render, history read anew": c.timed(scrape.render, calls, setup=forget)}  # fmt: skip
    finally:
        store.close()


def _bucket_case() -> str:
    """The duration bucket as deployer/report/metrics.py's stacks query computes it."""
    return " ".join(f"WHEN duration_ms <= {round(b * 1000)} THEN {i}" for i, b in enumerate(metrics.DURATION_BUCKETS))


def history_queries(path: Path, copy: Path, calls: int = 20) -> list[tuple[str, list[float], list[str]]]:
    """The history's two queries on the same state.db, the stacks' one without its duration bucket, and two what-ifs
    on a copy (deployer/ unchanged): a covering index for the deployments' counts, a stored bucket column."""
    import inspect

    bucket = _bucket_case()
    stacks = (f"SELECT name, state, CASE {bucket} ELSE {len(metrics.DURATION_BUCKETS)} END AS bucket, COUNT(*),"  # noqa: S608 -- constants only
              " SUM(duration_ms), MAX(finished_at) FROM deployment_stacks INDEXED BY deployment_stacks_results"
              " WHERE state NOT IN ('pending', 'running') GROUP BY name, state, bucket")  # fmt: skip
    plain = ("SELECT name, state, COUNT(*), SUM(duration_ms), MAX(finished_at) FROM deployment_stacks INDEXED BY"
             " deployment_stacks_results WHERE state NOT IN ('pending', 'running') GROUP BY name, state")  # fmt: skip
    counts = ("SELECT trigger, state, COUNT(*) FROM deployments WHERE state IN ('succeeded', 'failed', 'superseded')"
              " GROUP BY trigger, state")  # fmt: skip
    if "CASE {bucket}" not in inspect.getsource(metrics._stack_totals):
        return []  # the collector no longer asks this: nothing of it to explain
    shutil.copy(path, copy)
    found = []
    with closing(sqlite3.connect(copy, isolation_level=None)) as db:

        def timed(what: str, query: str) -> None:
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}")]
            found.append((what, c.timed(lambda: db.execute(query).fetchall(), calls), plan))

        timed("the stacks' results, duration buckets and last success (`_stacks`' query)", stacks)
        timed("... the same without the duration bucket (`GROUP BY name, state`)", plain)
        timed("the deployments by trigger and result (`_history`'s first query)", counts)
        db.execute("CREATE INDEX bench_deployments_counts ON deployments (state, trigger)")
        timed("what-if: ... with an index on `deployments (state, trigger)`", counts)
        db.execute("ALTER TABLE deployment_stacks ADD COLUMN bench_bucket INTEGER")
        last = len(metrics.DURATION_BUCKETS)
        db.execute(f"UPDATE deployment_stacks SET bench_bucket = CASE {bucket} ELSE {last} END")  # noqa: S608
        db.execute("CREATE INDEX bench_results ON deployment_stacks"
                   " (name, state, bench_bucket, duration_ms, finished_at)")  # fmt: skip
        timed("what-if: the bucket stored with the row (written by `record_stack`), its index grouped by it",
              "SELECT name, state, bench_bucket, COUNT(*), SUM(duration_ms), MAX(finished_at) FROM deployment_stacks"
              " INDEXED BY bench_results WHERE state NOT IN ('pending', 'running')"
              " GROUP BY name, state, bench_bucket")  # fmt: skip
    copy.unlink(missing_ok=True)
    return found


def _queries_text(data: Mapping[str, Any]) -> str:
    queries = data["queries"]
    if not queries:
        return ""
    rows = [[what, c.fmt(times, "ms", 1000, digits=1), "<br>".join(f"`{p}`" for p in plan)]
            for what, times, plan in queries]  # fmt: skip
    ms = {what: statistics.median(times) * 1000 for what, times, _ in queries}
    names = list(ms)
    costs = data["in_process"]
    render = statistics.median(costs["render, history cached"]) * 1000
    recomputed = statistics.median(costs["render, history recomputed"]) * 1000
    return (
        f"Where a recomputed scrape's time goes (the history's queries on a copy of the same state.db, N = 20 each, "
        f"and SQLite's plan):\n\n{c.table(['query', 'median (spread)', 'EXPLAIN QUERY PLAN'], rows)}\n\n"
        f"Reading: a recomputed scrape ({recomputed:.0f} ms in process) is the cached one ({render:.0f} ms: "
        f"prometheus_client formatting {data['body']['series']:,} series) plus the history's queries. The stacks' "
        f"query reads only the covering index, but evaluates the {len(metrics.DURATION_BUCKETS)}-way `CASE` of the "
        f"duration bucket on each of the {data['built']['stack_rows']:,} stack rows and groups them in a temporary "
        f"B-tree: {ms[names[0]]:.0f} ms, {ms[names[1]]:.0f} ms without the bucket. The deployments' counts look "
        f"each of the {data['built']['deployments']:,} rows up in the table for its trigger: {ms[names[2]]:.1f} ms, "
        f"{ms[names[3]]:.1f} ms with a covering index. Storing the bucket with the row and grouping by it in the index "
        f"takes the stacks' query to {ms[names[4]]:.0f} ms."
    )


def report_scrape(args: argparse.Namespace, data: Mapping[str, Any], quiet: wh.Quiet) -> str:
    built, info, body = data["built"], data["info"], data["body"]
    probes = data["probes"]
    rows = []
    verdicts = {}
    for p in probes:
        ms = [t * 1000 for t in p["times"]]
        q = {k: percentile(ms, k) for k in (10, 90, 99)}
        target = p["label"].startswith("`GET /metrics")
        ok = statistics.median(ms) <= TARGET_SCRAPE_MS and q[90] <= TARGET_SCRAPE_MS
        if target:
            verdicts[p["label"]] = (ok, statistics.median(ms), q[90])
        rows.append([p["label"], f"{statistics.median(ms):.1f}", f"{min(ms):.1f}", f"{max(ms):.1f}", f"{q[10]:.1f}",
                     f"{q[90]:.1f}", f"{q[99]:.1f}", f"{statistics.median(p['sizes']) / 1024:.1f}",
                     ("met" if ok else "**NOT met**") if target else "-"])  # fmt: skip
    costs = [[k, c.fmt(v, "ms", 1000)] for k, v in data["in_process"].items()]
    names = {"history": "the history's queries for every stack (deployments by trigger and result; stacks' results, "
             "duration buckets and last success, over their index)",
             "outboxes": "the per-scrape queries (`_outboxes`: queue, statuses, audit events waiting, heartbeat)",
             "render, history cached": "the whole scrape (`Metrics.render`), nothing recorded since",
             "render, 5 stacks changed": "the whole scrape after results of 5 stacks were recorded (those read again)",
             "render, history read anew": "the whole scrape with the history read from nothing (a web worker's "
             "first scrape)"}  # fmt: skip
    costs = [[names.get(k, k), v] for k, v in costs]
    fam = body["families"]
    states = ", ".join(f"{n:,} {s}" for s, n in sorted(built["states"].items()))
    dstates = ", ".join(f"{n:,} {s}" for s, n in built["deployment_states"].items())
    all_met = all(v[0] for v in verdicts.values())
    verdict_text = "; ".join(f"{label}: median {m:.1f} ms, p90 {p90:.1f} ms" for label, (_, m, p90) in verdicts.items())
    return f"""## `GET /metrics` at 200 stacks and 10,000 deployments (benchmarks/record.py scrape)

A generated state.db (the deployer's schema from `deployer.state.StateStore`, rows inserted in one transaction):
{built["deployments"]:,} deployments ({dstates}; 85 % webhook, 10 % poll, 4 % manual, 1 % cli), 10 minutes
apart, over {built["stacks"]} stacks, each deployment that ran 3-8 of them (a few stacks in most, most rarely):
{built["stack_rows"]:,} stack rows ({states}) with RFC 3339 `started_at`/`finished_at`, `duration_ms` their
difference, ~0.4 KB of compose output each; {built["events"]:,} audit events (queued, started, one per stack
result, finished), the newest {UNSHIPPED:,} not shipped. state.db {built["db_mib"]:.0f} MiB, built in
{built["built_s"]:.1f} s. The complete `deployer serve` (gunicorn, 2 sync web workers, the deploy worker;
`DEPLOYER_POLL_INTERVAL=0`; `DEPLOYER_LOKI_URL` at a port nothing listens on, so the shipping gauges are in the
scrape and the waiting events stay waiting; retention 10 years so the worker prunes nothing). One client on
loopback, a new connection per request (sync workers close it), time from connect to the body's last byte.
Interleaved with `GET /healthz` (no store work: the floor), every round in a fresh random order: (a) scrapes
with nothing recorded between them, after 20 unmeasured rounds (each web worker caches the history part keyed on
the last audit event id), then (b) each scrape preceded by what a deployment of 5 random stacks finishing records
(their `stack.succeeded` events and a `deployment.finished`, `StateStore.tell` from this process,
{statistics.median(data["writes"]) * 1000:.2f} ms, not counted), so the web worker that answers reads those 5 stacks
and the deployments' counts again and renders the history anew; the two blocks twice, {args.runs // 2 * 2}
scrapes of each in all.

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; load average before: {info["load"]}; {_containers(info)}; {quiet.line()}.

{c.table(["request", "median (ms)", "min", "max", "p10", "p90", "p99", "answer (KiB)", f"target <= {TARGET_SCRAPE_MS:g} ms"], rows)}

The scrape: {body["bytes"]:,} bytes, {body["series"]:,} series ({", ".join(f"`{k}` {v}" for k, v in sorted(fam.items(), key=lambda kv: -kv[1])[:6])}, ...).

**Target: `GET /metrics` answers in <= {TARGET_SCRAPE_MS:g} ms at 200 stacks and 10,000 deployments (read as median and
p90): {"met" if all_met else "NOT met"}** ({verdict_text}).

In one process on the same state.db (N = 30 calls each; no HTTP):

{c.table(["what", "median (spread)"], costs)}

{_queries_text(data)}

Reproduce: `python -m benchmarks.record scrape --runs {args.runs // 2 * 2} --write-docs`
"""  # noqa: E501 -- the target line stays whole


# ---------------------------------------------------------------------------------------------------- main


def main() -> int:
    p = c.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("what", choices=["cost", "backlog", "scrape"])
    p.add_argument("--quick", action="store_true", help="short development runs")
    p.add_argument("--trees", default="before,part3,head,after,normal",
                   help="cost: of before (8af9b29^), change (8af9b29), part3 (b58f1c7), head, after (the working "
                   "tree), normal (after, synchronous=NORMAL); head only if deployer/ is changed")  # fmt: skip
    p.add_argument("--rounds", type=int, default=5, help="cost: child processes per tree and parallelism")
    p.add_argument("--deployments", type=int, default=10, help="cost: measured deployments per child")
    p.add_argument("--warm-deployments", type=int, default=2, help="cost: unmeasured deployments per child")
    p.add_argument("--webhooks", type=int, default=1000, help="cost: enqueue_push calls timed per child")
    p.add_argument("--duration", type=float, default=15.0, help="cost: seconds of load per acknowledgement run")
    p.add_argument("--warmup", type=float, default=2.0, help="cost: unrecorded seconds before each load run")
    p.add_argument("--concurrency", type=int, default=50, help="cost: concurrent senders")
    p.add_argument("--events", type=int, default=BACKLOG, help="backlog: audit events waiting")
    args = p.parse_args()
    if args.what == "scrape" and not any(a.split("=")[0] == "--runs" for a in sys.argv[1:]):
        args.runs = 400  # scrapes of each kind; the other subcommands' runs are services started
    if args.quick:
        args.rounds, args.deployments, args.webhooks, args.duration = 1, 3, 100, 3.0
        args.runs = {"cost": 1, "backlog": 1, "scrape": 40}[args.what]
        args.events = min(args.events, 20_000)
    jobs = {"cost": (measure_cost, report_cost), "backlog": (measure_backlog, report_backlog),
            "scrape": (measure_scrape, report_scrape)}  # fmt: skip
    measure, report = jobs[args.what]
    prefix = c.new_prefix()
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    quiet = wh.Quiet(args.wait_idle)
    try:
        with c.docker_cleanup(prefix):  # nothing is deployed, but SIGTERM still removes the worktrees and temp dir
            data = measure(args, prefix, tmp, quiet)
        saved = tmp.parent / f"{prefix}-record-{args.what}.json"
        saved.write_text(json.dumps(data, default=str, indent=1))
        print(f"raw results: {saved}")
        body = report(args, data, quiet)
        print()
        print(body)
        if args.write_docs:
            c.write_section(f"record_{args.what}", body)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A burst of 50 pushes in 5 s against the complete `deployer serve` deploying a real config repository.

Three busybox stacks; statuses go to a forge stand-in (tests/servers.py). Targets: <= 3 deployments, the last
commit deployed, a final `deployer` status on all 50 commits.
Run from the repository root: `python -m benchmarks.webhook_burst [--runs N] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/webhook_burst.py`

from benchmarks import _common as c
from benchmarks import _procs as procs
from benchmarks._procs import Quiet, http, wait_for
from benchmarks._servers import FINISHED, TimedForge, deploy_head, deploying_runs, push, serving, write_stacks
from tests.helpers import TEST_IMAGE, ConfigRepo, git

TARGET_DEPLOYMENTS = 3
BURST_PUSHES = 50
BURST_SECONDS = 5.0


def final_statuses(forge: TimedForge, shas: list[str]) -> dict[str, tuple[str, str, float]]:
    """The last `deployer` status of each commit: (state, description, arrival)."""
    last: dict[str, tuple[str, str, float]] = {}
    with forge._arrival_lock:
        for post, at in zip(forge.posted, forge.arrivals, strict=True):
            if post.context == "deployer" and post.sha in shas:
                last[post.sha] = (post.state, post.description, at)
    return last


def is_final(state: str, description: str) -> bool:
    return state == "success" or (state == "error" and description.startswith("superseded by"))


def container_env(project: str) -> dict[str, str]:
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    if len(ids) != 1:
        return {"containers": str(len(ids))}
    raw = subprocess.run(["docker", "inspect", "--format", "{{json .Config.Env}}", ids[0]], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(item.split("=", 1) for item in json.loads(raw))


def one_burst(prefix: str, tmp: Path, run: int) -> dict[str, Any]:
    where = Path(tempfile.mkdtemp(prefix=f"burst-{run}-", dir=tmp))
    names = [f"{prefix}-r{run}-{letter}" for letter in "abc"]
    values = dict.fromkeys(names, 0)
    try:
        with serving(where, names, values, "three stacks") as served:
            deploy_head(served.base, served.forge, served.repo)
            sent = send_burst(served.base, served.repo, names, values)
            return collect_burst(served.base, served.forge, served.repo, names=names, values=values, sent=sent)
    finally:
        c.remove_docker_objects(f"{prefix}-r{run}-")


def send_burst(base: str, repo: ConfigRepo, names: list[str], values: dict[str, int]) -> dict[str, Any]:
    """50 pushes in 5 s: each commits a new value for one stack's variable, then posts its signed push."""
    shas, codes, acks, before = [], [], [], repo.head()
    started = time.time()
    for i in range(BURST_PUSHES):
        delay = started + i * BURST_SECONDS / BURST_PUSHES - time.time()
        if delay > 0:
            time.sleep(delay)
        name = names[i % len(names)]
        values[name] = i + 1
        write_stacks(repo, [name], values)
        sha = repo.commit(f"push {i + 1}: {name} V={i + 1}")
        code, _, took = push(base, before=before, after=sha)
        shas.append(sha)
        codes.append(code)
        acks.append(took)
        before = sha
    return {"shas": shas, "codes": codes, "acks": acks, "started": started, "last_sent": time.time()}


def same_files(repo: ConfigRepo, commit: str | None, other: str, folder: str) -> bool:
    """Whether `folder` is the same at both commits (a stack deployed at `commit` runs what `other` has)."""
    return bool(commit) and not git(repo.path, "diff", "--name-only", str(commit), other, "--", folder)


def collect_burst(base: str, forge: TimedForge, repo: ConfigRepo, *, names: list[str], values: Mapping[str, int],
                  sent: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    shas: list[str] = sent["shas"]
    try:
        wait_for(lambda: all(is_final(s, d) for s, d, _ in final_statuses(forge, shas).values())
                 and len(final_statuses(forge, shas)) == len(shas), timeout=300, what="50 final statuses",
                 every=0.05)  # fmt: skip
        timed_out = False
    except TimeoutError:
        timed_out = True
    wait_for(lambda: all(d["state"] in FINISHED for d in http("GET", f"{base}/api/deployments?limit=100")[1]),
             timeout=300, what="every deployment to finish")  # fmt: skip
    deployments = [d for d in http("GET", f"{base}/api/deployments?limit=500")[1] if d["commit"] in shas]
    ran = [d for d in deployments if d["state"] in ("succeeded", "failed")]
    stacks = {s["name"]: s for s in http("GET", f"{base}/api/stacks")[1]}
    last = shas[-1]
    content_ok = {n: same_files(repo, stacks.get(n, {}).get("deployed_commit"), last, f"stacks/{n}") for n in names}
    env_ok = {n: container_env(n).get("V") == str(values[n]) for n in names}
    finals = final_statuses(forge, shas)
    last_deploy = next((d for d in ran if d["commit"] == last), None)
    return {
        "acks_202": sum(code == 202 for code in sent["codes"]),
        "ack_ms": [a * 1000 for a in sent["acks"]],
        "deployments_ran": len(ran),
        "ran_states": Counter(d["state"] for d in ran),
        "superseded": sum(d["state"] == "superseded" for d in deployments),
        "ran_seconds": [c.epoch(d["finished_at"]) - c.epoch(d["started_at"]) for d in ran],
        "last_deployed": bool(last_deploy and last_deploy["state"] == "succeeded"),
        "last_stack_commit": stacks.get(names[(BURST_PUSHES - 1) % len(names)], {}).get("deployed_commit") == last,
        "content_ok": all(content_ok.values()),
        "env_ok": all(env_ok.values()),
        "finals": sum(is_final(s, d) for s, d, _ in finals.values()),
        "final_kinds": Counter(s if s == "success" else f"{s}: {d.split(' by ')[0]}" for s, d, _ in finals.values()),
        "forge_errors": list(forge.errors),
        "timed_out": timed_out,
        "last_status_after_first_push": max((at for _, _, at in finals.values()), default=float("nan"))
        - sent["started"],
        "last_status_after_last_push": max((at for _, _, at in finals.values()), default=float("nan"))
        - sent["last_sent"],
        "last_commit_deployed_after_last_push": c.epoch(last_deploy["finished_at"]) - sent["last_sent"]
        if last_deploy
        else float("nan"),
        "burst_seconds": sent["last_sent"] - sent["started"],
    }


def measure_burst(args: argparse.Namespace, prefix: str, tmp: Path, quiet: Quiet) -> dict[str, Any]:
    def show(run: int, result: Mapping[str, Any]) -> None:
        print(f"burst run {run + 1}/{args.runs}: {result['deployments_ran']} deployments ran "
              f"({dict(result['ran_states'])}), {result['superseded']} superseded, last deployed "
              f"{result['last_deployed']} (env {result['env_ok']}, content {result['content_ok']}), "
              f"{result['finals']}/{BURST_PUSHES} final statuses, last status "
              f"{result['last_status_after_first_push']:.1f} s after the first push, forge errors "
              f"{len(result['forge_errors'])}", flush=True)  # fmt: skip

    return deploying_runs(args, quiet, lambda run: one_burst(prefix, tmp, run), show)


def report_burst(args: argparse.Namespace, data: Mapping[str, Any], quiet: Quiet) -> str:
    runs, info = data["runs"], data["info"]
    header = ["run", "acks 202", "deployments ran", "superseded", "last commit deployed (API / stack / env)",
              "final statuses", "forge errors", "last status after 1st push", "... after last push"]  # fmt: skip
    rows = [
        [str(i + 1), f"{r['acks_202']}/{BURST_PUSHES}", f"{r['deployments_ran']} ({_kinds(r['ran_states'])})",
         str(r["superseded"]),
         f"{_yes(r['last_deployed'])} / {_yes(r['last_stack_commit'] and r['content_ok'])} / {_yes(r['env_ok'])}",
         f"{r['finals']}/{BURST_PUSHES} ({_kinds(r['final_kinds'])})", str(len(r["forge_errors"])),
         f"{r['last_status_after_first_push']:.1f} s", f"{r['last_status_after_last_push']:.1f} s"]
        for i, r in enumerate(runs)
    ]  # fmt: skip
    summary = [
        ["deployments that ran per burst", c.fmt([r["deployments_ran"] for r in runs], "deployments", digits=0)],
        ["one deployment's duration (started -> finished)", c.fmt([t for r in runs for t in r["ran_seconds"]])],
        ["last push -> the last commit's deployment finished",
         c.fmt([r["last_commit_deployed_after_last_push"] for r in runs])],
        ["first push -> the last final status at the forge", c.fmt([r["last_status_after_first_push"] for r in runs])],
        ["last push -> the last final status at the forge", c.fmt([r["last_status_after_last_push"] for r in runs])],
        ["acknowledgement of a push during the burst", c.fmt([a for r in runs for a in r["ack_ms"]], "ms", digits=1)],
    ]  # fmt: skip
    worst = max(r["deployments_ran"] for r in runs)
    few = worst <= TARGET_DEPLOYMENTS
    last_ok = all(r["last_deployed"] and r["last_stack_commit"] and r["content_ok"] and r["env_ok"] for r in runs)
    finals_ok = all(r["finals"] == BURST_PUSHES and not r["forge_errors"] for r in runs)
    return f"""## A burst of {BURST_PUSHES} pushes in {BURST_SECONDS:g} s (benchmarks/webhook_burst.py)

The complete `deployer serve` (gunicorn master, 2 web workers, the deploy worker) deploys a real config
repository of three busybox stacks (one service each, `{TEST_IMAGE}`, `pull_policy: never`, healthcheck).
Its first commit is pushed and deployed first (not counted). Then, every {BURST_SECONDS / BURST_PUSHES * 1000:.0f} ms,
{BURST_PUSHES} times, the benchmark commits a new value of one stack's environment variable (round robin) and
posts that commit's signed GitHub push delivery. `DEPLOYER_FORGE=github`, `DEPLOYER_FORGE_API_URL` is a
`ForgeServer("github")` (tests/servers.py) in the benchmark process, `DEPLOYER_POLL_INTERVAL=0`. A run ends when
every commit's `deployer` status is final and no deployment is queued or running. "Deployments ran" counts
the burst's deployments whose state is succeeded or failed (not superseded). The last commit counts as
deployed when its deployment succeeded (API), every stack's `deployed_commit` (GET /api/stacks) has that
stack's files as at the last commit and the last push's stack is at the last commit, and every container's
environment has the last value (env). A final status is `success`, or `error` "superseded by <sha>".

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; N = {len(runs)} bursts; load average before: {info["load"]}; {quiet.line()}.

{c.table(header, rows)}

{c.table(["what", "median (spread) over runs"], summary)}

**Target: <= {TARGET_DEPLOYMENTS} deployments per burst. Measured at most {worst}: {c.met(few)}.**
**Target: the last commit deployed: {c.met(last_ok)}. Target: a final status on all {BURST_PUSHES} commits, no malformed
status: {c.met(finals_ok)}.**

Reproduce: `python -m benchmarks.webhook_burst --runs {len(runs)} --wait-idle --write-docs`
"""


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def main() -> int:
    args = c.parser(__doc__.splitlines()[0], runs=3).parse_args()
    return procs.run(args, raw="burst", section="webhook_burst", measure=measure_burst, report=report_burst)


if __name__ == "__main__":
    raise SystemExit(main())

"""A plan preview of a pull request touching 200 stacks, through the complete `deployer serve`.

A config repository of 20 stacks; a pull request adding 200 more, each of its pushes changing all 200. For
each run a new commit is pushed to the pull request (its `refs/pull/7/head` moved, as the forge does) and a
signed GitHub `pull_request` `synchronize` delivery sent; the forge's API is the stand-in of
tests/servers.py (no forge can run here), in this process, polled every 2 ms. We time from sending the delivery to:
  answered:  the webhook's 202;
  planned:   the `deployer/plan` status `pending` ("validating 200 stacks; would redeploy 200 stacks: ...")
             and the comment with the plan, edited in place (the later of the two);
  verdict:   `deployer/plan` `success` after every stack was validated with placeholder secrets
             (`docker compose config` and the host policy, DEPLOYER_MAX_PARALLEL=4 at once on 2 cores),
             and the comment edited to say so.
Each run is made twice: with the deploy worker idle, and with a deployment under way beside it (a push to
main that redeploys 20 other stacks, delivered just before the pull request's, the preview thread sharing
the 2 cores with it).
Baseline in the same run: `docker compose config --quiet` of the 200 files one after the other, the
validation a shell script or a CI job would run.
Target (issue 14): the preview posted <= 2 s after the delivery.
Run from the repository root: `python -m benchmarks.preview [--runs 5] [--write-docs] [--wait-idle]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also when run as `python benchmarks/preview.py`

from benchmarks import _common as c
from benchmarks._served import SECRET, finished, get, push, serving
from tests.deliveries import pull_payload, sign
from tests.helpers import ConfigRepo, git, service
from tests.servers import ForgeServer

STACKS = 200
BUSY = 20  # stacks on main that a push redeploys while the pull request is previewed
TARGET_POSTED = 2.0
NUMBER = 7
MODES = ("idle", "deploying")  # the deploy worker idle; a deployment of BUSY stacks under way beside the preview


def write_all(repo: ConfigRepo, names: list[str], value: str, **healthcheck: str) -> None:
    for name in names:
        app = service(environment={"VALUE": value})
        app["healthcheck"].update(healthcheck)
        repo.stack(name, {"app": app})


def write_busy(repo: ConfigRepo, names: list[str], value: str) -> None:
    """The stacks a push redeploys: checked every 5 s, not the tests' 1 s, so that the 20 running stacks do not
    load the machine with 20 health-check execs a second (an operator's are 30 s); each takes ~5 s to be healthy."""
    write_all(repo, names, value, interval="5s")


def deliver(base: str, head: str) -> float:
    payload = pull_payload("github", head=head, number=NUMBER, action="synchronize")
    delivery = sign("github", payload, SECRET, event="pull_request")
    request = urllib.request.Request(f"{base}/webhook", data=delivery.body, headers=delivery.headers,  # noqa: S310
                                     method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 -- loopback
        assert answer.status == 202 and "preview_id" in json.load(answer)
    return time.monotonic()


def running(base: str, deployment_id: str) -> bool:
    return get(base, f"/api/deployments/{deployment_id}")["state"] == "running"


def pull_request_push(repo: ConfigRepo, names: list[str], value: str) -> str:
    """A new head for the pull request, changing every stack; its refs/pull/N/head moved as the forge does."""
    git(repo.path, "checkout", "--quiet", "-B", "feature")
    write_all(repo, names, f"pr-{value}")
    head = repo.commit(f"pull request push {value}")
    git(repo.path, "update-ref", f"refs/pull/{NUMBER}/head", head)
    git(repo.path, "checkout", "--quiet", "main")
    return head


def until(check: object, deadline: float) -> float:
    assert callable(check)
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the preview did not arrive")
        time.sleep(0.002)
    return time.monotonic()


def main() -> int:
    return c.docker_main(__doc__.splitlines()[0], 5, measure)


def measure(args: argparse.Namespace, prefix: str, tmp: Path) -> int:
    repo = ConfigRepo(tmp / "config")
    names = [f"{prefix}-p{i:03d}" for i in range(STACKS)]
    busy = [f"{prefix}-b{i:02d}" for i in range(BUSY)]
    write_busy(repo, busy, "base")
    main_head = repo.commit(f"{BUSY} stacks a push redeploys; the pull request adds {STACKS} more")
    forge = ForgeServer("github")
    port = c.free_port()
    env = c.tool_env(tmp / "state", DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                     DEPLOYER_POLL_INTERVAL="0", DEPLOYER_DRIFT_INTERVAL="0", DEPLOYER_FORGE="github",
                     DEPLOYER_FORGE_API_URL=forge.api_url, DEPLOYER_FORGE_TOKEN=forge.token,
                     DEPLOYER_FORGE_REPO="ops/config")  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {m: {"answered": [], "planned": [], "verdict": []} for m in MODES}
    overlapped = 0
    try:
        with serving(env, port, tmp / "serve.log") as base:
            waited = c.wait_until_idle() if args.wait_idle else 0.0
            info = c.run_info()
            # the busy stacks deployed once, unmeasured
            finished(base, push(base, main_head, "0" * 40, forge="github")[0])
            for run in range(-1, args.runs):  # one unmeasured warm-up
                for mode in MODES:
                    deploying = None
                    if mode == "deploying":
                        write_busy(repo, busy, f"main-{run}")
                        before, main_head = main_head, repo.commit(f"redeploy {BUSY} stacks, run {run}")
                        deploying, _ = push(base, main_head, before, forge="github")
                        until(lambda d=deploying: running(base, d), time.monotonic() + 60)
                    head = pull_request_push(repo, names, f"{run}-{mode}")
                    sent = time.monotonic()
                    acked = deliver(base, head)
                    deadline = sent + 300
                    pending = until(lambda h=head: any(p.sha == h and p.state == "pending"
                                                       and p.context == "deployer/plan"
                                                       for p in list(forge.posted)), deadline)  # fmt: skip
                    comment = until(lambda h=head: any(h[:12] in c_.body for c_ in forge.comments_on(NUMBER)), deadline)
                    if deploying is not None and run >= 0 and running(base, deploying):
                        overlapped += 1
                    final = until(lambda h=head: forge.latest(h).get("deployer/plan") in ("success", "failure"),
                                  deadline)  # fmt: skip
                    assert forge.latest(head)["deployer/plan"] == "success", forge.posted[-1]
                    if deploying is not None:
                        finished(base, deploying)  # raises unless it succeeded
                    if run >= 0:
                        times[mode]["answered"].append(acked - sent)
                        times[mode]["planned"].append(max(pending, comment) - sent)
                        times[mode]["verdict"].append(final - sent)
        assert len(forge.comments_on(NUMBER)) == 1, "the comment was not edited in place"
        assert forge.errors == [], forge.errors
        said = [p.description for p in forge.posted if p.context == "deployer/plan"][-1]
    finally:
        forge.close()
    git(repo.path, "checkout", "--quiet", "feature")  # the pull request's head: the 200 stacks are there only
    files = [str(repo.path / "stacks" / n / "compose.yaml") for n in names]
    started = time.monotonic()
    for path in files:
        subprocess.run(["docker", "compose", "-f", path, "config", "--quiet"], check=True, env=env)
    bare = time.monotonic() - started
    report(args, info=info, waited=waited, times=times, overlapped=overlapped, bare=bare, said=said)
    return 0


def report(args: argparse.Namespace, *, info: dict[str, str], waited: float, times: dict[str, dict[str, list[float]]],
           overlapped: int, bare: float, said: str) -> None:  # fmt: skip
    idle, deploying = times["idle"], times["deploying"]
    rows = [
        ["delivery -> 202", c.fmt(idle["answered"], "ms", 1000, 1), c.fmt(deploying["answered"], "ms", 1000, 1)],
        ["delivery -> plan posted (`pending` status and the comment)", c.fmt(idle["planned"]),
         c.fmt(deploying["planned"])],
        ["delivery -> verdict (`success`, comment edited)", c.fmt(idle["verdict"]), c.fmt(deploying["verdict"])],
    ]  # fmt: skip
    runs = len(idle["planned"])
    worst = max(idle["planned"] + deploying["planned"])
    body = f"""## A plan preview of a pull request touching 200 stacks (benchmarks/preview.py)

A pull request adding {STACKS} stacks to a repository, each push to it changing every one's compose file, {2 * runs}
pushes to it (one unmeasured warm-up pair first), each delivered as a signed GitHub `pull_request`
`synchronize` to a running `deployer serve` (2 web workers, the deploy worker with its preview thread;
none of the 200 deployed, so every one is planned as a first deploy). Each run is made with the deploy
worker idle, and with a deployment under way: a push to main redeploying {BUSY} other stacks (health-checked
every 5 s), delivered and seen `running` just before the pull request's delivery ({overlapped} of {runs} such
previews were posted while that deployment was still running). The forge's API is the stand-in of
tests/servers.py in the benchmark's process, polled every 2 ms. The last status said: "{said}".

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; load average before: {info["load"]}; waited {waited:.0f} s for the machine to be idle

{c.table(["what", "deploy worker idle: median (spread)", f"a deployment of {BUSY} stacks under way"], rows)}

Baseline in the same run: `docker compose config --quiet` of the 200 files, one after another: {bare:.2f} s
(once).

The plan (fetch of `refs/pull/7/head`, catalog, plan, the status and the comment) is posted first; the
verdict follows once every stack it would deploy was validated like a deployment would (`docker compose
config` with placeholder secrets, then the host policy), 4 at once. Compose's own validation costs about
70-110 ms of CPU per stack here, so the verdict for 200 stacks is bound by the baseline's work spread over
2 cores; it cannot be 2 s on this machine, and the issue's 2 s is met by what is posted first.

**Target: the preview posted <= {TARGET_POSTED:g} s after the delivery. Slowest measured {worst:.2f} s:
{c.met(worst <= TARGET_POSTED)}. The verdict: median {c.stats(idle["verdict"])["median"]:.1f} s idle,
{c.stats(deploying["verdict"])["median"]:.1f} s beside a deployment.**

Reproduce: `python -m benchmarks.preview --runs {runs} --wait-idle --write-docs`
"""
    c.publish("preview", body, write_docs=args.write_docs)


if __name__ == "__main__":
    raise SystemExit(main())

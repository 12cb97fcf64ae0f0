"""A plan preview of a pull request touching 200 stacks, through the complete `deployer serve`.

A 200-stack config repository; a pull request whose head changes every stack's compose file. For each run a
new commit is pushed to the pull request (its `refs/pull/7/head` moved, as the forge does) and a signed GitHub
`pull_request` `synchronize` delivery sent; the forge's API is the stand-in of tests/servers.py (no forge can
run here), in this process, polled every 2 ms. We time from sending the delivery to:
  answered:  the webhook's 202;
  planned:   the `deployer/plan` status `pending` ("validating 200 stacks; would redeploy 200 stacks: ...")
             and the comment with the plan, edited in place (the later of the two);
  verdict:   `deployer/plan` `success` after every stack was validated with placeholder secrets
             (`docker compose config` and the host policy, DEPLOYER_MAX_PARALLEL=4 at once on 2 cores),
             and the comment edited to say so.
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
from benchmarks._served import SECRET, serving
from tests.deliveries import pull_payload, sign
from tests.helpers import ConfigRepo, git, service
from tests.servers import ForgeServer

STACKS = 200
TARGET_POSTED = 2.0
NUMBER = 7


def write_all(repo: ConfigRepo, names: list[str], value: str) -> None:
    for name in names:
        repo.stack(name, {"app": service(environment={"VALUE": value})})


def deliver(base: str, head: str) -> float:
    payload = pull_payload("github", head=head, number=NUMBER, action="synchronize")
    delivery = sign("github", payload, SECRET, event="pull_request")
    request = urllib.request.Request(f"{base}/webhook", data=delivery.body, headers=delivery.headers,  # noqa: S310
                                     method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 -- loopback
        assert answer.status == 202 and "preview_id" in json.load(answer)
    return time.monotonic()


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
    write_all(repo, names, "base")
    repo.commit(f"{STACKS} stacks")
    forge = ForgeServer("github")
    state = tmp / "state"
    port = c.free_port()
    env = c.tool_env(state, DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET, DEPLOYER_POLL_INTERVAL="0",
                     DEPLOYER_DRIFT_INTERVAL="0", DEPLOYER_FORGE="github", DEPLOYER_FORGE_API_URL=forge.api_url,
                     DEPLOYER_FORGE_TOKEN=forge.token, DEPLOYER_FORGE_REPO="ops/config")  # fmt: skip
    answered, planned, verdict = [], [], []
    try:
        with serving(env, port, tmp / "serve.log") as base:
            waited = c.wait_until_idle() if args.wait_idle else 0.0
            info = c.run_info()
            for run in range(-1, args.runs):  # one unmeasured warm-up
                git(repo.path, "checkout", "--quiet", "-B", "feature")
                write_all(repo, names, f"pr-{run}")
                head = repo.commit(f"pull request push {run}")
                git(repo.path, "update-ref", f"refs/pull/{NUMBER}/head", head)
                git(repo.path, "checkout", "--quiet", "main")
                sent = time.monotonic()
                acked = deliver(base, head)
                deadline = sent + 300
                pending = until(lambda h=head: any(p.sha == h and p.state == "pending" and p.context == "deployer/plan"
                                                   for p in list(forge.posted)), deadline)  # fmt: skip
                comment = until(lambda h=head: any(h[:12] in c_.body for c_ in forge.comments_on(NUMBER)), deadline)
                final = until(lambda h=head: forge.latest(h).get("deployer/plan") in ("success", "failure"), deadline)
                assert forge.latest(head)["deployer/plan"] == "success", forge.posted[-1]
                if run >= 0:
                    answered.append(acked - sent)
                    planned.append(max(pending, comment) - sent)
                    verdict.append(final - sent)
        assert len(forge.comments_on(NUMBER)) == 1, "the comment was not edited in place"
        assert forge.errors == [], forge.errors
        said = [p.description for p in forge.posted if p.context == "deployer/plan"][-1]
    finally:
        forge.close()
    files = [str(repo.path / "stacks" / n / "compose.yaml") for n in names]
    started = time.monotonic()
    for path in files:
        subprocess.run(["docker", "compose", "-f", path, "config", "--quiet"], check=True, env=env)
    bare = time.monotonic() - started
    report(args, info=info, waited=waited, answered=answered, planned=planned, verdict=verdict, bare=bare, said=said)
    return 0


def report(args: argparse.Namespace, *, info: dict[str, str], waited: float, answered: list[float],
           planned: list[float], verdict: list[float], bare: float, said: str) -> None:  # fmt: skip
    rows = [
        ["delivery -> 202", c.fmt(answered, "ms", 1000, 1)],
        ["delivery -> plan posted (`pending` status and the comment)", c.fmt(planned)],
        ["delivery -> verdict (`success`, comment edited)", c.fmt(verdict)],
        ["baseline: `docker compose config --quiet` of the 200 files, one after another", f"{bare:.2f} s (once)"],
    ]
    worst = max(planned)
    body = f"""## A plan preview of a pull request touching 200 stacks (benchmarks/preview.py)

A {STACKS}-stack repository; a pull request whose head changes every stack's compose file, {len(planned)}
pushes to it (one unmeasured warm-up first), each delivered as a signed GitHub `pull_request`
`synchronize` to a running `deployer serve` (2 web workers, the deploy worker with its preview thread;
nothing deployed, so every stack is planned as a first deploy). The forge's API is the stand-in of
tests/servers.py in the benchmark's process, polled every 2 ms. The last status said: "{said}".

- Machine: {c.machine_line(info)}
- Date: {info["date"]}; load average before: {info["load"]}; waited {waited:.0f} s for the machine to be idle

{c.table(["what", "median (spread)"], rows)}

The plan (fetch of `refs/pull/7/head`, catalog, plan, the status and the comment) is posted first; the
verdict follows once every stack it would deploy was validated like a deployment would (`docker compose
config` with placeholder secrets, then the host policy), 4 at once. Compose's own validation costs about
70-110 ms of CPU per stack here, so the verdict for 200 stacks is bound by the baseline's work spread over
2 cores; it cannot be 2 s on this machine, and the issue's 2 s is met by what is posted first.

**Target: the preview posted <= {TARGET_POSTED:g} s after the delivery. Slowest measured {worst:.2f} s:
{c.met(worst <= TARGET_POSTED)}. The verdict: median {sorted(verdict)[len(verdict) // 2]:.1f} s.**

Reproduce: `python -m benchmarks.preview --runs {len(planned)} --wait-idle --write-docs`
"""
    c.publish("preview", body, write_docs=args.write_docs)


if __name__ == "__main__":
    raise SystemExit(main())

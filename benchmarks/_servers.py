"""The servers the webhook and recording benchmarks start, and the load they send them.

Ours: gunicorn with deploy/gunicorn.conf.py (the web side of `deployer serve`, no deploy worker) or the
complete `deployer serve`; the baseline: adnanh/webhook checking the same HMAC. The load: benchmarks/_loadgen.py
in its own process, with the server's CPU time per request added. For a service that deploys: a forge
stand-in noting when each status arrived, and pushes of a config repository's commits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import _common as c
from benchmarks._procs import Proc, Quiet, http, running, wait_for
from tests.deliveries import push_payload, sign
from tests.helpers import TEST_IMAGE, ConfigRepo, service
from tests.servers import ForgeServer

SECRET = "bench-webhook-secret"  # noqa: S105 -- a throwaway HMAC key for loopback servers
GUNICORN_CONF = c.ROOT / "deploy" / "gunicorn.conf.py"
FINISHED = ("succeeded", "failed", "superseded")
#: starts a server in a directory: (the process, the URL to post deliveries to, the answer that accepts)
Starter = Callable[[Path], tuple[Proc, str, int]]
Run = TypeVar("Run")


def ours_env(state: Path, port: int, **extra: str) -> dict[str, str]:
    return c.tool_env(
        state, DEPLOYER_BIND=f"127.0.0.1:{port}", DEPLOYER_REPO_URL=extra.pop("repo", str(state.parent / "none")),
        DEPLOYER_WEBHOOK_SECRET=SECRET, DEPLOYER_FORGE="github",
        DEPLOYER_FORGE_API_URL=extra.pop("api", "http://127.0.0.1:9"), DEPLOYER_POLL_INTERVAL="0", **extra,
    )  # fmt: skip


def answering(proc: Proc, base: str, what: str) -> None:
    """Wait until a just-started server answers /healthz; stop it if it never does."""
    try:
        wait_for(lambda: proc.alive() and http("GET", f"{base}/healthz", timeout=2)[0] == 200, timeout=60,
                 what=f"{what} to answer /healthz")  # fmt: skip
    except BaseException:
        proc.stop()
        print(proc.log_path.read_text()[-2000:], file=sys.stderr)
        raise


def start_gunicorn(tmp: Path, *, state: Path | None = None, workers: int | None = None,
                   options: Sequence[str] = ()) -> tuple[Proc, str]:  # fmt: skip
    """Ours, web side only: gunicorn with deploy/gunicorn.conf.py, as `deployer serve` runs it, no deploy worker.

    `options` are gunicorn command-line options, which override the configuration file's."""
    port = c.free_port()
    state = state or tmp / "state"
    env = ours_env(state, port, **({"WEB_CONCURRENCY": str(workers)} if workers else {}))
    argv = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), *options]
    proc = Proc(argv, env=env, log=tmp / "gunicorn.log")
    base = f"http://127.0.0.1:{port}"
    answering(proc, base, "gunicorn")
    return proc, f"{base}/webhook"


def start_serve(tmp: Path, *, repo_url: str, forge: ForgeServer) -> tuple[Proc, str]:
    """Ours complete: `deployer serve` (gunicorn master, 2 web workers, the deploy worker)."""
    port = c.free_port()
    base = f"http://127.0.0.1:{port}"
    env = ours_env(tmp / "state", port, repo=repo_url, api=forge.api_url, DEPLOYER_FORGE_TOKEN=forge.token,
                   DEPLOYER_PUBLIC_URL=base)  # fmt: skip
    proc = Proc([c.deployer_exe(), "serve", "--bind", f"127.0.0.1:{port}"], env=env, log=tmp / "serve.log")
    answering(proc, base, "deployer serve")
    return proc, base


def start_webhook(tmp: Path) -> tuple[Proc, str]:
    """adnanh/webhook: a hook that checks X-Hub-Signature-256 (HMAC-SHA256, same secret) and runs /bin/true."""
    exe = shutil.which("webhook")
    if exe is None:
        raise SystemExit("adnanh/webhook is not installed: apt-get install -y webhook")
    hook = {
        "id": "deploy", "execute-command": "/bin/true", "command-working-directory": str(tmp),
        "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": SECRET,
                                   "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},
    }  # fmt: skip
    hooks = tmp / "hooks.json"
    hooks.write_text(json.dumps([hook]))
    port = c.free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = Proc([exe, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)], env=env,
                log=tmp / "webhook.log")  # fmt: skip

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc.alive()

    try:
        wait_for(listening, timeout=30, what="webhook to listen")
    except BaseException:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{port}/hooks/deploy"


def ours(**options: Any) -> Starter:
    """Ours as a Starter: `start_gunicorn` with `options`, accepting with 202."""

    def start(where: Path) -> tuple[Proc, str, int]:
        proc, url = start_gunicorn(where, **options)
        return proc, url, 202

    return start


def start_baseline(where: Path) -> tuple[Proc, str, int]:
    """adnanh/webhook as a Starter, accepting with 200."""
    proc, url = start_webhook(where)
    return proc, url, 200


def generate(url: str, expect: int, *, concurrency: int, duration: float, warmup: float, out: Path,
             server: Proc, keepalive: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run the load generator (its own process) against a server; add the server's CPU time per request."""
    argv = [sys.executable, "-m", "benchmarks._loadgen", "--url", url, "--secret", SECRET, "--expect", str(expect),
            "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup),
            "--tag", os.urandom(4).hex(), "--out", str(out), *(["--keepalive"] if keepalive else [])]  # fmt: skip
    cpu_before = server.tree_cpu()
    result = subprocess.run(argv, cwd=c.ROOT, capture_output=True, text=True, check=False,
                            timeout=duration + warmup + 180)  # fmt: skip
    cpu_after = server.tree_cpu()
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    summary: dict[str, Any] = json.loads(out.read_text())
    sent = max(1, summary["deliveries_built"])
    summary["server_user_ms_per_request"] = (cpu_after[0] - cpu_before[0]) * 1000 / sent
    summary["server_sys_ms_per_request"] = (cpu_after[1] - cpu_before[1]) * 1000 / sent
    summary["server_cpu_ms_per_request"] = summary["server_user_ms_per_request"] + summary["server_sys_ms_per_request"]
    summary["generator_cpu_share"] = summary["generator_cpu_s"] / summary["elapsed_s"]
    return summary


def one_load(tmp: Path, name: str, start: Starter, args: argparse.Namespace, *,
             concurrency: int | None = None, keepalive: bool = False) -> dict[str, Any]:  # fmt: skip
    where = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    proc, url, expect = start(where)
    with running(proc):
        return generate(url, expect, concurrency=concurrency or args.concurrency, duration=args.duration,
                        warmup=args.warmup, out=where / "load.json", server=proc, keepalive=keepalive)  # fmt: skip


def show(name: str, s: Mapping[str, Any]) -> None:
    print(f"  {name}: {s['accepted_per_s']:.0f}/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
          f"max {s['max_ms']:.1f} ms, errors {s['errors']}, server CPU {s['server_cpu_ms_per_request']:.2f} ms/req, "
          f"generator {s['generator_cpu_share'] * 100:.0f}% of a core", flush=True)  # fmt: skip


def load_runs(args: argparse.Namespace, tmp: Path, starters: Mapping[str, Starter], quiet: Quiet) -> dict[str, Any]:
    """N runs of the load against each server, a fresh one each run, the order rotating."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in starters}
    for run in range(args.runs):
        print(f"ack run {run + 1}/{args.runs}", flush=True)
        for name in c.rotated(list(starters), run):
            quiet.before_run()
            results[name].append(one_load(tmp, f"{name}-{run}", starters[name], args))
            quiet.after_run()
            show(name, results[name][-1])
    return results


def load_options(p: argparse.ArgumentParser) -> None:
    """The options of the load generator's runs: seconds, warm-up, senders."""
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds of load per run (default 15)")
    p.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds before each load run (default 2)")
    p.add_argument("--concurrency", type=int, default=50, help="concurrent senders (default 50)")


class TimedForge(ForgeServer):
    """The forge stand-in, also noting when each accepted status arrived (index-aligned with `posted`)."""

    def __post_init__(self) -> None:
        self.arrivals: list[float] = []
        self._arrival_lock = threading.Lock()
        super().__post_init__()

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._arrival_lock:
            status, answer = super()._answer(path, headers, raw)
            if status == 201:
                self.arrivals.append(time.time())
        return status, answer


def write_stacks(repo: ConfigRepo, names: list[str], values: Mapping[str, int]) -> None:
    for name in names:
        repo.stack(name, {"app": service(environment={"V": str(values[name])})}, deployer={"wait_timeout": 60})


def push(base: str, *, before: str, after: str) -> tuple[int, Any, float]:
    delivery = sign("github", push_payload("github", after=after, before=before), SECRET)
    started = time.perf_counter()
    code, answer = http("POST", f"{base}/webhook", body=delivery.body, headers=delivery.headers)
    return code, answer, time.perf_counter() - started


def deploy_head(base: str, forge: TimedForge, repo: ConfigRepo) -> dict[str, Any]:
    """Push the repository's head and wait until its deployment and final status are in."""
    head = repo.head()
    code, answer, _ = push(base, before="0" * 39 + "1", after=head)
    assert code == 202, (code, answer)
    done: dict[str, Any] = wait_for(lambda: _finished(base, answer["deployment_id"]), timeout=180,
                                    what="the first deployment")  # fmt: skip
    assert done["state"] == "succeeded", done
    wait_for(lambda: forge.latest(head).get("deployer") == "success", timeout=60, what="the first final status")
    return done


def _finished(base: str, deployment_id: str) -> dict[str, Any] | None:
    code, deployment = http("GET", f"{base}/api/deployments/{deployment_id}")
    return deployment if code == 200 and deployment["state"] in FINISHED else None


@dataclass(frozen=True)
class Serving:
    """A running `deployer serve`, its config repository and its forge stand-in."""

    base: str
    proc: Proc
    repo: ConfigRepo
    forge: TimedForge


@contextmanager
def serving(where: Path, names: list[str], values: Mapping[str, int], message: str) -> Iterator[Serving]:
    """`deployer serve` (stopped afterwards) deploying a new config repository of busybox stacks `names`, their
    first commit `message` made, statuses to a `TimedForge`."""
    repo = ConfigRepo(where / "config")
    write_stacks(repo, names, values)
    repo.commit(message)
    forge = TimedForge("github")
    try:
        proc, base = start_serve(where, repo_url=repo.url, forge=forge)
        with running(proc):
            yield Serving(base, proc, repo, forge)
    finally:
        forge.close()


def deploying_runs(args: argparse.Namespace, quiet: Quiet, one: Callable[[int], Run],
                   show: Callable[[int, Run], None]) -> dict[str, Any]:  # fmt: skip
    """`args.runs` runs of `one` (which deploys busybox stacks: the test image is built first), each between
    `quiet.before_run()` and `quiet.after_run()`, shown as it ends; with the machine they ran on."""
    c.ensure_image(TEST_IMAGE)
    info = c.run_info()
    runs = []
    for run in range(args.runs):
        quiet.before_run()
        runs.append(one(run))
        quiet.after_run()
        show(run, runs[-1])
    return {"info": info, "runs": runs}

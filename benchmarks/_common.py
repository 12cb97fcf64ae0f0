"""Shared helpers for the benchmark scripts: machine facts, statistics, docker clean-up, docs sections.

Every benchmark names its docker objects with a fresh `bench<hex>` prefix and removes whatever
carries that prefix when it ends, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import TEST_IMAGE  # noqa: E402 -- after the path fix above

DOCS = ROOT / "docs" / "benchmarks.md"
INTRO = """# Benchmarks

Measured with the scripts in `benchmarks/` on a real Docker engine. Each section below is written
by its script (`--write-docs`) and replaced when the script runs again. Times are wall-clock; each
section gives the machine, the date, the number of runs N, the median and the spread
(min-max and p10-p90), and the baseline measured in the same run, interleaved with ours.
The machine is small (2 cores) and shared, so spreads matter as much as medians.
"""
SECTIONS = ("overhead", "plan_time", "bringup", "convergence", "api_scale")


class FastImport:
    """A linear history of `refs/heads/main` for `git fast-import`: each commit() adds one commit, a minute
    after the one before, with the given files written inline. Thousands of commits take well under a second."""

    def __init__(self) -> None:
        self.stream = bytearray()
        self.count = 0

    def commit(self, changes: Mapping[str, str]) -> None:
        number, message = self.count, f"change {self.count}\n".encode()
        self.stream.extend(f"commit refs/heads/main\nmark :{number + 1}\n".encode())
        self.stream.extend(f"committer Bench <bench@deployer.invalid> {1_700_000_000 + number * 60} +0000\n".encode())
        self.stream.extend(b"data %d\n%s" % (len(message), message))
        if number:
            self.stream.extend(f"from :{number}\n".encode())
        for path, text in changes.items():
            data = text.encode()
            self.stream.extend(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
        self.count += 1

    def write(self, repo: Path) -> None:
        subprocess.run(["git", "fast-import", "--quiet"], input=bytes(self.stream), cwd=repo, check=True)


def new_prefix() -> str:
    """A unique prefix for every docker object (compose project, network) a benchmark creates."""
    return f"bench{uuid.uuid4().hex[:6]}"


def _run_text(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return result.stdout.strip() or "?"


def machine_info() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": _run_text(["docker", "version", "--format", "{{.Server.Version}}"]),
        "compose": _run_text(["docker", "compose", "version", "--short"]),
        "git": _run_text(["git", "--version"]).removeprefix("git version "),
        "revision": revision(),
    }


def run_info() -> dict[str, str]:
    """The machine, and its load average just before a measurement starts."""
    return machine_info() | {"load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def revision() -> str:
    """The deployer commit measured, marked when deployer/ has uncommitted changes (others edit it)."""
    sha = _run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run_text(["git", "-C", str(ROOT), "status", "--porcelain", "--", "deployer"]) != "?"
    return f"{sha} + uncommitted changes in deployer/" if dirty else sha


def machine_line(info: Mapping[str, str]) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory']}, Linux {info['kernel']}, "
        f"Docker {info['docker']}, Compose {info['compose']}, git {info['git']}, Python {info['python']}; "
        f"deployer at {info['revision']}"
    )


def conditions(info: Mapping[str, str], *, runs: int, waited: float, busy: int, loads: Sequence[float]) -> str:
    """A report's lines on the machine, the date and the load that N paired runs after `wait_until_idle` met."""
    return (
        f"- Machine: {machine_line(info)}\n"
        f"- Date: {info['date']}; N = {runs} runs of each; load average before: {info['load']}\n"
        f"- Waited {waited:.0f} s for no pytest and a 1-minute load average < 1.5 (the latter at most 2 min). At the\n"
        f"  start of the runs: pytest running in {busy} of them; 1-minute load average median "
        f"{statistics.median(loads):.2f},\n  max {max(loads):.2f} (others share this machine)."
    )


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median and spread: min/max, p10/p90 and the quartiles (inclusive method, so n >= 2 works)."""
    data = sorted(values)
    if len(data) == 1:
        data = data * 2
    deciles = statistics.quantiles(data, n=10, method="inclusive")
    quartiles = statistics.quantiles(data, n=4, method="inclusive")
    return {
        "n": len(values),
        "median": statistics.median(data),
        "min": data[0],
        "max": data[-1],
        "p10": deciles[0],
        "p90": deciles[-1],
        "q1": quartiles[0],
        "q3": quartiles[-1],
    }


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (inclusive method, as `stats`)."""
    data = sorted(values) if len(values) > 1 else list(values) * 2
    return statistics.quantiles(data, n=100, method="inclusive")[q - 1]


def fmt(values: Sequence[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    """`median (min-max, p10-p90)` in `unit`, values multiplied by `scale` first."""
    s = {k: v * scale for k, v in stats(values).items() if k != "n"}
    f = f"{{:.{digits}f}}"
    return (
        f"{f.format(s['median'])} {unit} (min {f.format(s['min'])}, max {f.format(s['max'])}, "
        f"p10 {f.format(s['p10'])}, p90 {f.format(s['p90'])})"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_timed(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> float:
    """Run a command to completion and return its wall time; raise with its output if it fails."""
    started = time.perf_counter()
    result = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return took


def timed(fn: Callable[[], object], runs: int, setup: Callable[[], object] = lambda: None) -> list[float]:
    """Wall times of `runs` in-process calls of fn (setup runs untimed before each)."""
    result = []
    for _ in range(runs):
        setup()
        started = time.perf_counter()
        fn()
        result.append(time.perf_counter() - started)
    return result


def paired_runs(runs: int, ours: Callable[[int], tuple[float, dict[str, float]]], bare: Callable[[int], float],
                before: Callable[[], object] = lambda: None) -> tuple[list[float], list[float], list[float],
                                                                      list[dict[str, float]]]:  # fmt: skip
    """`runs` runs of ours and of the bare baseline, the order alternating each run (`before` ahead of each pair),
    each printed: ours' times, the baseline's, the overheads paired per run and ours' phases."""
    ours_t: list[float] = []
    bare_t: list[float] = []
    diffs: list[float] = []
    splits: list[dict[str, float]] = []
    for run in range(runs):
        before()
        if run % 2 == 0:
            (o, split), b = ours(run), bare(run)
        else:
            b, (o, split) = bare(run), ours(run)
        ours_t.append(o)
        bare_t.append(b)
        diffs.append(o - b)
        splits.append(split)
        print(f"run {run + 1}: deployer {o:.3f} s, compose {b:.3f} s, overhead {o - b:+.3f} s "
              + " ".join(f"{k}={v:.3f}" for k, v in split.items()), flush=True)  # fmt: skip
    return ours_t, bare_t, diffs, splits


def epoch(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp from the audit journal."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def deployer_exe() -> str:
    """The `deployer` console script of this interpreter (not a pyenv shim, which adds ~60 ms)."""
    candidate = Path(sys.executable).parent / "deployer"
    return str(candidate) if candidate.exists() else "deployer"


def container_id(project: str) -> str:
    """The id of the running container of compose project `project` ('' when none)."""
    argv = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def free_port() -> int:
    """A TCP port on loopback nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """A minimal environment for deployer and docker processes (like tests.conftest.tool_environ)."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_HOST", "LANG") if name in os.environ}
    xdg = state_dir.parent / "xdg"
    xdg.mkdir(parents=True, exist_ok=True)
    env["XDG_CONFIG_HOME"] = str(xdg)
    env["DEPLOYER_STATE_DIR"] = str(state_dir)
    # the benchmarks read /api from loopback, with no Authentik in front (docs/service.md, "Identity")
    env["DEPLOYER_INSECURE_OPEN_API"] = "true"
    env.update(extra)
    return env


def remove_docker_objects(prefix: str) -> None:
    """Remove containers (by compose project or name), networks and volumes whose name starts with prefix."""

    def docker(*argv: str) -> list[str]:
        out = subprocess.run(["docker", *argv], capture_output=True, text=True, check=False).stdout
        return [line for line in out.splitlines() if line.strip()]

    fmt_ = '{{.ID}}|{{.Names}}|{{.Label "com.docker.compose.project"}}'
    containers = [
        line.split("|", 1)[0]
        for line in docker("ps", "-a", "--format", fmt_)
        if any(part.startswith(prefix) for part in line.split("|")[1:])
    ]
    if containers:
        docker("rm", "--force", "--volumes", *containers)
    networks = [n for n in docker("network", "ls", "--format", "{{.Name}}") if n.startswith(prefix)]
    if networks:
        docker("network", "rm", *networks)
    volumes = [v for v in docker("volume", "ls", "--format", "{{.Name}}") if v.startswith(prefix)]
    if volumes:
        docker("volume", "rm", "--force", *volumes)


@contextmanager
def docker_cleanup(prefix: str) -> Iterator[None]:
    """Remove the prefix's docker objects on exit, also when interrupted or sent SIGTERM."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        remove_docker_objects(prefix)
        signal.signal(signal.SIGTERM, previous)


def ensure_image(image: str) -> None:
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0:
        subprocess.run([str(ROOT / "scripts" / "build-busybox-image"), image], check=True)


def wait_until_idle(max_seconds: float = 900, poll: float = 20, max_load: float = 1.5, patience: float = 120) -> float:
    """Wait until no pytest runs (at most max_seconds), then up to `patience` more seconds for the 1-minute
    load average to drop below max_load (others share this machine); return the seconds waited."""
    started = time.monotonic()
    quiet_since = None
    while time.monotonic() - started < max_seconds:
        load, busy = os.getloadavg()[0], pytest_running()
        quiet_since = None if busy else (quiet_since or time.monotonic())
        if quiet_since is not None and (load < max_load or time.monotonic() - quiet_since >= patience):
            return time.monotonic() - started
        print(f"waiting: pytest running: {busy}, load average {load:.2f}", flush=True)
        time.sleep(poll)
    print("warning: the machine is still busy after the wait; measuring anyway", flush=True)
    return time.monotonic() - started


def pytest_running() -> bool:
    return bool(subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, check=False).stdout.strip())


def parser(description: str, runs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runs", type=int, default=runs, help=f"measured runs of each variant (default {runs})")
    p.add_argument("--write-docs", action="store_true", help="replace this benchmark's section in docs/benchmarks.md")
    p.add_argument("--wait-idle", action="store_true", help="before measuring, wait until no pytest runs (<= 15 min)")
    return p


def docker_main(description: str, runs: int, measure: Callable[[argparse.Namespace, str, Path], int]) -> int:
    """Run a benchmark that deploys to the engine: its own prefix and temp dir, the test image, and every
    container and network named with the prefix removed afterwards."""
    args = parser(description, runs=runs).parse_args()
    prefix = new_prefix()
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    ensure_image(TEST_IMAGE)
    try:
        with docker_cleanup(prefix):
            return measure(args, prefix, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rotated(items: Sequence[Any], run: int) -> list[Any]:
    """`items` rotated by `run`: each takes every place in turn over the runs."""
    k = run % len(items)
    return [*items[k:], *items[:k]]


def met(value: bool) -> str:
    """How a report says whether a target was met."""
    return "met" if value else "NOT met"


def yes(value: bool) -> str:
    return "yes" if value else "no"


def publish(name: str, body: str, *, write_docs: bool) -> None:
    """Print a benchmark's section after a blank line; with --write-docs also replace it in docs/benchmarks.md."""
    print()
    print(body)
    if write_docs:
        write_section(name, body)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between this benchmark's markers in docs/benchmarks.md."""
    start, end = f"<!-- benchmark:{name}:start -->", f"<!-- benchmark:{name}:end -->"
    if DOCS.exists():
        text = DOCS.read_text()
    else:
        empty = (f"<!-- benchmark:{s}:start -->\n_not measured yet_\n<!-- benchmark:{s}:end -->" for s in SECTIONS)
        text = INTRO + "\n" + "\n\n".join(empty) + "\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)
    print(f"wrote section {name!r} of {DOCS.relative_to(ROOT)}")

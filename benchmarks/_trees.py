"""Versions of the deployer side by side (record_cost, record_backlog): the working tree as it is, the others
as `git worktree`s imported with PYTHONPATH, and benchmarks/_record_child.py run against one of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from tests.helpers import git

#: the deployer before "One recorder (issue 11, part 1)", and that commit alone
BEFORE, CHANGE = "8af9b29^", "8af9b29"
#: the last commit whose state store used synchronous=NORMAL (cc2a733 made it FULL)
NORMAL_LAST = "b58f1c7"
CHILD = Path(__file__).with_name("_record_child.py")


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
WHAT_IF_NORMAL = '''"""benchmarks/record_cost.py's what-if: the tree's state store, synchronous=NORMAL once it opens."""
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


def imported_from(src: Path, cwd: Path) -> str:
    """Where `import deployer` finds its code with PYTHONPATH=src, run from cwd as the service runs."""
    probe = "import deployer, deployer.jobs, deployer.web.app; print(deployer.jobs.__file__)"
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    where = out.stdout.strip()
    if not where.startswith(str(src)):
        raise RuntimeError(f"PYTHONPATH={src} imports deployer from {where}, not from the baseline worktree")
    return where


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

"""A pushed commit is hostile input: paths that escape the repository, YAML bombs, huge and deep files, names
and strings made to break a line or a path.

Each is refused by load_catalog, the first code that reads a commit (before compose, sops or the engine
sees it), within a second or two, with one line naming the stack's file and field; `deployer validate` and
`deployer plan` exit 2 with that line, their memory bounded (measured). test_catalog.py has the ordinary
bad input; this file has what an attacker would write. Through `deployer serve`: tests/e2e/test_hostile_repo.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer import interpolation, yamlio
from deployer.errors import CatalogError
from deployer.plan.catalog import MAX_FILE_BYTES, load_catalog
from deployer.yamlio import MAX_DEPTH, MAX_NODES, YAMLError, YAMLLimitError, safe_load
from tests.component.test_catalog import SOPS_DOTENV, stack, write
from tests.conftest import tool_environ
from tests.helpers import ConfigRepo

SERVICES = "services:\n  main:\n    image: busybox\n"
#: an age identity's file as age-keygen writes it: the thing an attacker most wants the deployer to read out
AGE_KEY = "# created: 2026-01-01T00:00:00Z\n# public key: age1fake\nAGE-SECRET-KEY-1HOSTILEREPOTESTKEYNEVERSHOWN\n"
MiB = 1024 * 1024
#: a refusal in process takes milliseconds; this leaves room for a loaded CI machine
QUICK_S = 2.0
#: the most a `deployer validate` or `deployer plan` process may grow to on any of these inputs (measured: 37-55)
MAX_RSS_MIB = 200


def laughs(levels: int = 10, width: int = 9) -> str:
    """Billion laughs: each anchor a list of `width` aliases of the one before; 9**10 strings once expanded."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nservices:\n  main:\n    image: busybox\n    command: *a{levels - 1}\n"


def huge_compose(size: int = 30 * MiB) -> str:
    """A valid compose file of `size` bytes: ~1.5 million services."""
    line = "  s{:07d}: {{image: busybox}}\n"
    return "services:\n" + "".join(line.format(i) for i in range(size // len(line.format(0)) + 1))


def huge_secret(size: int = 30 * MiB) -> str:
    """A dotenv SOPS file made big with encrypted-looking values."""
    value = "ENC[AES256_GCM,data:" + "A" * 64 + ",iv:aXY=,tag:dGFn,type:str]"
    lines = "".join(f"K{i:07d}={value}\n" for i in range(size // (len(value) + 10) + 1))
    return lines + SOPS_DOTENV


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    write(tmp_path, "outside/keys.txt", AGE_KEY)
    write(tmp_path, "outside/stacks/evil/compose.yaml", SERVICES)
    return tmp_path / "repo"


def refused(root: Path) -> tuple[list[str], float]:
    """load_catalog's problem lines and how long it took to refuse."""
    started = time.monotonic()
    with pytest.raises(CatalogError) as caught:
        load_catalog(root)
    return list(caught.value.details), time.monotonic() - started


def _link(root: Path, relative: str, target: Path | str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def _not_utf8(root: Path) -> None:
    (root / "stacks/web").mkdir(parents=True)
    (root / "stacks/web/compose.yaml").write_bytes(b"services:\xff\n")


def _uncompilable_sops_regex(root: Path) -> None:
    write(
        root, "secrets/web.env", SOPS_DOTENV.replace("sops_unencrypted_suffix=_unencrypted", "sops_unencrypted_regex=(")
    )
    stack(root, "web", "secrets: [secrets/web.env]")


def _key(root: Path) -> Path:
    return root.parent / "outside/keys.txt"


ESCAPES: list[tuple[str, Callable[[Path], object], list[str]]] = [
    ("compose file symlinked to /etc/passwd", lambda r: _link(r, "stacks/web/compose.yaml", "/etc/passwd"),
     ["stacks/web/compose.yaml: symlink points out of the repository"]),
    ("compose file symlinked to the age key", lambda r: _link(r, "stacks/web/compose.yaml", _key(r)),
     ["stacks/web/compose.yaml: symlink points out of the repository"]),
    ("compose file symlinked through ..", lambda r: _link(r, "stacks/web/compose.yaml", "../../../outside/keys.txt"),
     ["stacks/web/compose.yaml: symlink points out of the repository"]),
    ("secret symlinked to the age key", lambda r: (_link(r, "secrets/web.env", _key(r)),
                                                   stack(r, "web", "secrets: [secrets/web.env]")),
     ["stacks/web/compose.yaml: x-deployer.secrets[0]: secrets/web.env resolves, through a symlink, out of the "
      "repository"]),
    (".env symlinked to the age key", lambda r: (stack(r, "web"), _link(r, "stacks/web/.env", _key(r))),
     ["stacks/web/.env: symlink points out of the repository"]),
    ("stacks folder symlinked out", lambda r: _link(r, "stacks", r.parent / "outside/stacks"),
     ["stacks: symlink points out of the repository"]),
    ("absolute watch", lambda r: stack(r, "web", "watch: [/etc/**]"),
     ["stacks/web/compose.yaml: x-deployer.watch[0]: /etc/** escapes the repository (absolute or '..')"]),
    ("watch through ..", lambda r: stack(r, "web", "watch: [shared/../../outside/**]"),
     ["stacks/web/compose.yaml: x-deployer.watch[0]: shared/../../outside/** escapes the repository (absolute or "
      "'..')"]),
    ("NUL in a secret path", lambda r: stack(r, "web", 'secrets: ["secrets/web\\0.env"]'),
     ["stacks/web/compose.yaml: x-deployer.secrets[0]: 'secrets/web\\x00.env' holds a control character"]),
    ("NUL in a directory", lambda r: stack(r, "web", 'directories: [{path: "/srv/\\0", mode: "0750"}]'),
     ["stacks/web/compose.yaml: x-deployer.directories[0].path: '/srv/\\x00' holds a control character"]),
    ("newline after a network name", lambda r: stack(r, "web", 'networks: ["traefik_public\\n"]'),
     ["stacks/web/compose.yaml: x-deployer.networks[0]: 'traefik_public\\n' holds a control character"]),
    ("a stack folder name that writes a second line", lambda r: write(r, "stacks/web\nstacks/ok: fine/compose.yaml",
                                                                      SERVICES),
     ["stacks/web\\nstacks: invalid stack name (expected ^[a-z0-9][a-z0-9_-]{0,62}$)"]),
    ("a stack name with a trailing newline", lambda r: write(r, "stacks/web\n/compose.yaml", SERVICES),
     ["stacks/web\\n: invalid stack name (expected ^[a-z0-9][a-z0-9_-]{0,62}$)"]),
    ("numbers and strings as keys", lambda r: stack(r, "web", "1: x\nzz: y"),
     ["stacks/web/compose.yaml: x-deployer.1: unknown key (known: depends_on, directories, docker_host, engine, "
      "networks, secrets, wait_timeout, watch)",
      "stacks/web/compose.yaml: x-deployer.zz: unknown key (known: depends_on, directories, docker_host, engine, "
      "networks, secrets, wait_timeout, watch)"]),
    ("a compose file that is not UTF-8", _not_utf8,
     ["stacks/web/compose.yaml: is not UTF-8 text (invalid start byte at byte 9)"]),
    ("a sops regex that does not compile", _uncompilable_sops_regex,
     ["stacks/web/compose.yaml: x-deployer.secrets[0]: secrets/web.env: its sops metadata holds an invalid regular "
      "expression: missing ), unterminated subpattern at position 0"]),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in ESCAPES], ids=[c[0] for c in ESCAPES])
def test_what_escapes_the_repository_or_a_line_is_refused_naming_file_and_field(
    root: Path, setup: Callable[[Path], object], expected: list[str]
) -> None:
    setup(root)
    details, took = refused(root)
    assert details == expected
    assert took < QUICK_S
    assert "AGE-SECRET-KEY" not in "\n".join(details)  # nothing of a file outside is ever shown (or read)


def test_a_secret_path_spelled_with_dot_or_slashes_is_the_same_file(root: Path) -> None:
    """Found by the property below: x-deployer.secrets[i] was looked up by its normalized spelling (ValueError)."""
    write(root, "secrets/web.env", SOPS_DOTENV)
    stack(root, "web", "secrets: [secrets/./web.env, secrets//web.env/]")
    web = load_catalog(root)["web"]
    assert [str(p) for p in web.secrets] == ["secrets/web.env"]
    write(root, "secrets/web.env", "PASSWORD=hunter2\n")
    details, _ = refused(root)
    assert details == ["stacks/web/compose.yaml: x-deployer.secrets[0]: secrets/web.env is not SOPS-encrypted (no sops "
                       "metadata with a mac and a version)"]  # fmt: skip


def _deep(opening: str, closing: str, levels: int) -> str:
    return f"services: {opening * levels}{closing * levels}\n"


BOMBS: list[tuple[str, Callable[[Path], object], str]] = [
    ("billion laughs", lambda r: write(r, "stacks/web/compose.yaml", laughs()),
     rf"^stacks/web/compose\.yaml: cannot be read as YAML: expands to more than {MAX_NODES} nodes once its "
     r"aliases are resolved \(a YAML bomb\?\)$"),
    ("an alias of its own ancestor", lambda r: write(r, "stacks/web/compose.yaml", "services: &s {main: *s}\n"),
     rf"^stacks/web/compose\.yaml: cannot be read as YAML: nested deeper than {MAX_DEPTH} levels"),
    ("100,000 [", lambda r: write(r, "stacks/web/compose.yaml", _deep("[", "]", 100_000)),
     r"^stacks/web/compose\.yaml: cannot be read as YAML: .*(exceeded maximum nesting depth|nested deeper than)"),
    ("100,000 {", lambda r: write(r, "stacks/web/compose.yaml", _deep("{a: ", "}", 100_000)),
     r"^stacks/web/compose\.yaml: cannot be read as YAML: .*(exceeded maximum nesting depth|nested deeper than)"),
    ("100 levels, under libyaml's 1,000", lambda r: write(r, "stacks/web/compose.yaml", _deep("[", "]", 100)),
     rf"^stacks/web/compose\.yaml: cannot be read as YAML: nested deeper than {MAX_DEPTH} levels"),
    ("a 30 MiB compose file", lambda r: write(r, "stacks/web/compose.yaml", huge_compose()),
     r"^stacks/web/compose\.yaml: is 30\.0 MiB, over the 1 MiB a file may be \(MAX_FILE_BYTES\)$"),
    ("a 30 MiB secret", lambda r: (write(r, "secrets/web.env", huge_secret()),
                                   stack(r, "web", "secrets: [secrets/web.env]")),
     r"^stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: secrets/web\.env: is 30\.0 MiB, over the 1 MiB"),
    ("billion laughs in a YAML secret", lambda r: (write(r, "secrets/web.yaml", laughs()),
                                                   stack(r, "web", "secrets: [secrets/web.yaml]")),
     r"^stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: secrets/web\.yaml cannot be read as YAML: expands to "
     r"more than"),
    ("a JSON secret 100,000 deep", lambda r: (write(r, "secrets/web.json", "[" * 100_000 + "]" * 100_000),
                                              stack(r, "web", "secrets: [secrets/web.json]")),
     r"^stacks/web/compose\.yaml: x-deployer\.secrets\[0\]: secrets/web\.json is nested too deeply to be read$"),
    ("a 30 MiB .env", lambda r: (stack(r, "web"), write(r, "stacks/web/.env", "A=" + "a" * 30 * MiB + "\n")),
     r"^stacks/web/\.env: is 30\.0 MiB, over the 1 MiB a file may be \(MAX_FILE_BYTES\)$"),
    ("a 30 MiB shared.env", lambda r: (stack(r, "web"), write(r, "stacks/shared.env", "A=1\n" * (30 * MiB // 4 + 1))),
     r"^stacks/shared\.env: is 30\.0 MiB, over the 1 MiB a file may be \(MAX_FILE_BYTES\)$"),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in BOMBS], ids=[c[0] for c in BOMBS])
def test_bombs_huge_and_deep_files_are_refused_quickly_naming_the_file(
    root: Path, setup: Callable[[Path], object], expected: str
) -> None:
    setup(root)
    details, took = refused(root)
    assert len(details) == 1 and re.search(expected, details[0]), details
    assert took < QUICK_S, f"{took:.2f} s"


def test_a_file_at_the_size_limit_loads_and_one_byte_more_is_refused(root: Path) -> None:
    padding = MAX_FILE_BYTES - len(SERVICES) - len("# \n")
    write(root, "stacks/web/compose.yaml", SERVICES + "# " + "x" * padding + "\n")
    assert (root / "stacks/web/compose.yaml").stat().st_size == MAX_FILE_BYTES
    assert list(load_catalog(root)) == ["web"]
    write(root, "stacks/web/compose.yaml", SERVICES + "# " + "x" * (padding + 1) + "\n")
    details, _ = refused(root)
    assert details == [f"stacks/web/compose.yaml: is {MAX_FILE_BYTES + 1} bytes, over the 1 MiB a file may be"
                       " (MAX_FILE_BYTES)"]  # fmt: skip


def test_a_megabyte_of_unclosed_defaults_is_checked_in_linear_time(root: Path) -> None:
    """`${A:-` a million times without a `}`: the variable scan read to the end of the string from each one
    (quadratic: 250 KB took 170 s); now the text after the last `}` is scanned without the braced forms."""
    write(root, "stacks/web/compose.yaml", SERVICES + '    command: "' + "${A:-" * 200_000 + '"\n')
    started = time.monotonic()
    assert list(load_catalog(root)) == ["web"]
    assert time.monotonic() - started < QUICK_S


# -- the memory and time of a real `deployer validate` / `deployer plan` ----------------------------------------

#: (id, what the hostile commit writes under the repository, what the one line names)
PROCESS_CASES: list[tuple[str, Callable[[Path], object], str]] = [
    ("billion laughs", lambda r: write(r, "stacks/web/compose.yaml", laughs()),
     "stacks/web/compose.yaml: cannot be read as YAML: expands to more than"),
    ("a 30 MiB compose file", lambda r: write(r, "stacks/web/compose.yaml", huge_compose()),
     "stacks/web/compose.yaml: is 30.0 MiB, over the 1 MiB"),
    ("100,000 [", lambda r: write(r, "stacks/web/compose.yaml", _deep("[", "]", 100_000)),
     "stacks/web/compose.yaml: cannot be read as YAML:"),
    ("a 30 MiB secret", lambda r: (write(r, "secrets/web.env", huge_secret()),
                                   stack(r, "web", "secrets: [secrets/web.env]")),
     "stacks/web/compose.yaml: x-deployer.secrets[0]: secrets/web.env: is 30.0 MiB"),
    ("compose file symlinked to /etc/passwd", lambda r: _link(r, "stacks/web/compose.yaml", "/etc/passwd"),
     "stacks/web/compose.yaml: symlink points out of the repository"),
]  # fmt: skip


#: runs its arguments and prints their peak RSS (KiB, wait4: the command and its children) and exit code. A
#: child forked from pytest itself would count pytest's own pages as its peak (Linux keeps the high-water mark
#: across exec), so the command is started from this small process instead.
_MEASURE = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, str, float, float]:
    """Run a command; its exit code, stderr, wall time and peak RSS in MiB (its own and its children's)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _MEASURE, *argv], env=env, capture_output=True, text=True,
                            timeout=300, check=True)  # fmt: skip
    peak_kib, code = map(int, result.stdout.split())
    return code, result.stderr, time.monotonic() - started, peak_kib / 1024


@pytest.fixture
def hostile_repo(tmp_path: Path) -> Iterator[ConfigRepo]:
    repo = ConfigRepo(tmp_path / "config")
    repo.stack("good")
    repo.commit("a good stack")
    yield repo


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in PROCESS_CASES], ids=[c[0] for c in PROCESS_CASES])
def test_validate_plan_and_deploy_exit_2_with_one_line_and_bounded_memory(
    hostile_repo: ConfigRepo, tmp_path: Path, setup: Callable[[Path], object], expected: str
) -> None:
    """`deploy` stops at plan, before any engine is asked. The numbers are printed (pytest -s) for
    docs/reliability.md; a clean repository's `validate` (with its `docker compose config`) is the baseline."""
    env = tool_environ(tmp_path, None)
    baseline = run_measured(["deployer", "validate", "--repo", hostile_repo.url, "--allow-placeholders"], env)
    assert baseline[0] == 0, baseline[1]
    setup(hostile_repo.path)
    hostile_repo.commit("hostile")
    for command in ("validate", "plan", "deploy"):
        code, stderr, took, rss = run_measured(["deployer", command, "--repo", hostile_repo.url], env)
        print(f"{command}: {took:.2f} s, {rss:.0f} MiB peak RSS (clean repository: {baseline[3]:.0f} MiB)")
        assert code == 2, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("deployer: error: ")]
        assert len(errors) == 1 and expected in errors[0], stderr
        if command != "deploy":  # which shows its progress before
            assert stderr.splitlines() == errors
        assert rss < MAX_RSS_MIB
        assert took < 15 * QUICK_S  # a new process, a clone of 30 MiB for `plan`; milliseconds for the catalog


# -- properties ------------------------------------------------------------------------------------------------

#: strings a hostile block would try: escapes, control characters, odd spellings of a real file
HOSTILE_STRINGS = st.sampled_from([
    "secrets/a.env", "secrets/./a.env", "secrets//a.env", "secrets/a.env/", "/etc/passwd", "../x", "secrets/../..",
    "a\0b", "db\n", "a\u2028b", "c\x85", "web", "db", "${X}", "${X:-/srv}", "/srv/${X:-a}/b", "0750", "1000:1000",
    "**", "", " ", ".",
])  # fmt: skip
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                    HOSTILE_STRINGS)  # fmt: skip
KEYS = st.one_of(st.sampled_from(["depends_on", "secrets", "networks", "directories", "wait_timeout", "watch",
                                  "path", "owner", "mode"]), st.integers(), st.text(max_size=6))  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=12)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.dictionaries(KEYS, VALUES, max_size=5))
def test_any_x_deployer_block_is_a_catalog_or_catalog_errors_of_one_line_each(
    root: Path, block: dict[Any, Any]
) -> None:
    """Before: an integer key (TypeError), a NUL in a path (ValueError) and `secrets/a.env/` (ValueError)
    escaped load_catalog as crashes, not as bad input."""
    write(root, "secrets/a.env", SOPS_DOTENV)
    write(root, "stacks/db/compose.yaml", SERVICES)
    write(root, "stacks/web/compose.yaml", yaml.safe_dump({"x-deployer": block, **yaml.safe_load(SERVICES)}))
    try:
        catalog = load_catalog(root)
    except CatalogError as error:
        assert error.details and error.exit_code == 2
        for line in error.details:
            assert line.splitlines() == [line] and line.startswith("stacks/web/compose.yaml: "), line
    else:
        assert set(catalog) == {"db", "web"}


def _anchored_yaml() -> st.SearchStrategy[str]:
    """Flow YAML whose collections may carry anchors and aliases to earlier anchors (and so to ancestors)."""

    @st.composite
    def document(draw: st.DrawFn) -> str:
        anchors: list[str] = []

        def node(depth: int) -> str:
            kind = draw(st.sampled_from(["scalar", "alias", "seq", "map"] if depth < 12 else ["scalar", "alias"]))
            if kind == "alias" and anchors:
                return f"*{draw(st.sampled_from(anchors))}"
            if kind in ("scalar", "alias"):
                return draw(st.sampled_from(["x", "1", "'a b'", "null", "[]", "{}"]))
            anchor = ""
            if draw(st.booleans()):
                anchors.append(f"a{len(anchors)}")
                anchor = f"&{anchors[-1]} "
            items = [node(depth + 1) for _ in range(draw(st.integers(0, 4)))]
            if kind == "seq":
                return f"{anchor}[{', '.join(items)}]"
            return anchor + "{" + ", ".join(f"k{i}: {item}" for i, item in enumerate(items)) + "}"

        return node(0)

    return document()


def _expanded(value: Any, depth: int = 1, seen: tuple[int, ...] = ()) -> tuple[int, int]:
    """(nodes, depth) of a loaded value with every shared object counted again; raises on a cycle."""
    if not isinstance(value, dict | list):
        return 1, depth - 1
    assert id(value) not in seen, "a recursive document was constructed"
    children = [c for pair in value.items() for c in pair] if isinstance(value, dict) else value
    nodes, deepest = 1, depth
    for child in children:
        count, reached = _expanded(child, depth + 1, (*seen, id(value)))
        nodes, deepest = nodes + count, max(deepest, reached)
    return nodes, deepest


@pytest.mark.parametrize("loader", ["libyaml", "pure Python"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_anchored_yaml())
def test_safe_load_returns_only_documents_within_its_limits(
    text: str, loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With small limits, so that they are hit often: whatever safe_load returns expands (aliases copied) to
    at most max_nodes nodes and max_depth levels; anything else is a YAMLError, never a crash or a hang."""
    if loader == "pure Python":
        monkeypatch.setattr(yamlio, "_LOADER", yaml.SafeLoader)
    try:
        value = safe_load(text, max_depth=6, max_nodes=60)
    except YAMLLimitError:
        return
    except YAMLError:  # e.g. a mapping used as a key
        return
    nodes, depth = _expanded(value)
    assert nodes <= 60 and depth <= 6, (nodes, depth, text)


def test_the_limits_leave_honest_documents_alone() -> None:
    """The node count counts what a file says: a big file without aliases, and aliases that stay small, load."""
    assert len(safe_load("[" + ", ".join(["x"] * (MAX_NODES - 1)) + "]")) == MAX_NODES - 1
    with pytest.raises(YAMLLimitError, match=f"more than {MAX_NODES} nodes"):
        safe_load("[" + ", ".join(["x"] * MAX_NODES) + "]")
    shared = safe_load("base: &b {image: busybox, restart: always}\nservices: {a: *b, b: *b, c: {<<: *b}}\n")
    assert shared["services"]["c"] == {"image": "busybox", "restart": "always"}
    assert _expanded(safe_load("[" * MAX_DEPTH + "]" * MAX_DEPTH)) == (MAX_DEPTH, MAX_DEPTH)
    with pytest.raises(YAMLLimitError, match=f"nested deeper than {MAX_DEPTH} levels"):
        safe_load("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


#: the variable pattern as it was before the linear scan: the reference the fast one must agree with
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


def _reference_interpolate(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["bare"] or match["name"], match["op"] or "", match["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        if op in (":?", "?") and unset_or_empty:
            raise KeyError(f"{name}: {arg or 'required'}")
        return value or ""

    return _REFERENCE.sub(replace, text)


@settings(max_examples=2000, deadline=None)
@given(text=st.text(alphabet="${}:-?+AB_ x", max_size=24), env=st.dictionaries(st.sampled_from("AB"),
                                                                              st.sampled_from(["", "v"])))  # fmt: skip
def test_the_linear_variable_scan_agrees_with_the_plain_pattern(text: str, env: dict[str, str]) -> None:
    expected = [(m["bare"] or m["name"], m["op"] or "") for m in _REFERENCE.finditer(text) if not m["escaped"]]
    found = [(r.name, r.required) for r in interpolation.references(text)]
    assert found == [(name, op not in (":-", "-", ":+", "+")) for name, op in expected]
    try:
        wanted: str | KeyError = _reference_interpolate(text, env)
    except KeyError as error:
        wanted = error
    try:
        assert interpolation.interpolate(text, env) == wanted
    except KeyError as error:
        assert isinstance(wanted, KeyError) and error.args == wanted.args

"""docs/contract-map.md stays honest: every test it names exists, and every promise says how it is covered.

The map is how a reader finds the tests behind a contract promise, and how a reviewer sees what has none.
A reference to a test that was renamed or deleted would claim coverage that no longer exists, so each one
is resolved with `ast` against the test file it names (nothing is imported or run). A row without a test
must say so with an explicit marker, so that a gap is written down instead of left blank.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "contract-map.md"

COLUMNS = ("id", "promise", "tests", "real service", "notes")
#: `tests/<path>.py::name` or `tests/<path>.py::Class::name`, with no parametrize brackets
REFERENCE = re.compile(r"`(?P<path>tests/[\w/]+\.py)::(?P<name>\w+(?:::\w+)?)`")
MARKER = re.compile(r"^(not covered|not built \(issue [1-9][0-9]*\))$")
#: what may stand between references in a tests cell
SEPARATORS = re.compile(r"(<br>|[\s,;])*")
SECTION = re.compile(r"^## (?P<number>[1-7])\. ")
ID = re.compile(r"^`(?P<id>(?P<section>[1-7])\.[^`]+)`$")
#: an unescaped `|`: a cell may hold `\|`
CELL_BORDER = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Row:
    line: int
    section: str | None  # "1".."7" under a numbered contract section, None elsewhere
    cells: dict[str, str]
    count: int  # cells found on the line, before padding to COLUMNS

    @property
    def where(self) -> str:
        return f"docs/contract-map.md:{self.line} ({self.cells['id'] or 'no id'})"


def rows() -> list[Row]:
    """Every table row of the map that is not a header or separator line, with its section."""
    found: list[Row] = []
    section: str | None = None
    for number, text in enumerate(MAP.read_text(encoding="utf-8").splitlines(), start=1):
        if text.startswith("## "):
            heading = SECTION.match(text)
            section = heading["number"] if heading else None
            continue
        if not text.startswith("|"):
            continue
        cells = [cell.strip() for cell in CELL_BORDER.split(text.strip().strip("|"))]
        if cells and (cells[0] == "id" or set("".join(cells)) <= set("-: ")):
            continue
        padded = cells + [""] * (len(COLUMNS) - len(cells))
        found.append(Row(number, section, dict(zip(COLUMNS, padded, strict=False)), len(cells)))
    return found


@cache
def definitions(path: str) -> tuple[frozenset[str], dict[str, frozenset[str]]] | None:
    """(module-level function names, {class name: its method names}) of a test file, or None if it is missing."""
    source = ROOT / path
    if not source.is_file():
        return None
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=path)
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    module = frozenset(node.name for node in tree.body if isinstance(node, functions))
    classes = {
        node.name: frozenset(item.name for item in node.body if isinstance(item, functions))
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }
    return module, classes


def resolve(path: str, name: str) -> str | None:
    """Why `path::name` does not name a test, or None when it does."""
    found = definitions(path)
    if found is None:
        return f"{path} does not exist"
    module, classes = found
    *owner, function = name.split("::")
    if not function.startswith("test"):
        return f"{function} is not a test function (pytest collects only test* names)"
    if owner:
        if owner[0] not in classes:
            return f"{path} defines no class {owner[0]}"
        return None if function in classes[owner[0]] else f"class {owner[0]} in {path} defines no {function}"
    if function in module or any(function in methods for methods in classes.values()):
        return None
    return f"{path} defines no {function}, at module level or in a class"


def test_the_map_has_a_table_for_every_contract_section() -> None:
    """A parser that silently found no rows would make every other check here pass on nothing."""
    sections = {row.section for row in rows()}
    missing = sorted({"1", "2", "3", "4", "5", "6", "7"} - sections)
    assert not missing, f"docs/contract-map.md has no rows for contract section(s) {', '.join(missing)}"


def test_every_row_has_the_five_columns() -> None:
    """A stray `|` inside a cell shifts every later cell, and the tests cell would then be read wrongly."""
    bad = [f"{row.where}: {row.count} cells, expected {len(COLUMNS)}" for row in rows() if row.count != len(COLUMNS)]
    assert not bad, "rows with the wrong number of cells (escape a | inside a cell as \\|):\n" + "\n".join(bad)


def test_ids_are_unique_and_start_with_their_section() -> None:
    """Ids are how issues and reviews point at a promise; two rows with one id, or an id filed under the
    wrong section, would send a reader to the wrong place."""
    seen: dict[str, int] = {}
    bad = []
    for row in rows():
        match = ID.match(row.cells["id"])
        if match is None:
            bad.append(f"{row.where}: id must be `<section 1-7>.<name>` in backticks")
            continue
        if row.section is not None and match["section"] != row.section:
            bad.append(f"{row.where}: id is in section {row.section} but starts with {match['section']}.")
        if match["id"] in seen:
            bad.append(f"{row.where}: id already used on line {seen[match['id']]}")
        seen.setdefault(match["id"], row.line)
    assert not bad, "bad row ids:\n" + "\n".join(bad)


def test_every_reference_names_a_test_that_exists() -> None:
    """Coverage claimed by a test that was renamed or deleted is coverage that no longer exists."""
    bad = []
    for row in rows():
        for reference in REFERENCE.finditer(row.cells["tests"]):
            problem = resolve(reference["path"], reference["name"])
            if problem:
                bad.append(f"{row.where}: {reference[0]}: {problem}")
    assert not bad, "references to tests that do not exist:\n" + "\n".join(bad)


def test_every_row_names_tests_or_says_why_not() -> None:
    """A blank or free-text tests cell hides whether a promise is kept; a gap must be written as a marker.
    Mixing both would make a partly covered promise look covered, so the notes column carries the nuance."""
    bad = []
    for row in rows():
        cell = row.cells["tests"]
        if MARKER.match(cell):
            continue
        references = list(REFERENCE.finditer(cell))
        leftover = REFERENCE.sub("", cell)
        if not references:
            bad.append(f"{row.where}: {cell!r} is neither test references nor `not covered` / `not built (issue N)`")
        elif not SEPARATORS.fullmatch(leftover):
            bad.append(f"{row.where}: text besides the references (brackets, a typo in a reference?): {leftover!r}")
    assert not bad, "rows whose tests cell cannot be read:\n" + "\n".join(bad)


def test_real_service_column_matches_the_references() -> None:
    """`yes` promises a test through the real `deployer` process (tests/e2e); it must be derived from the
    references, never claimed on its own."""
    bad = []
    for row in rows():
        expected = (
            "yes" if any(r["path"].startswith("tests/e2e/") for r in REFERENCE.finditer(row.cells["tests"])) else "no"
        )
        if row.cells["real service"] != expected:
            bad.append(f"{row.where}: real service is {row.cells['real service']!r}, the references say {expected!r}")
    assert not bad, "real service column out of step with the tests:\n" + "\n".join(bad)

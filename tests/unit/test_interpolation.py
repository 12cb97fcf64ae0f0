"""Compose-style interpolation, as deployer applies it to directory paths and variable checks."""

from __future__ import annotations

import pytest

from deployer.interpolation import Reference, interpolate, read_dotenv, references


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${DATA_ROOT:-/mnt/data}/db", {}, "/mnt/data/db"),
        ("${DATA_ROOT:-/mnt/data}/db", {"DATA_ROOT": "/srv"}, "/srv/db"),
        ("${DATA_ROOT:-/mnt/data}/db", {"DATA_ROOT": ""}, "/mnt/data/db"),
        ("${DATA_ROOT-/mnt/data}/db", {"DATA_ROOT": ""}, "/db"),
        ("$HOME/x", {"HOME": "/root"}, "/root/x"),
        ("${A:+set}", {"A": "1"}, "set"),
        ("${A:+set}", {}, ""),
        ("cost: $$5", {}, "cost: $5"),
        ("${MISSING}", {}, ""),
    ],
)
def test_interpolate(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_required_variable_raises_with_its_message() -> None:
    with pytest.raises(KeyError, match="TOKEN: comes from secrets"):
        interpolate("${TOKEN:?comes from secrets}", {})


def test_references_tell_required_from_defaulted() -> None:
    text = "${A} $B ${C:-x} ${D-y} ${E:?m} ${F:+z} $$G"
    assert list(references(text)) == [
        Reference("A", True), Reference("B", True), Reference("C", False), Reference("D", False),
        Reference("E", True), Reference("F", False),
    ]  # fmt: skip


def test_read_dotenv() -> None:
    text = "# comment\nA=1\nexport B='two words'\nC=\"3\"\n\nbroken line\n"
    assert read_dotenv(text) == {"A": "1", "B": "two words", "C": "3"}

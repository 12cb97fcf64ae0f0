"""Properties of secret redaction, for arbitrary text and secret values: unicode, newlines, regex metacharacters,
values that overlap or contain one another. Decrypted values become compose's environment, and compose's output
reaches logs, commit statuses and the audit trail, so no value may survive redaction, while text without one
must come through untouched.

`redact` replaces every span a value covers with `***` (overlapping spans merge), where a value also counts
stripped of surrounding blanks and line by line. The one way a value can reappear afterwards is through the
`***` itself, when the value contains `*`; the properties about leaks assume values without one.

The compose backend redacts what it keeps of a failing command (`tail`, `last_line`); its properties say the
kept text is what redacting the whole output first would keep, so that cutting the output (to a tail, a line,
stripped of blanks) never splits a value into pieces that are no longer recognised.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.apply.compose import OUTPUT_TAIL, last_line, tail
from deployer.apply.secrets import MIN_REDACTED_LENGTH, redact
from deployer.runner import Completed

SETTINGS = settings(max_examples=150, deadline=None)

#: few characters, so that values overlap and contain one another; regex metacharacters, blanks, wide characters
SMALL = "ab\n .*+?()[]{}^$|\\é😀\t"
LIKELY = ["a.b*", "(?i)", "[a-z]+", "$HOME", "\\d{4}", "a|b|c", "pa$$w0rd", "line1\nline2", "ünïcødé", "\r\n\r\n"]


def values(alphabet: str) -> st.SearchStrategy[str]:
    """Secret values: from a tiny alphabet (overlaps), any unicode, or typical awkward ones."""
    keep = st.sampled_from([v for v in LIKELY if all(c in alphabet for c in v)] or ["abcd"])
    return st.text(alphabet, max_size=10) | st.text(st.characters(blacklist_characters="*"), max_size=8) | keep


@st.composite
def cases(draw: st.DrawFn, star: bool = True) -> tuple[str, list[str]]:
    """Some secret values, with values derived from them (a slice: a value inside another; a value extended on
    either side), and a text made of pieces of them and of other text. `star=False`: no value contains `*`."""
    alphabet = SMALL if star else SMALL.replace("*", "")
    secrets = draw(st.lists(values(alphabet) if star else values(alphabet).filter(lambda v: "*" not in v), max_size=5))
    for value in list(secrets):
        start, stop = sorted(draw(st.tuples(st.integers(0, len(value)), st.integers(0, len(value)))))
        secrets.append(value[start:stop])
        secrets.append(draw(st.text(alphabet, max_size=3)) + value + draw(st.text(alphabet, max_size=3)))
    pieces = st.text(SMALL, max_size=6) | st.text(max_size=6)
    if secrets:
        pieces |= st.sampled_from(secrets) | st.builds(lambda s, n: s[:n], st.sampled_from(secrets), st.integers(0, 9))
    return "".join(draw(st.lists(pieces, max_size=8))), secrets


def forms(secret: str) -> list[str]:
    """The forms of a value that redaction looks for: itself, stripped, and each of its lines, stripped."""
    return [part.strip() for part in (secret, *secret.splitlines()) if part.strip()]


def long_values(secrets: list[str]) -> list[str]:
    """Values redaction promises to remove: long enough, and not only blanks (those would mangle every line)."""
    return [s for s in secrets if len(s) >= MIN_REDACTED_LENGTH and s.strip()]


@SETTINGS
@given(case=cases(star=False))
def test_no_secret_survives(case: tuple[str, list[str]]) -> None:
    """Every value long enough to redact is gone from the output, however the values overlap or nest."""
    text, secrets = case
    redacted = redact(text, secrets)
    assert not [s for s in long_values(secrets) if s in redacted], redacted


@SETTINGS
@given(case=cases())
def test_text_without_a_secret_is_unchanged(case: tuple[str, list[str]]) -> None:
    """Redaction only ever replaces a value: output holding none comes through byte for byte (a value is text,
    never a pattern, so metacharacters match only themselves)."""
    text, secrets = case
    absent = [s for s in secrets if not any(form in text for form in forms(s))]
    assert redact(text, absent) == text
    assert redact(text, []) == text


@SETTINGS
@given(case=cases(star=False))
def test_redaction_is_idempotent(case: tuple[str, list[str]]) -> None:
    """Redacting again changes nothing: output that is redacted twice on its way (error, then report) reads the
    same as output redacted once."""
    text, secrets = case
    once = redact(text, secrets)
    assert redact(once, secrets) == once


@SETTINGS
@given(case=cases())
def test_short_values_are_left_alone(case: tuple[str, list[str]]) -> None:
    """Values shorter than MIN_REDACTED_LENGTH (`1`, `true`-like flags cut short, empty) would mangle every line:
    they are not redacted, alone or beside long ones."""
    text, secrets = case
    short = [s for s in secrets if len(s) < MIN_REDACTED_LENGTH]
    assert redact(text, short) == text
    assert redact(text, secrets) == redact(text, long_values(secrets))


def completed(stdout: str, stderr: str) -> Completed:
    return Completed(("docker", "compose", "up"), 1, stdout, stderr, 0.0)


def env(secrets: list[str]) -> dict[str, str]:
    return {f"SECRET_{index}": value for index, value in enumerate(secrets)}


@st.composite
def outputs(draw: st.DrawFn) -> tuple[Completed, list[str]]:
    """A failed command's stdout and stderr made of secret values and other text; sometimes long enough that the
    kept tail starts inside it (a value may straddle the cut)."""
    text, secrets = draw(cases(star=False))
    if draw(st.booleans()):  # padding after the text, so that the cut falls inside it
        text += "x" * (OUTPUT_TAIL - draw(st.integers(0, len(text))))
    split = draw(st.integers(0, len(text)))
    stdout, stderr = text[:split], text[split:]
    return completed(stdout, stderr), secrets


@SETTINGS
@given(case=outputs())
def test_the_kept_tail_shows_no_secret(case: tuple[Completed, list[str]]) -> None:
    """The tail kept with a failed stack holds no value whole."""
    result, secrets = case
    kept = tail(result, env(secrets))
    assert not [s for s in long_values(secrets) if s in kept], kept
    assert not [s for s in long_values(secrets) if s in last_line(result, env(secrets))]


@SETTINGS
@given(case=outputs())
def test_the_kept_tail_is_the_end_of_the_redacted_output(case: tuple[Completed, list[str]]) -> None:
    """The tail is the end of the whole output redacted: no piece of a value survives because the cut to
    OUTPUT_TAIL, or the stripping of blanks, split the value before redaction could recognise it."""
    result, secrets = case
    whole = redact(result.stdout + result.stderr, long_values(secrets)).strip()
    kept = tail(result, env(secrets))
    assert whole.endswith(kept), (kept[:80], whole[-len(kept) :][:80])


@SETTINGS
@given(case=outputs())
def test_the_last_line_is_the_last_line_of_the_redacted_output(case: tuple[Completed, list[str]]) -> None:
    """The one line that goes into an error message (and a commit status) is a line of the redacted stream, so a
    value spanning lines (a PEM key) or ending in a newline never shows its last line or its bare text."""
    result, secrets = case
    stream = redact(result.stderr or result.stdout, long_values(secrets))
    lines = [line.strip() for line in stream.splitlines() if line.strip()]
    expected = lines[-1] if lines else f"exit code {result.returncode}"
    assert last_line(result, env(secrets)) == expected

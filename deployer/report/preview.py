"""What a plan preview says: the `deployer/plan` commit status and the pull request's comment (pure).

Everything shown comes from a pull request's own files, perhaps a fork's: every path, name and
problem is one printable line, HTML-escaped inside <code> (no markdown, link, image or mention can
be smuggled in), cut to a bounded length, and the comment stays under the forges' size limits.
Secret files are named, never read: a preview decrypts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from deployer.model import Action, CommitStatus, Plan, StatusState
from deployer.report.statuses import one_line

__all__ = ["CONTEXT", "MARKER", "PreviewFindings", "comment_body", "plan_status"]

CONTEXT = "deployer/plan"
#: the hidden line that marks the deployer's one comment on a pull request (protocols.md 9.2)
MARKER = "<!-- gitops-deployer:preview -->"
#: GitHub refuses comments over 65536 characters; GitLab's notes allow 1,000,000
MAX_COMMENT = 60_000
_MAX_REASONS = 5
_MAX_PROBLEMS = 50
_MAX_TEXT = 300


@dataclass(frozen=True)
class PreviewFindings:
    """A preview of one pull request head, as far as it got."""

    number: int
    head: str
    plan: Plan | None = None
    #: stack -> the secret files its deploy would decrypt (paths only)
    secrets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    #: stacks validated so far, of how many
    checked: int = 0
    to_check: int = 0
    done: bool = False
    from_fork: bool = False
    #: why it could not be previewed at all (the head could not be fetched)
    error: str | None = None
    branch: str = "main"

    @property
    def valid(self) -> bool:
        return self.error is None and not self.problems

    def stacks(self, action: Action) -> list[str]:
        return [s.name for s in self.plan.stacks if s.action is action] if self.plan else []

    def summary(self) -> dict[str, object]:
        """What the preview found, as the state store keeps it (and tests read it)."""
        return {
            "head": self.head, "valid": self.valid, "done": self.done, "error": self.error,
            "problems": list(self.problems), "checked": self.checked, "to_check": self.to_check,
            "deploy": self.stacks(Action.DEPLOY), "remove": self.stacks(Action.REMOVE),
            "orphaned": self.stacks(Action.ORPHANED),
            "order": [list(level) for level in self.plan.order] if self.plan else [],
            "secrets": {name: list(files) for name, files in self.secrets.items()},
        }  # fmt: skip


def plan_status(found: PreviewFindings, *, target_url: str | None = None) -> CommitStatus:
    """`deployer/plan` on the head: error (not previewed), failure (invalid), pending (validating), success."""
    if found.error is not None:
        return CommitStatus(found.head, CONTEXT, StatusState.ERROR, one_line(f"cannot preview: {found.error}"),
                            target_url)  # fmt: skip
    if found.problems:
        text = f"invalid: {found.problems[0]}"
        return CommitStatus(found.head, CONTEXT, StatusState.FAILURE, one_line(text), target_url)
    would = _would(found)
    if not found.done:
        text = f"validating {found.to_check} stack{'s' * (found.to_check != 1)}; {would}"
        return CommitStatus(found.head, CONTEXT, StatusState.PENDING, one_line(text), target_url)
    return CommitStatus(found.head, CONTEXT, StatusState.SUCCESS, one_line(f"valid: {would}"), target_url)


def _would(found: PreviewFindings) -> str:
    deploy, remove = found.stacks(Action.DEPLOY), found.stacks(Action.REMOVE)
    if not deploy and not remove:
        return "no stack would change"
    parts = []
    if deploy:
        parts.append(f"would redeploy {len(deploy)} stack{'s' * (len(deploy) != 1)}: {', '.join(deploy)}")
    if remove:
        parts.append(f"remove {', '.join(remove)}")
    return "; ".join(parts)


def comment_body(found: PreviewFindings) -> str:
    """The whole preview as the pull request's comment (Markdown), starting with MARKER."""
    lines = [MARKER, f"### deployer plan for {_code(found.head[:12])}: {_verdict(found)}", ""]
    lines.append(
        f"Planned against what is deployed now (each stack's last good commit); nothing is deployed from a pull"
        f" request{', least of all from a fork' if found.from_fork else ''}: only {_code(found.branch)} deploys."
    )
    lines.append("")
    if found.error is not None:
        lines += [f"Not previewed: {_code(found.error)}", ""]
    plan = found.plan
    if plan is not None:
        lines += _table(found, plan)
    if found.problems:
        lines += ["", f"**Validation problems** ({len(found.problems)}):", ""]
        lines += [f"- {_code(p)}" for p in found.problems[:_MAX_PROBLEMS]]
        if len(found.problems) > _MAX_PROBLEMS:
            lines.append(f"- and {len(found.problems) - _MAX_PROBLEMS} more")
    elif not found.done and found.error is None:
        lines += ["", f"Validating {found.to_check} stacks with placeholder secrets: {found.checked} checked so far."]
    body = "\n".join(lines) + "\n"
    if len(body) > MAX_COMMENT:
        body = body[: MAX_COMMENT - 60].rsplit("\n", 1)[0] + "\n\n(cut: the whole plan is `deployer plan`'s)\n"
    return body


def _verdict(found: PreviewFindings) -> str:
    if found.error is not None:
        return "not previewed"
    if found.problems:
        return "invalid"
    return "valid" if found.done else "validating"


def _table(found: PreviewFindings, plan: Plan) -> list[str]:
    runnable = [s for s in plan.stacks if s.action is not Action.ORPHANED]
    orphaned = [s for s in plan.stacks if s.action is Action.ORPHANED]
    lines: list[str] = []
    if not runnable:
        lines.append("No stack would be redeployed or removed.")
    else:
        position = {name: index for index, level in enumerate(plan.order, 1) for name in level}
        lines += ["| step | stack | would | why | secrets decrypted |", "|---|---|---|---|---|"]
        for planned in sorted(runnable, key=lambda s: (position.get(s.name, 0), s.name)):
            action = "redeploy" if planned.action is Action.DEPLOY else "be removed"
            lines.append(
                f"| {position.get(planned.name, '')} | {_code(planned.name)} | {action} | {_reasons(planned.reasons)}"
                f" | {', '.join(_code(f) for f in found.secrets.get(planned.name, ())) or 'none'} |"
            )
        lines += ["", "Stacks in the same step may run together; a step starts once the stacks it depends on are up."]
    if orphaned:
        lines += ["", "**Orphaned** (gone from the repository, left running: DEPLOYER_PRUNE is off): "
                  + ", ".join(_code(s.name) for s in orphaned)]  # fmt: skip
    return lines


def _reasons(reasons: tuple[str, ...]) -> str:
    shown = [_code(r) for r in reasons[:_MAX_REASONS]]
    if len(reasons) > _MAX_REASONS:
        shown.append(f"and {len(reasons) - _MAX_REASONS} more")
    return "<br>".join(shown)


def _code(text: str) -> str:
    """Text from the pull request as inert inline code: one printable line, escaped, bounded."""
    flat = "".join(c if c.isprintable() else "?" for c in " ".join(str(text).split()))
    if len(flat) > _MAX_TEXT:
        flat = flat[: _MAX_TEXT - 1] + "…"
    escaped = flat.translate(_INERT).replace("www.", "www&#46;")
    return f"<code>{escaped}</code>"


#: Markdown inside inline HTML is still Markdown: emphasis, links, images, mentions, emoji, tables and
#: autolinks are made plain characters (as entities, shown as they are)
_INERT = str.maketrans({c: f"&#{ord(c)};" for c in "&<>\"'|`*_[]()~@#!\\:{}+-=$^"})

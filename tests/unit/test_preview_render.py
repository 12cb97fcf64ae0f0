"""What a plan preview says (deployer.report.preview): statuses, and a comment no pull request can inject into."""

from __future__ import annotations

import html
import re

from hypothesis import given
from hypothesis import strategies as st

from deployer.model import Action, Plan, PlannedStack, StatusState
from deployer.report.preview import MARKER, MAX_COMMENT, PreviewFindings, comment_body, plan_status

HEAD = "a" * 40


def plan(*names: str, remove: tuple[str, ...] = ()) -> Plan:
    stacks = tuple(PlannedStack(n, Action.DEPLOY, (f"stacks/{n}/compose.yaml",)) for n in names)
    stacks += tuple(PlannedStack(n, Action.REMOVE, ("gone",)) for n in remove)
    return Plan(target=HEAD, base=None, stacks=stacks, order=(tuple(names) + remove,))


def test_the_status_says_pending_then_valid_with_the_stacks_or_invalid_with_the_first_problem() -> None:
    found = PreviewFindings(number=1, head=HEAD, plan=plan("auth", "monitoring"), to_check=2)
    pending = plan_status(found)
    assert (pending.context, pending.state) == ("deployer/plan", StatusState.PENDING)
    done = plan_status(PreviewFindings(number=1, head=HEAD, plan=plan("auth", "monitoring"), done=True))
    assert (done.state, done.description) == (StatusState.SUCCESS, "valid: would redeploy 2 stacks: auth, monitoring")
    bad = plan_status(PreviewFindings(number=1, head=HEAD, problems=("stacks/x/compose.yaml: bad", "more"), done=True))
    assert (bad.state, bad.description) == (StatusState.FAILURE, "invalid: stacks/x/compose.yaml: bad")
    gone = plan_status(PreviewFindings(number=1, head=HEAD, error="cannot fetch refs/pull/1/head", done=True))
    assert gone.state is StatusState.ERROR
    assert len(plan_status(PreviewFindings(number=1, head=HEAD, plan=plan(*[f"s{i}" for i in range(200)]),
                                           done=True)).description) <= 140  # fmt: skip


def test_the_comment_lists_order_reasons_secret_names_and_problems() -> None:
    found = PreviewFindings(number=1, head=HEAD, plan=plan("auth", remove=("old",)), done=True,
                            secrets={"auth": ("secrets/auth.sops.env",)}, problems=("p1",))  # fmt: skip
    body = html.unescape(comment_body(found))
    assert body.startswith(MARKER)
    assert "stacks/auth/compose.yaml" in body and "secrets/auth.sops.env" in body and "be removed" in body
    assert "p1" in body and "invalid" in body


#: what would make text from a pull request more than text on a forge's Markdown
_ACTIVE = re.compile(r"[<>\[\]()*_`|@#!~\\:]|www\.")


@given(st.text(max_size=400), st.text(max_size=400))
def test_nothing_from_a_pull_request_is_markdown_html_or_a_mention(path: str, problem: str) -> None:
    planned = Plan(HEAD, None, (PlannedStack("app", Action.DEPLOY, (path,)),), (("app",),))
    found = PreviewFindings(number=1, head=HEAD, done=True, problems=(problem,), plan=planned)
    body = comment_body(found)
    for cell in re.findall(r"<code>(.*?)</code>", body, flags=re.DOTALL):
        plain = re.sub(r"&#\d+;|&amp;|&lt;|&gt;", "", cell)  # entities are shown as the character they name
        assert "\n" not in cell and not _ACTIVE.search(plain) and "&" not in plain, cell


def test_a_huge_plan_stays_under_the_forges_comment_limit() -> None:
    names = [f"stack-{i:04}" for i in range(3000)]
    body = comment_body(PreviewFindings(number=1, head=HEAD, plan=plan(*names), done=True))
    assert len(body) <= MAX_COMMENT and body.startswith(MARKER)

"""Make docs/images/preview-comment.png: a plan preview comment as the forge stand-in received it, rendered.

A small config repository (a stack with a secret file, one that depends on it, one removed, one whose
pull-request version bind-mounts `/`) is served by a real `deployer serve`; a signed GitHub `pull_request`
delivery of the pull request's head is sent, and the comment the forge stand-in (tests/servers.py: no forge
runs here) received is rendered as Markdown (markdown-it, CommonMark with tables, raw HTML allowed, as
GitHub's renderer takes it) in a page styled like a comment, which headless Chromium screenshots.
Run from the repository root: `python scripts/preview_screenshot.py` (the engine and sops must be there:
scripts/bootstrap). The rendered HTML is kept beside the image.
"""

from __future__ import annotations

import html
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from markdown_it import MarkdownIt  # noqa: E402

from benchmarks import _common as c  # noqa: E402
from benchmarks._served import SECRET, finished, push, serving  # noqa: E402
from benchmarks.preview import NUMBER, deliver  # noqa: E402
from tests.helpers import ConfigRepo, git, service  # noqa: E402
from tests.servers import ForgeServer  # noqa: E402

OUT = ROOT / "docs" / "images"
STYLE = """body { font: 14px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
  background: #f6f8fa; margin: 0; padding: 24px; }
.comment { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; max-width: 860px; }
.head { background: #f6f8fa; border-bottom: 1px solid #d0d7de; padding: 8px 16px; color: #59636e; }
.body { padding: 8px 16px 16px; } h3 { margin: 12px 0 8px; font-size: 16px; }
code { background: #eff1f3; border-radius: 4px; padding: 1px 5px; font: 12px ui-monospace, monospace; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #d0d7de; padding: 4px 10px; }
th { background: #f6f8fa; text-align: left; }"""


def main() -> int:
    prefix = c.new_prefix()
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as folder:
        tmp = Path(folder)
        key = tmp / "key.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True)
        repo = ConfigRepo(tmp / "config", recipient=recipient.stdout.strip())
        # named with a prefix of its own: never a real deployment's names on the same engine
        auth, web, old, files = (f"{prefix}-{name}" for name in ("auth", "web", "old-wiki", "files"))
        repo.stack(auth, {"server": service(environment={"LOG": "info"})},
                   deployer={"secrets": ["secrets/auth.env"]})  # fmt: skip
        repo.secret("secrets/auth.env", {"AUTH_SECRET_KEY": "not-shown-anywhere"})
        repo.stack(web, {"app": service()}, deployer={"depends_on": [auth]})
        repo.stack(old, {"app": service()})
        repo.stack(files, {"app": service()})
        base = repo.commit("four stacks")
        forge = ForgeServer("github")
        env = c.tool_env(tmp / "state", DEPLOYER_REPO_URL=repo.url, DEPLOYER_WEBHOOK_SECRET=SECRET,
                         DEPLOYER_POLL_INTERVAL="0", DEPLOYER_DRIFT_INTERVAL="0", DEPLOYER_FORGE="github",
                         DEPLOYER_FORGE_API_URL=forge.api_url, DEPLOYER_FORGE_TOKEN=forge.token,
                         DEPLOYER_FORGE_REPO="ops/config", DEPLOYER_PRUNE="true",
                         SOPS_AGE_KEY_FILE=str(key))  # fmt: skip
        port = c.free_port()
        try:
            with c.docker_cleanup(prefix), serving(env, port, tmp / "serve.log") as url:
                deployment_id, _ = push(url, base, "0" * 40)
                finished(url, deployment_id)
                git(repo.path, "checkout", "--quiet", "-B", "feature")
                repo.stack(auth, {"server": service(environment={"LOG": "debug"})},
                           deployer={"secrets": ["secrets/auth.env"]})  # fmt: skip
                repo.remove(f"stacks/{old}")
                repo.stack(files, {"app": service(volumes=["/:/host"])})
                head = repo.commit("debug logging for auth, retire the wiki, mount the host")
                git(repo.path, "update-ref", f"refs/pull/{NUMBER}/head", head)
                deliver(url, head)
                deadline = time.monotonic() + 120
                while forge.latest(head).get("deployer/plan") not in ("success", "failure"):
                    if time.monotonic() > deadline:
                        raise TimeoutError("no verdict")
                    time.sleep(0.05)
                time.sleep(1)  # the comment's last edit follows the status
                [comment] = forge.comments_on(NUMBER)
                log = (tmp / "serve.log").read_text()
        finally:
            forge.close()
    assert "not-shown-anywhere" not in comment.body and "not-shown-anywhere" not in log
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(comment.body)
    edited = f"edited {comment.edits} time{'' if comment.edits == 1 else 's'}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>plan preview</title><style>{STYLE}</style>
</head><body><div class="comment"><div class="head"><b>{html.escape(comment.author)}</b> commented ({edited})
</div><div class="body">{rendered}</div></div></body></html>"""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "preview-comment.html").write_text(page)
    (OUT / "preview-comment.md").write_text(comment.body)
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={OUT / 'preview-comment.png'}", "--window-size=920,500",
                    (OUT / "preview-comment.html").as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
    print(f"wrote {OUT / 'preview-comment.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `deployer` command: a thin adapter from arguments to pipeline functions and back to text.

Exit codes: 0 success, 1 a deployment ran and failed, 2 bad input (nothing was deployed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

from deployer import __version__
from deployer.console import ConsoleProgress, format_plan, format_summary, table
from deployer.errors import ConfigError, DeployerError, PlanError
from deployer.model import Plan, told
from deployer.report import format_event
from deployer.runner import SubprocessRunner
from deployer.secrets_ops import check, decrypt, edit, encrypt, init, rotate, secret_files, write_sops_config
from deployer.settings import Settings
from deployer.state import StateStore

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        code: int = args.handler(args, settings)
    except DeployerError as error:
        for line in error.details or (error.message,):
            print(f"deployer: error: {line}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("deployer: interrupted", file=sys.stderr)
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployer", description="GitOps for Docker Compose.")
    parser.add_argument("--version", action="version", version=f"deployer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook service (gunicorn) and its deploy worker")
    serve.add_argument("--bind", metavar="HOST:PORT", help="listen address (default: DEPLOYER_BIND)")
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run only the deploy worker (serve starts one)")
    worker.set_defaults(handler=_worker)

    plan = commands.add_parser("plan", help="print the affected stacks, why, and the order")
    plan.add_argument("--from", dest="base", metavar="SHA", help="base commit (default: every stack is new)")
    plan.add_argument("--to", dest="target", metavar="SHA", help="target commit (default: the branch head)")
    plan.add_argument("--against-deployed", action="store_true",
                      help="plan from what is deployed now (each stack's last good commit), not --from")  # fmt: skip
    _repo_option(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    plan.set_defaults(handler=_plan)

    run = commands.add_parser("deploy", help="deploy now, in dependency order, with live progress")
    _repo_option(run)
    run.add_argument("--ref", help="branch, tag or commit to deploy (default: DEPLOYER_BRANCH)")
    run.add_argument("stacks", nargs="*", metavar="STACK", help="deploy exactly these stacks (default: affected)")
    run.set_defaults(handler=_deploy)

    check = commands.add_parser("validate", help="check every stack and secret in a working tree")
    check.add_argument("--repo", default=".", metavar="PATH", help="working tree to check (default: .)")
    check.add_argument("--allow-placeholders", action="store_true",
                       help="accept committed placeholders and the example key (this repo's own CI)")  # fmt: skip
    check.set_defaults(handler=_validate)

    secrets = commands.add_parser("secrets", help="encrypt, decrypt, edit, check and rotate SOPS files")
    secrets.add_argument("--repo", default=".", metavar="PATH", help="repository root (default: .)")
    actions = secrets.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("encrypt", "encrypt plaintext files in place to the recipients .sops.yaml names"),
        ("edit", "edit one encrypted file in $EDITOR (sops edit)"),
        ("rotate", "re-encrypt to the current recipients with a new data key (default: every file in secrets/)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("files", nargs="+" if name != "rotate" else "*", metavar="FILE")
    init = actions.add_parser("init", help="generate strong values for every placeholder and encrypt to your key")
    init.add_argument("--recipient", action="append", default=[], metavar="AGE1...",
                      help="your age public key (repeat for each person or machine); rewrites .sops.yaml")  # fmt: skip
    init.add_argument("files", nargs="*", metavar="FILE", help="default: every file in secrets/")
    decrypt = actions.add_parser("decrypt", help="print a file's plaintext (to stdout; nothing is written)")
    decrypt.add_argument("files", nargs=1, metavar="FILE")
    check = actions.add_parser("check", help="fail on any plaintext file or value (no key needed; pre-commit hook)")
    check.add_argument("files", nargs="*", metavar="PATH", help="files or folders (default: secrets/)")
    secrets.set_defaults(handler=_secrets)

    release = commands.add_parser("release", help="a stack held at a manual commit converges to the branch head")
    _repo_option(release)
    release.add_argument("stack", metavar="STACK")
    release.set_defaults(handler=_release)
    _pause_commands(commands)

    _audit_parser(commands)

    status = commands.add_parser("status", help="last deployments and each stack's deployed commit")
    status.add_argument("deployment", nargs="?", metavar="DEPLOYMENT", help="show one deployment, with compose output")
    status.add_argument("--limit", type=int, default=10, help="how many deployments to list")
    status.add_argument("--json", action="store_true", help="print stacks and deployments as JSON")
    status.set_defaults(handler=_status)
    return parser


def _audit_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="print the audit trail (whether or not Loki is configured)")
    audit.add_argument("--deployment", metavar="ID", help="events of one deployment")
    audit.add_argument("--stack", metavar="NAME", help="events of one stack")
    audit.add_argument("--actor", metavar="NAME", help="events of one person or machine account")
    audit.add_argument("--event", metavar="NAME", help="one kind of event, e.g. deployment.finished")
    audit.add_argument("--since", metavar="TIME", type=_moment,
                       help="from this time: RFC 3339 (2026-12-01T10:00:00Z) or an age (90s, 15m, 2h, 7d)")  # fmt: skip
    audit.add_argument("--until", metavar="TIME", type=_moment, help="before this time (same forms as --since)")
    audit.add_argument("--limit", type=int, default=1000, help="at most this many (the oldest first; default 1000)")
    audit.add_argument("--json", action="store_true", help="one JSON object a line, as shipped to Loki")
    audit.add_argument("--follow", "-f", action="store_true", help="keep printing events as they are recorded")
    audit.set_defaults(handler=_audit)


def _service_settings(settings: Settings) -> Settings:
    """The service refuses to start without a webhook secret or a repository to deploy."""
    if not settings.webhook_secret:
        raise ConfigError("DEPLOYER_WEBHOOK_SECRET (or DEPLOYER_WEBHOOK_SECRET_FILE) is required to serve webhooks")
    if not settings.repo_url:
        raise ConfigError("DEPLOYER_REPO_URL is required: the clone URL of the config repository")
    return settings


def _beside_engine(settings: Settings) -> None:
    """In a container, refuse to start when the engine would not see the state dir at the same path."""
    from deployer.apply.beside import check_beside_engine
    from deployer.runner import SubprocessRunner

    check_beside_engine(SubprocessRunner(), settings.docker_env, settings.state_dir)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from deployer.serve import serve

    settings = _service_settings(settings)
    _log_to_stderr()
    _beside_engine(settings)
    return serve(settings, bind=args.bind or settings.bind)


def stop_on_signal(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    """A signal handler that sets `stop`. Not by calling stop.set() itself: that takes the event's lock,
    which the main thread may hold (inside stop.wait) when the signal arrives, or this handler may
    when a second signal does; a thread takes it once the main thread lets go."""

    def handler(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=stop.set, name="stop").start()

    return handler


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from deployer.jobs import Worker
    from deployer.pipeline import Deps  # lazy: `serve` keeps git out of the gunicorn master

    settings = _service_settings(settings)
    _log_to_stderr()
    _beside_engine(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_on_signal(stop))
    Worker(Deps.from_settings(settings)).run(stop)
    return 0


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _repo_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo", metavar="PATH", help="repository path or URL (default: DEPLOYER_REPO_URL, else the current folder)"
    )


def _repo_url(args: argparse.Namespace, settings: Settings) -> str:
    return str(args.repo or settings.repo_url or Path.cwd())


def _plan(args: argparse.Namespace, settings: Settings) -> int:
    from deployer.pipeline import Deps, plan_against_deployed, plan_between  # lazy: keeps git out of gunicorn

    if args.against_deployed and args.base:
        raise ConfigError("--against-deployed plans from what is deployed: it takes no --from")
    deps = Deps.from_settings(settings)
    if args.against_deployed:
        plan = plan_against_deployed(deps, repo_url=_repo_url(args, settings), target_ref=args.target)
    else:
        plan = plan_between(
            deps, repo_url=_repo_url(args, settings), base=args.base, target_ref=args.target or settings.branch
        )
    print(json.dumps(_plan_json(plan), indent=2) if args.json else format_plan(plan))
    return 0


def _plan_json(plan: Plan) -> dict[str, object]:
    return {
        "from": plan.base,
        "to": plan.target,
        "stacks": [{"name": s.name, "action": str(s.action), "reasons": list(s.reasons)} for s in plan.stacks],
        "order": [list(level) for level in plan.order],
    }


def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    from deployer.pipeline import Deps, Request, deploy  # lazy: `serve` keeps git out of the gunicorn master

    _beside_engine(settings)
    deps = Deps.from_settings(settings)
    progress = ConsoleProgress()
    try:
        request = Request(
            repo_url=_repo_url(args, settings),
            ref=args.ref or settings.branch,
            stacks=tuple(args.stacks),
            trigger="cli",
            actor=os.environ.get("USER"),
        )
        outcome = deploy(deps, request, progress=progress)
    finally:
        progress.close()
    print(format_summary(outcome))
    if outcome.error:
        print(f"deployer: error: {outcome.error}", file=sys.stderr)
    return outcome.exit_code


def _release(args: argparse.Namespace, settings: Settings) -> int:
    from deployer.pipeline import Deps, Request, deploy  # lazy: `serve` keeps git out of the gunicorn master

    deps = Deps.from_settings(settings)
    if args.stack not in {r.name for r in deps.store.stacks()}:
        raise PlanError(f"no stack {args.stack!r} has been deployed")
    released = deps.store.release([args.stack])
    print(f"{args.stack}: {'released' if released else 'was not held'}; deploying {settings.branch}", file=sys.stderr)
    progress = ConsoleProgress()
    try:
        request = Request(repo_url=_repo_url(args, settings), ref=settings.branch, stacks=(args.stack,), trigger="cli",
                          actor=os.environ.get("USER"), reason=f"release {args.stack}")  # fmt: skip
        outcome = deploy(deps, request, progress=progress)
    finally:
        progress.close()
    print(format_summary(outcome))
    return outcome.exit_code


def _pause_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, what in (("pause", "leave a deployed stack alone: no push or poll touches it until it is resumed"),
                       ("resume", "a paused stack follows the branch again (from the next push or poll)")):  # fmt: skip
        paused = commands.add_parser(verb, help=what)
        paused.add_argument("stack", metavar="STACK")
        if verb == "pause":
            paused.add_argument("--reason", help="why, for the audit trail and /api/stacks")
        paused.set_defaults(handler=_pause)


def _pause(args: argparse.Namespace, settings: Settings) -> int:
    """`deployer pause STACK` / `resume STACK`: recorded with the actor, as `stack.paused` / `stack.resumed`."""
    store = StateStore(settings.state_dir / "state.db")
    if args.stack not in {r.name for r in store.stacks() if r.last_good_commit}:
        raise PlanError(f"no stack {args.stack!r} has been deployed")
    actor = os.environ.get("USER") or "cli"
    if args.command == "pause":
        event = told("stack.paused", {"stack": args.stack, "actor": actor, "reason": args.reason, "trigger": "cli"})
        done = store.pause(args.stack, actor=actor, reason=args.reason, told=event)
        print(f"{args.stack}: {'paused' if done else 'was paused already'}: pushes and polls leave it alone")
    else:
        done = store.resume(args.stack, told=told("stack.resumed", {"stack": args.stack, "actor": actor,
                                                                     "trigger": "cli"}))  # fmt: skip
        print(f"{args.stack}: {'resumed' if done else 'was not paused'}: it follows {settings.branch} again")
    return 0


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    from deployer.pipeline import Deps, validate_tree  # lazy: `serve` keeps git out of the gunicorn master

    deps = Deps.from_settings(settings)
    catalog = validate_tree(deps, Path(args.repo), allow_placeholders=args.allow_placeholders)
    for line in (w for name in catalog for w in catalog[name].warnings):
        print(f"deployer: warning: {line}", file=sys.stderr)
    print(f"ok: {len(catalog)} stacks valid in {Path(args.repo).resolve() / settings.stacks_dir}")
    return 0


def _secrets(args: argparse.Namespace, settings: Settings) -> int:
    root = Path(args.repo).resolve()
    runner = SubprocessRunner()
    env = dict(settings.sops_env)
    files = [_in_repo(root, name) for name in args.files]
    if args.action == "check":
        checked = secret_files(root, args.files or ["secrets"])
        problems = check(root, checked)
        for line in problems:
            print(f"deployer: error: {line}", file=sys.stderr)
        if problems:
            return 2
        print(f"ok: {len(checked)} secret files, every value encrypted")
        return 0
    if args.action == "decrypt":
        sys.stdout.write(decrypt(root, files[0], runner=runner, env=env))
        return 0
    if args.action == "edit":
        return edit(root, files[0], runner=runner, env=env)
    if args.action == "init":
        return _secrets_init(root, args.recipient, files or secret_files(root), runner=runner, env=env)
    operation = encrypt if args.action == "encrypt" else rotate
    for path in files or secret_files(root):
        operation(root, path, runner=runner, env=env)
        print(f"{args.action}ed {path}" if args.action == "encrypt" else f"rotated {path}")
    return 0


def _secrets_init(
    root: Path, recipients: list[str], files: list[PurePosixPath], *, runner: SubprocessRunner, env: dict[str, str]
) -> int:
    if recipients:
        write_sops_config(root, recipients)
        print(f"wrote .sops.yaml: secrets/ encrypted to {', '.join(r[:16] + '...' for r in recipients)}")
    for done in init(root, files, runner=runner, env=env):
        print(f"{done.path}: generated {', '.join(done.generated) or 'nothing'}")
        for key, source in done.by_hand:
            print(f"  set by hand: {key} (from {source}): deployer secrets edit {done.path}", file=sys.stderr)
    print("values are in the files only, encrypted; read one with `deployer secrets decrypt FILE`")
    return 0


def _in_repo(root: Path, name: str) -> PurePosixPath:
    """A file argument as a repository path: relative names are relative to the repository root."""
    path = Path(name)
    return PurePosixPath(os.path.relpath(path.resolve(), root) if path.is_absolute() else path)


_AGE = re.compile(r"^(?P<n>\d+)(?P<unit>[smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _moment(text: str) -> int:
    """--since/--until: nanoseconds since the epoch, from RFC 3339 or an age before now."""
    age = _AGE.match(text.strip())
    if age:
        return time.time_ns() - int(age["n"]) * _UNITS[age["unit"]] * 1_000_000_000
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not an RFC 3339 time or an age like 15m") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone (Z or +01:00)")
    return int(moment.timestamp() * 1e9)


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    store = StateStore(settings.state_dir / "state.db")
    filters = {"deployment": args.deployment, "stack": args.stack, "actor": args.actor, "event": args.event,
               "since_ns": args.since, "until_ns": args.until}  # fmt: skip
    last, printed = 0, 0
    while True:
        events = store.events(**filters, after_id=last, limit=max(0, args.limit - printed) if not args.follow else 1000)
        for event in events:
            print(event.line if args.json else format_event(event.fields), flush=True)
        printed += len(events)
        last = events[-1].id if events else last
        if not args.follow:
            return 0
        if not events:
            time.sleep(1.0)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    store = StateStore(settings.state_dir / "state.db")
    if args.deployment:
        return _show_deployment(store, args.deployment, as_json=args.json)
    stacks = store.stacks()
    deployments = store.deployments(limit=args.limit)
    if args.json:
        drift = store.drift()
        shaped = [vars(s) | {"held": store.held().get(s.name), "drift": drift.get(s.name, [])} for s in stacks]
        print(json.dumps({"stacks": shaped, "deployments": deployments}, indent=2))
        return 0
    held, paused, drift = store.held(), store.paused(), store.drift()
    rows = [[s.name, (s.last_good_commit or "-")[:12], s.deployed_at or "-", s.last_state or "-",
             _held_text(held.get(s.name)) + (" (paused)" if s.name in paused else ""),
             _drift_text(drift.get(s.name, []))] for s in stacks]  # fmt: skip
    print(table(["STACK", "DEPLOYED COMMIT", "DEPLOYED AT", "LAST RESULT", "HELD", "DRIFT"], rows)
          if rows else "no stack deployed yet")  # fmt: skip
    print()
    rows = [
        [str(d["id"]), str(d["state"]), (d["commit"] or "-")[:12], str(d["trigger"]), str(d["created_at"]),
         _stack_counts(d)]
        for d in deployments
    ]  # fmt: skip
    print(table(["DEPLOYMENT", "STATE", "COMMIT", "TRIGGER", "CREATED", "STACKS"], rows) if rows else "no deployments")
    return 0


def _drift_text(found: list[dict[str, Any]]) -> str:
    """A stack's drift in a few words: "-", or how many findings and the first one's detail."""
    if not found:
        return "-"
    more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
    return f"{found[0].get('kind')}: {found[0].get('detail')}{more}"


def _held_text(held: dict[str, str | None] | None) -> str:
    if held is None:
        return "-"
    by = f" by {held['actor']}" if held.get("actor") else ""
    why = f": {held['reason']}" if held.get("reason") else ""
    return f"at {str(held['commit'])[:12]}{by}{why}"


def _show_deployment(store: StateStore, deployment_id: str, *, as_json: bool) -> int:
    deployment = store.deployment(deployment_id, with_output=True)
    if deployment is None:
        raise PlanError(f"no deployment {deployment_id!r}")
    if as_json:
        print(json.dumps(deployment, indent=2))
        return 0
    print(f"deployment {deployment['id']} {deployment['state']} at {deployment['commit'] or '-'}")
    print(f"  {deployment['trigger']} by {deployment['actor'] or '-'}, created {deployment['created_at']}")
    if deployment["error"]:
        print(f"  error: {deployment['error']}")
    for stack in deployment["stacks"]:
        print(f"\n{stack['name']}: {stack['action']} {stack['state']} ({', '.join(stack['reasons'])})")
        if stack["error"]:
            print(f"  {stack['error']}")
        for line in (stack.get("output") or "").splitlines()[-40:]:
            print(f"  | {line}")
    return 0


def _stack_counts(deployment: dict[str, object]) -> str:
    stacks = deployment["stacks"]
    assert isinstance(stacks, list)
    if not stacks:
        return str(deployment.get("error") or "none")
    return ", ".join(f"{s['name']}:{s['state']}" for s in stacks)

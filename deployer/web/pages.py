"""The pages: deployment history, one deployment, the stacks and their graph, and a person's redeploy form.

Server-rendered with Flask's Jinja (autoescaped), no script library, styles under /static. The gate
(deployer.web.auth) has already decided who may read; the form is shown to deployers only, carries a
CSRF token bound to the user, and posts through manual.request_redeploy, the code of POST /api/deployments.
Errors on these routes are HTML pages with the status the API would answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from deployer.errors import AuthorizationError, DeployerError, EventError, PlanError
from deployer.model import DeploymentState, Trigger
from deployer.runner import SubprocessRunner
from deployer.state import StackRecord, StateStore
from deployer.web import refs
from deployer.web.api import host_states
from deployer.web.auth import current_identity, refused
from deployer.web.context import Service
from deployer.web.http_errors import HTTP_STATUS
from deployer.web.manual import request_redeploy

__all__ = ["csrf_token", "pages"]

log = logging.getLogger("deployer.web")

#: the stylesheet is under /static/pages: the app's own /static route (no folder) would shadow /static/<file>
pages = Blueprint(
    "pages", __name__, template_folder="templates", static_folder="static", static_url_path="/static/pages"
)

PAGE_SIZE: Final = 50
#: seconds a form's CSRF token is accepted
CSRF_LIFETIME: Final = 3600
#: a deployment page reloads itself every this many seconds while its deployment is queued or running
REFRESH: Final = 2
_ACTIVE = frozenset({DeploymentState.QUEUED, DeploymentState.RUNNING})
_NODE_W, _NODE_H, _GAP_X, _GAP_Y = 150, 34, 20, 46


@pages.get("/")
def history() -> ResponseReturnValue:
    store = Service.current(current_app).store
    filters = {key: (request.args.get(key) or "").strip()[:200] for key in ("stack", "trigger", "result")}
    page = max(1, request.args.get("page", default=1, type=int) or 1)
    ids = _deployment_ids(store, filters, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE + 1)
    shown = [found for i in ids[:PAGE_SIZE] if (found := store.deployment(i)) is not None]
    return render_template("history.html", deployments=shown, filters=filters, page=page,
                           more=len(ids) > PAGE_SIZE, triggers=[str(t) for t in Trigger],
                           results=[str(s) for s in DeploymentState], stacks=[r.name for r in store.stacks()],
                           **_chrome())  # fmt: skip


@pages.get("/deployments/<deployment_id>")
def deployment(deployment_id: str) -> ResponseReturnValue:
    found = Service.current(current_app).store.deployment(deployment_id, with_output=True)
    if found is None:
        raise PlanError(f"no deployment {deployment_id!r}")
    active = found["state"] in _ACTIVE
    return render_template("deployment.html", d=found, refresh=REFRESH if active else None, active=active, **_chrome())


@pages.get("/stacks")
def stacks() -> ResponseReturnValue:
    service = Service.current(current_app)
    records = service.store.stacks()
    chrome = _chrome()
    choices = _choices(service, records) if chrome["can_deploy"] else []
    return render_template("stacks.html", records=records, held=service.store.held(), graph=_graph(records),
                           choices=choices, branch=service.settings.branch, hosts=host_states(service),
                           paused=service.store.paused(), drift=service.store.drift(),
                           **chrome)  # fmt: skip


@pages.post("/deployments")
def redeploy() -> ResponseReturnValue:
    """The form's redeploy: CSRF checked, then exactly what POST /api/deployments does with the same fields."""
    _check_csrf(request.form.get("csrf"))
    body = {
        "stacks": request.form.getlist("stacks"),
        "ref": request.form.get("ref", "").strip() or None,
        "reason": request.form.get("reason", "").strip() or None,
        "force": request.form.get("force") == "on",
    }
    deployment_id, _ = request_redeploy(body)
    return redirect(url_for("pages.deployment", deployment_id=deployment_id), code=303)


@pages.errorhandler(DeployerError)
def _deployer_error(error: DeployerError) -> ResponseReturnValue:
    status = next((code for kind, code in HTTP_STATUS.items() if isinstance(error, kind)), 500)
    log.warning("%s %s -> %d %s: %s (from %s)", request.method, request.path, status, error.code, error.message,
                request.remote_addr)  # fmt: skip
    refused(error.code, error.message)
    return render_template("error.html", status=status, code=error.code, message=error.message, **_chrome()), status


@pages.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> ResponseReturnValue:
    status = error.code or 500
    code = error.name.lower().replace(" ", "_")
    refused(code, str(error.description))
    return render_template("error.html", status=status, code=code, message=error.description, **_chrome()), status


# -- CSRF ------------------------------------------------------------------------------------------------


def csrf_token(username: str, *, now: float | None = None) -> str:
    """`<unix time>.<HMAC-SHA256(username, time)>`, keyed from the webhook secret so every worker agrees."""
    stamp = str(int(time.time() if now is None else now))
    return f"{stamp}.{_csrf_mac(username, stamp)}"


def _csrf_mac(username: str, stamp: str) -> str:
    secret = Service.current(current_app).settings.webhook_secret
    if not secret:
        raise AuthorizationError("the form is off: DEPLOYER_WEBHOOK_SECRET is not set (it keys the CSRF tokens)")
    key = hmac.new(secret.encode(), b"deployer-csrf", hashlib.sha256).digest()
    return hmac.new(key, f"{username}\0{stamp}".encode(), hashlib.sha256).hexdigest()


def _check_csrf(token: str | None) -> None:
    """Refuse a form post without a token (400) or with one not this user's, forged or expired (403)."""
    identity = current_identity()
    username = identity.username if identity else ""
    error: DeployerError | None = None
    stamp, _, mac = (token or "").partition(".")
    if not token:
        error = EventError("csrf: the form's token is missing; reload the page and send it again")
    elif not stamp.isdigit() or not -60 <= time.time() - int(stamp) <= CSRF_LIFETIME:
        error = AuthorizationError("csrf: the form's token has expired; reload the page and send it again")
    elif not hmac.compare_digest(mac.encode(), _csrf_mac(username, stamp).encode()):
        error = AuthorizationError("csrf: the form's token is not valid for this user")
    if error is not None:
        raise error  # answered, and audited as a refused write, by the error handler


# -- helpers ---------------------------------------------------------------------------------------------


def _chrome() -> dict[str, Any]:
    """What every page's frame shows: who is signed in, whether they may deploy, and their form token."""
    identity = current_identity()
    settings = Service.current(current_app).settings
    if identity is None:
        return {"identity": None, "can_deploy": False, "csrf": None, "duration": duration}
    can_deploy = identity.via == "open" or bool(identity.groups & set(settings.deploy_groups))
    token = csrf_token(identity.username) if can_deploy and settings.webhook_secret else None
    return {"identity": identity, "can_deploy": can_deploy, "csrf": token, "duration": duration}


def _deployment_ids(store: StateStore, filters: dict[str, str], *, offset: int, limit: int) -> list[str]:
    """The ids of the deployments that pass the filters, newest first."""
    where, params = [], []
    if filters.get("stack"):
        where.append("id IN (SELECT deployment_id FROM deployment_stacks WHERE name = ?)")
        params.append(filters["stack"])
    for column, key in (("trigger", "trigger"), ("state", "result")):
        if filters.get(key):
            where.append(f"{column} = ?")
            params.append(filters[key])
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    query = f"SELECT id FROM deployments{clause} ORDER BY rowid DESC LIMIT ? OFFSET ?"  # noqa: S608 -- constant fragments
    with store.read() as db:
        return [row["id"] for row in db.execute(query, (*params, limit, offset)).fetchall()]


def _choices(service: Service, records: list[StackRecord]) -> list[str]:
    """The stacks the form offers: those at the branch head in the mirror, and those deployed before."""
    names = {r.name for r in records}
    try:
        runner, settings = SubprocessRunner(), service.settings
        names |= refs.stacks_at(settings, runner, refs.resolve(settings, runner, settings.branch))
    except DeployerError:  # not fetched yet: the known stacks only
        pass
    return sorted(names)


def duration(start: str | None, end: str | None) -> str:
    """How long from `start` to `end` (to now while `end` is None), as 1h 2m, 3m 4s or 5.6s; "" without a start."""
    if not start:
        return ""
    began = datetime.fromisoformat(start).timestamp()
    seconds = max(0.0, (datetime.fromisoformat(end).timestamp() if end else time.time()) - began)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, second = divmod(int(seconds), 60)
    return f"{minutes // 60}h {minutes % 60}m" if minutes >= 60 else f"{minutes}m {second}s"


@dataclass(frozen=True)
class Node:
    name: str
    state: str
    x: int
    y: int


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    #: (x1, y1, x2, y2, dependency, dependent): from the bottom of a dependency to the top of what needs it
    edges: list[tuple[int, int, int, int, str, str]]
    width: int
    height: int
    node_w: int = _NODE_W
    node_h: int = _NODE_H


def _graph(records: list[StackRecord]) -> Graph:
    """Stacks in rows by dependency level (a stack sits one row below its deepest dependency)."""
    needs = {r.name: tuple(r.depends_on) for r in records}
    for deps in list(needs.values()):
        for dep in deps:
            needs.setdefault(dep, ())
    levels: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in levels:
            deps = [d for d in needs[name] if d not in seen]  # a cycle (refused by the planner) stops here
            levels[name] = 1 + max((level(d, seen | {name}) for d in deps), default=-1)
        return levels[name]

    rows: dict[int, list[str]] = {}
    for name in sorted(needs):
        rows.setdefault(level(name), []).append(name)
    states = {r.name: r.last_state or "unknown" for r in records}
    at = {name: (_GAP_X + i * (_NODE_W + _GAP_X), _GAP_Y // 2 + row * (_NODE_H + _GAP_Y))
          for row, names in rows.items() for i, name in enumerate(names)}  # fmt: skip
    nodes = [Node(name, states.get(name, "unknown"), x, y) for name, (x, y) in at.items()]
    edges = [(at[d][0] + _NODE_W // 2, at[d][1] + _NODE_H, at[n][0] + _NODE_W // 2, at[n][1], d, n)
             for n, deps in sorted(needs.items()) for d in deps]  # fmt: skip
    width = _GAP_X + max((len(names) for names in rows.values()), default=1) * (_NODE_W + _GAP_X)
    height = (max(rows, default=0) + 1) * (_NODE_H + _GAP_Y)
    return Graph(nodes, edges, width, height)

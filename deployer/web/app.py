"""create_app: wiring only. gunicorn calls `deployer.web.app:create_app()` in each worker process."""

from __future__ import annotations

import logging
import os

from flask import Flask

from deployer.settings import Settings
from deployer.web import auth, body, http_errors
from deployer.web.api import api
from deployer.web.context import Service
from deployer.web.hooks import hooks
from deployer.web.pages import pages

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; settings come from the environment unless given (tests give them)."""
    settings = settings or Settings.from_env(os.environ)
    app = Flask("deployer")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the contract's field order
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Service.build(settings).attach(app)
    http_errors.register(app)
    auth.install(app, settings)  # every route but auth.PUBLIC_PATHS needs an identity (docs/service.md "Identity")
    body.install(app)  # after identity: read, bounded and checked before any view
    app.register_blueprint(hooks)
    app.register_blueprint(api)
    app.register_blueprint(pages)
    return app

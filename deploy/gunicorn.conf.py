# gunicorn settings for running the webhook service's web workers directly:
#   gunicorn --config deploy/gunicorn.conf.py
# (`deployer serve` uses the same settings and also starts the deploy worker, which this does not:
# run `deployer worker` beside it.) Configuration is read from the DEPLOYER_* environment.
import os

from deployer.web.gunicorn_settings import gunicorn_options, prepare_metrics_dir

prepare_metrics_dir()  # /metrics sums every web worker's counts (a new directory under $TMPDIR per start)

globals().update(
    gunicorn_options(
        bind=os.environ.get("DEPLOYER_BIND", "127.0.0.1:8000"),
        workers=int(os.environ.get("WEB_CONCURRENCY", "2")),
    )
)
wsgi_app = "deployer.web.app:create_app()"

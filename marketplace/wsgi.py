import os

from infra import logs

logs.set_role("api")
# Multiprocess metrics (infra/metrics.py): the directory must exist before the first
# metric is created; gunicorn's child_exit hook (deploy/gunicorn.conf.py) forgets dead workers.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from django.core.wsgi import get_wsgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
application = get_wsgi_application()

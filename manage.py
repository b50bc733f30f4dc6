#!/usr/bin/env python
import os
import sys

# The process's role in its log records (infra/logs.py).
ROLES = {"runexecutor": "executor", "recon": "recon", "runserver": "api", "runwebhooks": "webhooks"}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    from infra import logs

    logs.set_role(ROLES.get(sys.argv[1] if len(sys.argv) > 1 else "", "manage"))
    # Multiprocess metrics: the directory must exist before the first metric is created.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:  # load the settings: a bad value is one line saying how to fix it, not a traceback
        settings.INSTALLED_APPS  # noqa: B018
    except ImproperlyConfigured as exc:
        sys.exit(logs.redact(f"manage.py: {exc}"))
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

"""The app's settings plus one bare DRF view (`benchmarks.urls`), served by the same gunicorn."""

from marketplace.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks.urls"

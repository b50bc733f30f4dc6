"""The one MongoDB connection (mongoengine alias "default"), opened lazily so forks are safe."""

import mongoengine
from django.conf import settings
from pymongo.uri_parser import parse_uri

# Database used when MONGO_URI names none.
DEFAULT_DB = "svc"
# How long a call waits for MongoDB before failing (the API answers 503, the job is retried).
SERVER_SELECTION_TIMEOUT_MS = 3000


def connect() -> None:
    db = parse_uri(settings.MONGO_URI).get("database") or DEFAULT_DB
    mongoengine.disconnect()
    mongoengine.connect(
        db=db,
        host=settings.MONGO_URI,
        connect=False,  # pymongo is not fork-safe: connect on first use in each process
        tz_aware=True,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
    )


def ping() -> None:
    mongoengine.get_connection().admin.command("ping")

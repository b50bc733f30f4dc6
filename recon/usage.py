"""Hourly usage in MongoDB, recomputed by recon from the SQL usage records (api.UsageRecord).

    usage_hourly  {_id: "<hour>|<handler>|<resource>|<user_id>", hour, handler, resource,
                   user_id, client, requests, calls, credits, price, succeeded, failed,
                   computed_at}

`price` is what was captured (0 unless the request succeeded); `requests` counts every
executed request, so canceled and expired ones are in it but in neither `succeeded` nor
`failed`. Each pass recomputes whole hours from the records (an indexed range on
`created_at`) and replaces their documents by a deterministic _id, so a pass run twice, or by
two recon processes at once, leaves the same documents. Only this module touches the
collection; it reaches MongoDB through the process's connection (infra/stores.py).
"""

from datetime import UTC, datetime, timedelta

from mongoengine.connection import get_db
from pymongo import ASCENDING, DESCENDING, ReplaceOne

from api.selectors import usage_by_hour
from recon import defaults

COLLECTION = "usage_hourly"


def aggregate_hours(*, hours: int = defaults.USAGE_HOURS, at: datetime | None = None) -> int:
    """Recompute the last `hours` hours (the current one included); returns documents written."""
    at = at or datetime.now(UTC)
    start, end = window_start(at, hours), window_start(at, 1) + timedelta(hours=1)
    collection = _collection()
    ensure_indexes()
    computed_at = datetime.now(UTC)
    operations = [
        ReplaceOne({"_id": doc["_id"]}, doc | {"computed_at": computed_at}, upsert=True)
        for doc in _groups(start, end)
    ]
    for offset in range(0, len(operations), defaults.USAGE_WRITE_BATCH):
        collection.bulk_write(
            operations[offset : offset + defaults.USAGE_WRITE_BATCH], ordered=False
        )
    return len(operations)


def hourly(*, since: datetime | None = None, user_id: int | None = None) -> list[dict]:
    """Hourly documents, newest hour first, then by handler, resource and client."""
    query = {}
    if since is not None:
        query["hour"] = {"$gte": since}
    if user_id is not None:
        query["user_id"] = user_id
    order = [("hour", DESCENDING), ("handler", ASCENDING), ("resource", ASCENDING)]
    return list(_collection().find(query, {"_id": 0}).sort(order + [("client", ASCENDING)]))


def window_start(at: datetime, hours: int) -> datetime:
    """The start of the oldest of the `hours` hours ending with the one `at` falls in."""
    if hours < 1:
        raise ValueError("hours must be at least 1")
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=hours - 1
    )


def document_id(hour: datetime, handler: str, resource: str, user_id: int) -> str:
    return f"{hour.astimezone(UTC):%Y-%m-%dT%H}|{handler}|{resource}|{user_id}"


def ensure_indexes() -> None:
    # Readers ask for recent hours, all clients or one; cheap when the indexes exist.
    _collection().create_index([("hour", DESCENDING)], name="hour")
    _collection().create_index([("user_id", ASCENDING), ("hour", DESCENDING)], name="user_hour")


def _groups(start: datetime, end: datetime) -> list[dict]:
    return [_document(row) for row in usage_by_hour(start=start, end=end)]


def _document(row: dict) -> dict:
    hour = row["hour"].astimezone(UTC)
    return {
        "_id": document_id(hour, row["handler"], row["resource"], row["user_id"]),
        "hour": hour,
        "handler": row["handler"],
        "resource": row["resource"],
        "user_id": row["user_id"],
        "client": row["user__username"],
        **{k: row[k] for k in ("requests", "calls", "credits", "price", "succeeded", "failed")},
    }


def _collection():
    return get_db()[COLLECTION]

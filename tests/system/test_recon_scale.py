"""Recon's sweeps read only stuck work, however long the history (its own MongoDB server)."""

from datetime import timedelta

import pytest

from api import selectors
from api.documents import ServiceRequest
from api.services.requests import now
from infra import embedded, stores
from recon import defaults, sweeps
from tests.helpers import submit
from tests.recon.test_recon import GREET, lose_job


@pytest.fixture
def own_mongo(tmp_path, settings):
    """A SecantusDB of this test's own: a big history there leaves the session's server (and
    the tests after this one) as fast as before."""
    server = embedded.start_mongo(tmp_path / "history-mongo", db="svc_history")
    session_uri = settings.MONGO_URI
    settings.MONGO_URI = server.uri
    stores.mongo_connect()
    ServiceRequest._collection = None  # mongoengine caches the collection of the old client
    try:
        yield
    finally:
        settings.MONGO_URI = session_uri
        stores.mongo_connect()
        ServiceRequest._collection = None
        server.stop()


HISTORY = 100_000


@pytest.mark.timeout(300)
def test_a_sweep_over_100_000_finished_requests_reads_only_the_10_stuck(
    own_mongo, alice_api, greet_offer, settings
):
    """The sweeps' queries are bounded by status (+ a timestamp): history is never read.

    The history is bulk-loaded before the indexes are built (as a restore would): the embedded
    server inserts several times faster into a collection without indexes."""
    settings.SVC_RECON_QUEUED_GRACE = 0  # the 10 stuck ones are stuck at once
    collection = ServiceRequest._get_collection()
    collection.drop_indexes()
    long_ago = now() - timedelta(days=1)
    batch = 10_000
    for first in range(0, HISTORY, batch):
        collection.insert_many(
            [
                {
                    "_id": f"done-{n}",
                    "dedupe_key": f"done-{n}",
                    "user_id": alice_api.user.pk,
                    "service": "text",
                    "action": "greet",
                    "status": ("succeeded", "failed", "expired", "canceled")[n % 4],
                    "created_at": long_ago,
                    "started_at": long_ago,
                    "finished_at": long_ago,
                }
                for n in range(first, first + batch)
            ],
            ordered=False,
        )
    assert collection.estimated_document_count() == HISTORY
    ServiceRequest.ensure_indexes()
    stuck = [submit(alice_api, GREET, {"name": f"n{i}", "place": "P"})["id"] for i in range(10)]
    for request_id in stuck:
        lose_job(request_id)
    at = now()
    examined = {}
    for name, candidates in (
        ("queued", selectors.requests_queued_since_before(at, limit=defaults.BATCH)),
        ("running", selectors.requests_running_since_before(at, limit=defaults.BATCH)),
        ("expired", selectors.requests_succeeded_expired(at, limit=defaults.BATCH)),
    ):
        stats = candidates.explain().get("executionStats", {})
        assert "totalDocsExamined" in stats, "the server's explain must report documents read"
        examined[name] = stats["totalDocsExamined"]
    assert examined["queued"] == 10 and examined["running"] == 0, examined
    assert examined["expired"] == 0, examined
    assert sweeps.sweep() == {"job_missing": 10}

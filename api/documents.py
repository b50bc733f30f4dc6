"""The request document in MongoDB. Only the domain reads or writes it: the services
(api/services/), the selectors (api/selectors.py) and the health counts (api/health.py);
processes get documents from them (tests/test_architecture.py checks it)."""

from mongoengine import (
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    DynamicField,
    IntField,
    ListField,
    StringField,
)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED, EXPIRED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "canceled",
    "expired",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED, EXPIRED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED, EXPIRED})
# Indexes (below) that reads led by status name as a hint: the embedded MongoDB's planner
# may scan the collection otherwise.
STATUS_CREATED_INDEX = [("status", 1), ("created_at", 1)]
STATUS_FINISHED_INDEX = [("status", 1), ("finished_at", 1)]
STATUS_EXPIRES_INDEX = [("status", 1), ("expires_at", 1)]


class ServiceRequest(Document):
    # sha256 of (user, service, action, canonical inputs); a re-submission after a failed or
    # expired one gets sha256(dedupe_key:seq) so every request id is used exactly once.
    id = StringField(primary_key=True)
    dedupe_key = StringField(required=True)
    seq = IntField(default=0)
    kind = StringField(default="offer", choices=("offer", "deal"))
    user_id = IntField(required=True)
    service = StringField(required=True)
    action = StringField(required=True)
    # Snapshot of the offer at intake, so a later catalog edit does not change a queued request.
    offer_id = IntField()
    handler = StringField()
    params = DictField()
    create_qty = IntField(default=1)
    price = IntField(default=0)
    resource = StringField()
    handler_credits = IntField(default=0)  # integration credits per handler call
    # Resilience, also snapshotted: retries per call (None: the resource's default),
    # the credential set overriding the handler's default, and the fallbacks in order, each
    # {"handler", "params", "credentials", "credits", "resource"}.
    max_retries = IntField(null=True)
    credentials = StringField()
    fallbacks = ListField(DictField())
    # The handler whose results the request holds (the offer's, or a fallback), and how many
    # upstream tries its calls took in all (a failed try is counted when it fails, the
    # others when the request succeeds). `attempts` counts executor runs (recon's measure).
    handler_used = StringField()
    tries = IntField(default=0)
    queue = StringField()
    inputs = DictField()
    prompt = StringField()
    status = StringField(required=True, choices=STATUSES, default=QUEUED)
    results = ListField(DynamicField())
    error = DictField(null=True, default=None)
    attempts = IntField(default=0)
    cancel_requested = BooleanField(default=False)
    worker = StringField()  # the executor (RQ worker name) running it; recon checks it lives
    recon_at = DateTimeField()  # when recon last claimed it for a repair
    retry_at = DateTimeField()  # recon re-enqueues a request it gave back no sooner than this
    created_at = DateTimeField(required=True)
    started_at = DateTimeField(null=True)
    finished_at = DateTimeField(null=True)
    expires_at = DateTimeField(null=True)
    events = ListField(DictField())
    # A gateway call (/v1/chat/completions, api/chat.py): the upstream's body without its
    # model (JSON text: a tool's JSON schema may hold keys MongoDB refuses, such as "$ref"),
    # whether the client streams, and the meter: {"model", "price_per_1k_input",
    # "price_per_1k_output", "hold", "input_tokens", "max_output", "include_usage"}. At its end
    # the executor records `usage` (OpenAI's, plus "source": upstream | relayed) and `charge`,
    # the credits settlement captures (the rest of the hold is released).
    chat = StringField(null=True)
    stream = BooleanField(default=False)
    meter = DictField(null=True, default=None)
    usage = DictField(null=True, default=None)
    charge = IntField(null=True)
    # {"url": …, "events": ["start", "completed"]}: where the client is told (webhooks/)
    webhook = DictField(null=True, default=None)
    # Deals: the parent (kind "deal") lists its children's ids in order; it has no handler and
    # no job. A child is an offer request with `parent` set and no price of its own (the
    # parent holds the deal's price). A pipeline step waits (`awaits_previous`) until the item
    # before it succeeds; its prompt is rendered then, from `prompt_template` and {previous}.
    children = ListField(StringField())
    deal_id = IntField()
    addons = ListField(StringField())  # parent: the selected add-ons, "service/action"
    parent = StringField()
    position = IntField()
    pipeline = StringField()
    addon = BooleanField(default=False)
    awaits_previous = BooleanField(default=False)
    prompt_template = StringField()

    meta = {
        "collection": "requests",
        "indexes": [
            {"fields": ["dedupe_key", "-seq"]},
            {"fields": ["user_id", "-created_at"]},
            {"fields": ["status", "created_at"]},
            # api/health.py's error rate: counts of what ended in the last minutes.
            {"fields": ["status", "finished_at"]},
            {"fields": ["status", "expires_at"]},
        ],
    }

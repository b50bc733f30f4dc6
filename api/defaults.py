"""The domain's limits, each with why it has its value. Operator-facing knobs are settings
(SVC_MAX_BODY_BYTES, SVC_INTAKE_RATE, …) or `api` config keys; code reads these as
`defaults.NAME`."""

from datetime import timedelta

from executor import defaults as executor_defaults

# Most results one request may ask a handler for.
MAX_CREATE_QTY = 100
# Most fallback handlers an offer may list: each one is tried in turn, after the primary's
# retries, so a long list mostly lengthens an outage's failures.
MAX_FALLBACKS = 3
# Most retries an offer may ask for per call: the executor's own limit.
MAX_RETRIES = executor_defaults.MAX_RETRIES_LIMIT
# Inserts a submission tries before giving up (each lost race moves to a newer sequence).
SUBMIT_ATTEMPTS = 5
# Seconds an identical POST waits for the intake that inserted its request first to hold the
# price, or to give the request up (402), before answering 503: a hold takes milliseconds, so
# only a stalled intake (a crash between insert and hold, which recon converges) takes longer.
DUPLICATE_WAIT = 5.0
# Seconds between the waiting POST's first two looks at the ledger; each wait doubles, so a
# quick hold is seen at once and a slow one costs few queries.
DUPLICATE_POLL_FIRST = 0.005
# Longest wait between two looks: a decided intake is seen within this.
DUPLICATE_POLL_MAX = 0.1
# Deepest nesting a request's results may have (the list of its calls' results included):
# MongoDB refuses documents nested past 100 levels, and a deal's outputs nest them again.
MAX_RESULT_DEPTH = 64
# Ledger entries GET /svc/account/ lists, newest first.
ACCOUNT_TRANSACTIONS = 100
# Share of its budget a resource may spend in its window before it counts as nearly spent.
NEAR_BUDGET = 0.9
# Longest untyped (pre-`svc_`) token looked up at all: DRF's were 40 characters; anything
# longer is refused without a query.
MAX_LEGACY_TOKEN_CHARS = 64
# How stale a key's `last_used_at` may get before a request writes it again: one write a
# minute per key at most, instead of one per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# Keys one client may hold (active or not): each costs nothing per request, but a client
# creating them in a loop should meet a limit.
MAX_KEYS_PER_CLIENT = 100
# Seconds a client waits before retrying when its key has max_in_flight requests in flight
# (Retry-After): about the time a short request takes.
IN_FLIGHT_RETRY_AFTER = 1

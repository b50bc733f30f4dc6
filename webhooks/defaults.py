"""Webhooks' tunables, each with why it has its value. Operator-facing knobs are settings
(SVC_WEBHOOK_ALLOW_PRIVATE, SVC_WEBHOOK_TIMEOUT, SVC_WEBHOOK_RETRY_SCHEDULE); code reads these
as `defaults.NAME`, so a test may patch one for a case."""

# --- what a client may ask for --------------------------------------------------------------

# The events a client may be told of, in the order they happen: the request's first try
# started; the request ended (succeeded, failed, canceled or expired).
EVENTS = ("start", "completed")
# What `?webhook=<url>` alone (or an account default without events) subscribes to.
DEFAULT_EVENTS = ("completed",)
# Longest webhook URL (browsers and proxies agree on 2 KiB; longer ones are a mistake or abuse).
MAX_URL_LENGTH = 2048

# --- signing --------------------------------------------------------------------------------

# Random bytes of a signing secret (Standard Webhooks: 24 to 64; Svix uses 24, we use 32).
SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"
# Hours the previous secret still signs after a rotation, so a receiver can switch over.
ROTATION_OVERLAP_HOURS = 24

# --- delivery -------------------------------------------------------------------------------

# Seconds a claimed delivery is its worker's beyond SVC_WEBHOOK_TIMEOUT (the attempt's own
# deadline): time to sign, write the attempt and settle. A worker killed mid-attempt leaves the
# row `delivering`; once the lease runs out another worker takes it again.
LEASE_MARGIN_SECONDS = 30
# Relative spread of each retry delay (±10 %), so deliveries that failed together (a receiver
# down) do not all come back at the same second.
RETRY_JITTER = 0.1
# Characters of a receiver's answer kept with each attempt (and logged): enough for an error.
EXCERPT_CHARS = 500
# Bytes of an answer read at most: the excerpt needs a few hundred, a receiver may send gigabytes.
EXCERPT_READ_BYTES = 4096
# Characters of an error kept with an attempt ("connect: …").
ERROR_CHARS = 200

# --- the worker -----------------------------------------------------------------------------

# The Redis list a new delivery pushes to (after its transaction commits) and idle workers
# BLPOP; entries beyond WAKE_MAX are dropped (one wakes a worker, which then claims them all).
WAKE_KEY = "svc:webhooks:wake"
WAKE_MAX = 100
# Seconds an idle worker blocks on the wake key before it looks at SQL anyway: a retry that
# comes due, a redelivery from another host, a wake lost with Redis, all wait at most this.
POLL_SECONDS = 1.0
# Seconds in-flight attempts get to finish on SIGTERM; the others are left to their lease.
SHUTDOWN_GRACE = 10.0
# Seconds between a worker's deletions of ended deliveries older than SVC_WEBHOOK_KEEP_DAYS
# (each worker prunes; a DELETE twice deletes nothing more).
PRUNE_EVERY_SECONDS = 3600
# Rows one pruning deletes at most (a backlog is worked off hour by hour, never in one lock).
PRUNE_BATCH = 10_000
# Attempts one worker keeps in flight (`runwebhooks --concurrency`): each mostly waits on a
# receiver, so many fit in one process.
CONCURRENCY = 32

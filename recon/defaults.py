"""Recon's tunables, each with why it has its value. Operator-facing knobs are settings
(SVC_RECON_INTERVAL, SVC_RECON_QUEUED_GRACE, SVC_MAX_ATTEMPTS, SVC_ALERT_*); code reads these
as `defaults.NAME`, so a test may patch one for a case."""

# --- sweeps ---------------------------------------------------------------------------------

# Requests (or holds) one sweep looks at; the rest wait for the next sweep.
BATCH = 500
# Seconds one recon process owns a request it claimed; another may claim it after that (by
# then the first one's repair shows: a live job, a new status).
CLAIM_SECONDS = 5
# Seconds past SVC_JOB_TIMEOUT (and RQ's own margin) after which a running request is overdue.
DEADLINE_GRACE = 60
# Backoff before the n-th retry of a request whose executor died: BASE × 2^(n-1), capped.
RETRY_BACKOFF_BASE = 2.0
RETRY_BACKOFF_MAX = 60.0

# --- alerts ---------------------------------------------------------------------------------

# Seconds one webhook call may take; recon's loop waits for it.
SEND_TIMEOUT = 3.0
# Ended requests the error rate needs before it can fire (two failures of three is noise).
ERROR_RATE_MIN_FINISHED = 10
# Discord rejects a message longer than this.
DISCORD_MAX_CHARS = 2000

# --- hourly usage ---------------------------------------------------------------------------

# Hours recomputed by one pass: the current one and the one before, whose last records may
# have been written after the previous pass read it.
USAGE_HOURS = 2
# Most groups one bulk write sends; larger windows are written in several round trips.
USAGE_WRITE_BATCH = 1000
# Hours the admin's usage page shows unless it asks for others (?hours=N), and the most.
USAGE_HOURS_SHOWN = 24
USAGE_MAX_HOURS_SHOWN = 24 * 31

"""The executor's tunables, each with why it has its value (rq's `defaults.py` habit).

Operator-facing knobs are settings (SVC_JOB_TIMEOUT, EXECUTOR_CONCURRENCY, …) or resource map
keys; these are the engineering constants behind them. Code reads them as
`defaults.NAME`, so a test may patch one for a case.
"""

# --- jobs: a request whose resource is saturated or out of budget ---------------------------

# Seconds a job waits in-process for a saturated resource's slot before giving its executor
# slot back (a request for another resource may be waiting for it) and retrying later.
SATURATED_WAIT_IN_PROCESS = 2.0
# First and longest pause between slot attempts while waiting in-process.
SATURATED_POLL_FIRST = 0.02
SATURATED_POLL_MAX = 0.25
# Seconds before the first scheduled retry of a request whose resource stays saturated;
# doubles per retry.
SATURATED_BACKOFF_BASE = 1.0
# Longest wait between retries of a request waiting for its resource.
SATURATED_BACKOFF_MAX = 15.0

# --- queues (RQ) ----------------------------------------------------------------------------

# Seconds RQ's own job timeout adds to SVC_JOB_TIMEOUT: the executor's timeout ends the request
# first, RQ's is the backstop for a job stuck outside the handler.
JOB_TIMEOUT_MARGIN = 30
# Seconds RQ keeps a finished job's return value; the request document holds the real result.
RESULT_TTL = 300
# Seconds RQ keeps a failed job for inspection in its failed registry.
FAILURE_TTL = 7 * 24 * 3600
# Seconds a scheduled retry may be overdue before recon stops counting it as live and enqueues
# it itself: no scheduler moved it (none runs for its queue, or the one that held the lock died).
SCHEDULED_OVERDUE_GRACE = 30

# --- resources (Redis leases and budgets) ---------------------------------------------------

# Seconds a budget window's key outlives its window, so a call that ends just after the
# rollover can still refund the window it was charged to.
BUDGET_KEY_GRACE = 60
# Longest retry_after for a saturated resource: slots are normally freed by release long
# before their leases expire, so a waiter should look again soon.
SATURATED_RETRY_MAX = 1.0
# leased() renews this many times per lease_ttl, so one late renewal does not lose the slot.
RENEWALS_PER_TTL = 3
# Threads that run leased() renewals; their own pool, so busy handler threads never delay one.
RENEW_THREADS = 4

# --- retries and timeouts of handler calls (resilience) --------------------------------------

# Retries of one call after its first try, unless the offer or its resource says otherwise.
DEFAULT_MAX_RETRIES = 2
# Most retries an offer or resource may ask for: more only lengthens an outage's queue.
MAX_RETRIES_LIMIT = 10
# Seconds before the first retry; doubles with each further one (then jittered), up to the cap.
DEFAULT_BACKOFF = 0.5
DEFAULT_BACKOFF_MAX = 10.0
# Longest `Retry-After` honoured by waiting in-process; a longer one ends the call's retries
# (its fallback, if any, takes over) rather than holding an executor slot for minutes.
RETRY_AFTER_MAX = 60.0
# Seconds a retry needs at least before the job's deadline; with less left it is not tried.
MIN_TRY_SECONDS = 1.0
# Seconds kept free before SVC_JOB_TIMEOUT so the executor's own timeout, not a try's, ends a
# job that ran out of time (and so the outcome is recorded before RQ's backstop fires).
DEADLINE_MARGIN = 1.0

# --- routes: fallbacks and circuit breakers -------------------------------------------------

# Seconds a half-open trial stays its caller's beyond the try's own timeout; if its outcome is
# never recorded (the process died) the next caller becomes the trial after that.
TRIAL_GRACE = 5.0
# Seconds a fallback waits in-process for a slot of its saturated resource before it is
# skipped (the job already holds an executor slot; waiting longer would hold it idle).
FALLBACK_SLOT_WAIT = 2.0
# Consecutive retryable failures that open a breaker, unless its resource says otherwise.
BREAKER_THRESHOLD = 5
# Seconds an open breaker refuses calls before it lets one trial through.
BREAKER_COOLDOWN = 30.0
# Seconds a process lets calls through a breaker it found closed with no failure, unasked.
BREAKER_CLOSED_TRUST_SECONDS = 1.0

# --- upstream HTTP --------------------------------------------------------------------------

# Characters of an upstream's error body quoted in a request's error message.
UPSTREAM_MESSAGE_LIMIT = 200

# --- runtime: the process's shared loop and HTTP clients -------------------------------------

# Connections kept per upstream host by all shared HTTP clients together: above any
# executor's concurrency (1,000 calls in flight to one upstream in `make bench`: 512 queued
# half of them inside httpx).
HTTP_MAX_CONNECTIONS = 2048
# Connections of the loop's asyncio Redis client (a gateway call's chunks: one script each).
REDIS_ASYNC_CONNECTIONS = 32
# Shared HTTP clients, used in turn. httpcore's pool looks at every connection it holds (a
# syscall or two each) whenever a request starts or ends, and counts its idle connections
# once per idle connection: at 200 calls in flight one pool spent a third of the executor's
# CPU doing so (docs/benchmarks.md). 32 pools of ~6 connections cost ~1/1000 of that.
HTTP_CLIENTS = 32
# Default timeouts (seconds) of the shared HTTP client; handlers pass tighter ones per call.
HTTP_TIMEOUT = 60.0
HTTP_CONNECT_TIMEOUT = 10.0
# Seconds between checks of a waiting job thread for an asynchronous exception (job timeout).
WAIT_SLICE = 0.25
# Threads for sync handlers; each blocking call holds one while it runs.
SYNC_HANDLER_THREADS = 256

# --- worker (ConcurrentWorker) --------------------------------------------------------------

# Seconds one blocking dequeue waits before the loop re-checks for a stop request.
DEQUEUE_POLL_SECONDS = 2
# Seconds between checks for a stop request (and heartbeats) while every slot is busy.
SLOT_WAIT_SECONDS = 1
# Seconds after a stop signal during which another signal is taken as the same request.
FORCE_STOP_DEBOUNCE_SECONDS = 1.0
# Seconds the loop pauses after Redis did not answer, before it tries again.
REDIS_LOST_PAUSE_SECONDS = 1.0
# Default seconds in-flight jobs get to finish after a stop request before they are handed back.
SHUTDOWN_GRACE = 25
# RQ's loop beats the worker's key before and after every dequeue and looks for `rq suspend`
# before each one: built for one job at a time, at hundreds of jobs a second it was a third
# of the executor's CPU (two round trips each, in the one thread that dispatches). The key
# lives `worker_ttl` + 60 s and a suspension waits for a second anyway, so once per period
# says the same. Beats that ride in a job's pipeline are RQ's, untouched.
HEARTBEAT_EVERY_SECONDS = 5.0
SUSPENSION_CHECK_EVERY_SECONDS = 1.0
# A burst executor (`runexecutor --burst`) waits for the retries its queues have scheduled if
# they fall due within this many seconds (a saturated resource's wait); later ones it leaves
# queued for the next executor (or recon) and exits. It looks again at most this often:
BURST_SCHEDULED_WAIT_MAX = 60.0
BURST_SCHEDULED_POLL_MAX = 1.0

# --- liveness -------------------------------------------------------------------------------

# Beats of a live executor per SVC_EXECUTOR_DEAD_AFTER seconds: one late beat never kills it.
BEATS_PER_DEAD_AFTER = 4

"""The domain's limits, each with why it has its value. Operator-facing knobs are settings
(SVC_MAX_BODY_BYTES, SVC_INTAKE_RATE, …) or `api` config keys; code reads these as
`defaults.NAME`."""

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
# Ledger entries GET /svc/account/ lists, newest first.
ACCOUNT_TRANSACTIONS = 100
# Share of its budget a resource may spend in its window before it counts as nearly spent.
NEAR_BUDGET = 0.9

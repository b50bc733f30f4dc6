"""Store ceiling: the store operations of one intake and one execution, without Django or RQ.

Each step below names the application code it stands for and sends the same commands in the
same round trips (pipelines stay pipelines, transactions stay transactions), as read from
api/http/views.py, api/http/throttling.py, api/services/{intake,requests,accounts}.py,
executor/jobs.py, executor/queues.py, executor/worker.py and RQ 2's worker. The Redis
resource accounting goes through executor/resources.py itself (plain redis-py, no Django).
What the Python around the operations costs (Django, DRF, mongoengine, RQ's bookkeeping) is
left out, so the rate a replay reaches is what the stores allow at that concurrency: the
ceiling of the intake and of the executor. The Mongo-only replays show how much of that the
embedded MongoDB server sets. The replay runs in this process (threads), so this process's
own CPU per request (its children, the servers, not counted) is the least a client of the
stores spends on those operations from Python: the reference for the executor's and the API's.

The replay writes to its own Mongo database, Redis db and copy of the SQLite file, so it never
disturbs the app's data. Its collections hold as many documents as the app's does in the
matching scenario, because some SecantusDB operations cost in proportion to that (see
docs/benchmarks.md). Redis commands per request are counted (INFO commandstats) and reported
beside the app's own count, so a drift of the replay from the app's sequence shows.
"""

import base64
import hashlib
import itertools
import os
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pymongo
import redis

from api.documents import ServiceRequest  # mongoengine only: no Django
from api.http import sliding_window
from benchmarks import measure
from benchmarks.stack import ECHO_OFFER, Stack
from executor import resources
from infra.stores import RQ_SERIALIZER

INTAKE_CONCURRENCY = 32
EXECUTION_CONCURRENCY = 200
# Requests each intake replay submits: as many as the executor scenario's, so the collections
# the execution replays work on hold as many documents as the app's does there.
INTAKE_REQUESTS = 1000
# Requests each execution replay runs (of those): enough for a steady rate at 200 at once.
EXECUTION_REQUESTS = 400
REPLAY_DB = "bench_replay"
REPLAY_REDIS_DB = 1
# Requests per minute the replayed throttle allows: as the bench's SVC_INTAKE_RATE, never hit.
THROTTLE_LIMIT = 100_000_000
# The queues the executor listens on by default (executor.queues.all_queue_names), in order.
EXECUTOR_QUEUES = ("svc-http", "svc-local", "svc-openai", "svc-default")
REPLAY_QUEUE = "rq:queue:svc-local"

# SQL of an intake: ApiKeyAuthentication, selectors.offer_get_active, accounts.account_hold
# (the key's counters, the balance, the ledger entry).
TOKEN_SQL = (
    "SELECT * FROM api_apikey INNER JOIN auth_user "
    "ON (api_apikey.user_id = auth_user.id) WHERE api_apikey.hashed = ? LIMIT 1"
)
KEY_TAKE_SQL = (
    "UPDATE api_apikey SET in_flight = (in_flight + 1), period_spent = CASE WHEN "
    "(period_start = ?) THEN (period_spent + 1) ELSE 1 END, period_start = ? "
    "WHERE ((budget IS NULL OR (period_start = ? AND period_spent <= (budget - 1)) OR "
    "(NOT (period_start = ? AND period_start IS NOT NULL) AND budget >= 1)) AND "
    "(max_in_flight IS NULL OR in_flight < (max_in_flight)) AND id = ?)"
)
KEY_SETTLE_SQL = (
    "UPDATE api_apikey SET in_flight = (in_flight - 1) WHERE (id = ? AND in_flight > 0)"
)
OFFER_SQL = (
    "SELECT * FROM api_serviceoffer INNER JOIN api_servicehandler "
    "ON (api_serviceoffer.handler_id = api_servicehandler.id) "
    "WHERE (api_serviceoffer.action = ? AND api_serviceoffer.is_active "
    "AND api_serviceoffer.service = ?) "
    "ORDER BY api_serviceoffer.service ASC, api_serviceoffer.action ASC LIMIT 1"
)
HOLD_SQL = (
    "UPDATE api_account SET balance = (balance - 1), held = (held + 1) "
    "WHERE (balance >= 1 AND user_id = ?)"
)
LEDGER_SQL = (
    "INSERT INTO api_ledgerentry (user_id, kind, amount, request_id, settles, note, api_key_id, "
    "created_at) VALUES (?, ?, 1, ?, ?, '', ?, ?) RETURNING id"
)
# SQL of an execution's settlement: settlement.request_settle → account_capture, usage_record.
HOLD_LOOKUP_SQL = "SELECT * FROM api_ledgerentry WHERE (kind = 'hold' AND request_id = ?)"
CAPTURE_SQL = "UPDATE api_account SET held = (held - 1) WHERE user_id = ?"
USAGE_SQL = (
    "INSERT INTO api_usagerecord (request_id, user_id, service, action, handler, resource, "
    "status, calls, credits, price, created_at) "
    "VALUES (?, ?, 'bench', 'echo', 'local.echo', 'local', 'succeeded', 1, 1, 1, ?) RETURNING id"
)
# A job's call as RQ stores it, JSON compressed (size matters, content does not), and the
# return value of its result (base64 of the JSON), as infra/stores.py's RQ_SERIALIZER writes.
JOB_DATA = zlib.compress(RQ_SERIALIZER.dumps(["executor.jobs.run_request", None, ["x" * 64], {}]))
JOB_RETURN_VALUE = base64.b64encode(RQ_SERIALIZER.dumps("succeeded")).decode()


def _now() -> datetime:
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Replay:
    """The stores' side of the lifecycle, one step per method, for request number `i`."""

    def __init__(self, stack: Stack, collection: str):
        # Same client options as infra/stores.py; the pool size is pymongo's default, as there.
        self.client = pymongo.MongoClient(
            stack.mongo.uri, tz_aware=True, uuidRepresentation="standard"
        )
        self.requests = self.client[REPLAY_DB][collection]
        self.prefix = collection[0]
        # As executor/queues.py, but a pool that waits rather than fails past 100 connections.
        self.redis = redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(
                stack.redis.uri.rsplit("/", 1)[0] + f"/{REPLAY_REDIS_DB}",
                max_connections=EXECUTION_CONCURRENCY + 16,
                timeout=30,
                socket_timeout=10,
                socket_connect_timeout=3,
                health_check_interval=30,
            )
        )
        self.sqlite_path = _sqlite_copy(stack)
        self._local = threading.local()
        self.token = stack.token
        self.token_hash = hashlib.sha256(self.token.encode()).hexdigest()
        self.key_id, self.user_id = (
            self._sql()
            .execute("SELECT id, user_id FROM api_apikey WHERE hashed = ?", (self.token_hash,))
            .fetchone()
        )
        self.resource = resources.Resource("local")
        self.worker = "rq:worker:replay"
        self.grants: dict[int, resources.Grant] = {}
        self.throttle_script = self.redis.register_script(sliding_window.SLIDING_WINDOW)

    def prepare(self) -> None:
        # The indexes mongoengine creates for ServiceRequest: each one costs SecantusDB on
        # every insert and update, so the replay keeps exactly the app's.
        for spec in ServiceRequest._meta["index_specs"]:
            self.requests.create_index(spec["fields"])

    def close(self) -> None:
        self.client.close()
        self.redis.close()

    def rid(self, i: int) -> str:
        return f"{self.prefix}{i:063d}"

    def _sql(self) -> sqlite3.Connection:
        # One connection per thread with the settings' options, kept open (CONN_MAX_AGE).
        conn = getattr(self._local, "sql", None)
        if conn is None:
            conn = sqlite3.connect(
                self.sqlite_path, timeout=20, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.sql = conn
        return conn

    # --- intake: OfferIntakeView.post → intake_submit ------------------------------------

    def sql_lookups(self, i: int) -> None:
        """ApiKeyAuthentication's key + user, then selectors.offer_get_active."""
        conn = self._sql()
        conn.execute(TOKEN_SQL, (hashlib.sha256(self.token.encode()).hexdigest(),)).fetchall()
        conn.execute(OFFER_SQL, (ECHO_OFFER[1], ECHO_OFFER[0])).fetchall()

    def throttle(self, i: int) -> None:
        """IntakeThrottle: one sliding-window script (EVALSHA) on the client's counters."""
        self.throttle_script(keys=["svc:throttle:intake:bench"], args=[THROTTLE_LIMIT, 60_000])

    def mongo_submit(self, i: int) -> None:
        """request_submit: the insert (the dedupe read happens only when the insert collides)."""
        rid = self.rid(i)
        at = _now()
        self.requests.insert_one(
            {
                "_id": rid,
                "dedupe_key": rid,
                "seq": 0,
                "kind": "offer",
                "user_id": self.user_id,
                "service": ECHO_OFFER[0],
                "action": ECHO_OFFER[1],
                "offer_id": 1,
                "handler": "local.echo",
                "params": {},
                "create_qty": 1,
                "price": 1,
                "resource": "local",
                "handler_credits": 1,
                "queue": "svc-local",
                "inputs": {"n": rid},
                "prompt": rid,
                "status": "queued",
                "results": [],
                "error": None,
                "attempts": 0,
                "created_at": at,
                "events": [{"at": at, "status": "queued"}],
                "children": [],
            }
        )

    def sql_hold(self, i: int) -> None:
        """accounts.account_hold: one IMMEDIATE transaction, the balance and a ledger entry."""
        conn = self._sql()
        period = _stamp()[:10] + " 00:00:00"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(KEY_TAKE_SQL, (period, period, period, period, self.key_id))
        conn.execute(HOLD_SQL, (self.user_id,))
        conn.execute(
            LEDGER_SQL, (self.user_id, "hold", self.rid(i), None, self.key_id, _stamp())
        ).fetchall()
        conn.execute("COMMIT")

    def rq_enqueue(self, i: int) -> None:
        """executor.queues.enqueue_request → RQ Queue.enqueue: two transactions."""
        rid = self.rid(i)
        with self.redis.pipeline() as pipe:
            pipe.sadd("rq:queues", REPLAY_QUEUE)
            pipe.execute()
        with self.redis.pipeline() as pipe:
            pipe.hset(f"rq:job:{rid}", "status", "queued")
            pipe.hset(
                f"rq:job:{rid}",
                mapping={
                    "created_at": _stamp(),
                    "data": JOB_DATA,
                    "success_callback_name": "",
                    "failure_callback_name": "",
                    "stopped_callback_name": "",
                    "started_at": "",
                    "ended_at": "",
                    "last_heartbeat": "",
                    "worker_name": "",
                    "origin": "svc-local",
                    "description": f"request {rid}",
                    "enqueued_at": _stamp(),
                    "status": "queued",
                    "timeout": 930,
                    "result_ttl": 300,
                    "failure_ttl": 604800,
                    "group_id": "",
                },
            )
            pipe.rpush(REPLAY_QUEUE, rid)
            pipe.execute()

    # --- execution: ConcurrentWorker's loop and job thread, jobs.run_request -------------

    def rq_dequeue(self, i: int) -> None:
        """The worker's main loop for one job at saturation: dequeue and job fetch (its state
        and heartbeats are written once per period, not per job)."""
        _, rid = self.redis.blpop([f"rq:queue:{q}" for q in EXECUTOR_QUEUES], timeout=2)
        self.redis.hgetall(f"rq:job:{rid.decode()}")

    def rq_start(self, i: int) -> None:
        """ConcurrentWorker.prepare_execution (one pipeline), then RQ's PERSIST of the job."""
        rid, execution = self.rid(i), f"{i:032x}"
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                f"rq:execution:{rid}:{execution}",
                mapping={"id": execution, "created_at": time.time(), "last_heartbeat": time.time()},
            )
            pipe.expire(f"rq:execution:{rid}:{execution}", 990)
            pipe.zadd(f"rq:executions:{rid}", {execution: time.time() + 1050})
            pipe.expire(f"rq:executions:{rid}", 1050)
            pipe.zadd("rq:wip:svc-local", {f"{rid}:{execution}": time.time() + 990})
            pipe.hset(
                f"rq:job:{rid}",
                mapping={
                    "last_heartbeat": _stamp(),
                    "status": "started",
                    "started_at": _stamp(),
                    "worker_name": "replay",
                },
            )
            pipe.execute()
        self.redis.persist(f"rq:job:{rid}")

    def mongo_peek(self, i: int) -> None:
        """run_request: selectors.request_get, the whole document."""
        self.requests.find_one({"_id": self.rid(i)})

    def resource_acquire(self, i: int) -> None:
        """jobs._acquire → resources.acquire (one Lua script)."""
        self.grants[i] = resources.acquire(
            self.resource, slots=1, credits=1, owner=self.rid(i), connection=self.redis
        )

    def mongo_start(self, i: int) -> None:
        """request_start: the queued → running transition (one conditional update)."""
        rid, at = self.rid(i), _now()
        self.requests.update_one(
            {"_id": rid, "status": "queued"},
            {
                "$set": {"status": "running", "started_at": at},
                "$push": {"events": {"at": at, "status": "running"}},
                "$inc": {"attempts": 1},
            },
        )

    def resource_release(self, i: int) -> None:
        """resources.leased's exit → resources.release (one Lua script)."""
        resources.release(self.grants.pop(i), connection=self.redis)

    def mongo_succeed(self, i: int) -> None:
        """request_succeed: running → succeeded unless a cancel was asked (one update)."""
        rid, at = self.rid(i), _now()
        self.requests.update_one(
            {"_id": rid, "status": "running", "cancel_requested": {"$ne": True}},
            {
                "$set": {"status": "succeeded", "results": [rid], "finished_at": at, "error": None},
                "$push": {"events": {"at": at, "status": "succeeded"}},
            },
        )

    def sql_settle(self, i: int) -> None:
        """request_settle: the hold's lookup, then account_capture and usage_record in one
        transaction (the capture's own atomic block is a savepoint in it)."""
        conn, rid = self._sql(), self.rid(i)
        conn.execute(HOLD_LOOKUP_SQL, (rid,)).fetchall()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT capture")
        conn.execute(LEDGER_SQL, (self.user_id, "capture", rid, rid, None, _stamp())).fetchall()
        conn.execute(CAPTURE_SQL, (self.user_id,))
        conn.execute(KEY_SETTLE_SQL, (self.key_id,))
        conn.execute("RELEASE SAVEPOINT capture")
        conn.execute(USAGE_SQL, (rid, self.user_id, _stamp())).fetchall()
        conn.execute("COMMIT")

    def rq_finish(self, i: int) -> None:
        """ConcurrentWorker.handle_job_success: one pipeline."""
        rid, execution = self.rid(i), f"{i:032x}"
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(f"rq:job:{rid}", mapping={"status": "finished", "ended_at": _stamp()})
            pipe.xadd(
                f"rq:results:{rid}",
                {"type": 1, "worker_name": "replay", "return_value": JOB_RETURN_VALUE},
                maxlen=10,
            )
            pipe.expire(f"rq:results:{rid}", 300)
            pipe.zadd("rq:finished:svc-local", {rid: time.time() + 300})
            pipe.expire(f"rq:job:{rid}", 300)
            pipe.delete(f"rq:execution:{rid}:{execution}")
            pipe.zrem("rq:wip:svc-local", f"{rid}:{execution}")
            pipe.zrem(f"rq:executions:{rid}", execution)
            pipe.execute()


INTAKE_STEPS = ("sql_lookups", "throttle", "mongo_submit", "sql_hold", "rq_enqueue")
EXECUTION_STEPS = (
    "rq_dequeue",
    "rq_start",
    "mongo_peek",
    "resource_acquire",
    "mongo_start",
    "resource_release",
    "mongo_succeed",
    "sql_settle",
    "rq_finish",
)
INTAKE_MONGO_STEPS = ("mongo_submit",)
EXECUTION_MONGO_STEPS = ("mongo_peek", "mongo_start", "mongo_succeed")


def _sqlite_copy(stack: Stack) -> str:
    """A copy of the app's SQLite database (same tables, indexes and rows) for the replay."""
    path = stack.tmp / "replay.sqlite3"
    if not path.exists():
        source = sqlite3.connect(stack.sqlite_path)
        target = sqlite3.connect(path)
        source.backup(target)
        target.close()
        source.close()
    return str(path)


@dataclass
class ReplayResult:
    requests: int
    concurrency: int
    seconds: float
    cores: dict[str, float]
    client_cpu_seconds: float
    redis_commands_per_request: float
    latencies: list[float] = field(repr=False, default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def summary(self) -> dict:
        ordered = sorted(self.latencies)
        return {
            "requests_per_second": round(self.rate, 1),
            "requests": self.requests,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 2),
            "p50_ms": round(measure.percentile(ordered, 0.5) * 1000, 1),
            "p99_ms": round(measure.percentile(ordered, 0.99) * 1000, 1),
            "cores_busy": self.cores,
            "client_cpu_ms_per_request": round(self.client_cpu_seconds / self.requests * 1000, 2),
            "redis_commands_per_request": self.redis_commands_per_request,
        }


def replay(
    stack: Stack, target: Replay, steps: tuple[str, ...], concurrency: int, requests: int
) -> ReplayResult:
    """Run `steps` for requests 0..requests-1, `concurrency` of them at once."""
    functions = [getattr(target, step) for step in steps]
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        while not errors and (i := next(counter)) < requests:
            start = time.perf_counter()
            try:
                for function in functions:
                    function(i)
            except Exception as exc:  # reported below; a replay with errors has no figure
                errors.append(exc)
                return
            latencies.append(time.perf_counter() - start)

    cpu = measure.CpuMeter(
        {"mongo": stack.mongo.process.pid, "redis": stack.redis.process.pid, "replay": os.getpid()},
        alone=("replay",),
    )
    redis_before = _redis_calls(target.redis)
    threads = [threading.Thread(target=work, name=f"replay-{n}") for n in range(concurrency)]
    cpu.start()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu.stop()
    if errors:
        raise RuntimeError(f"store replay {steps} failed: {errors[0]!r}") from errors[0]
    calls = _redis_calls(target.redis) - redis_before - 1  # less the INFO of the snapshot
    return ReplayResult(
        requests=requests,
        concurrency=concurrency,
        seconds=seconds,
        cores=cpu.cores(seconds),
        client_cpu_seconds=cpu.seconds["replay"],
        redis_commands_per_request=round(calls / requests, 1),
        latencies=latencies,
    )


def _redis_calls(client: redis.Redis) -> int:
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def run(stack: Stack) -> dict:
    """Four replays: every store, then Mongo alone, for the intake's and the execution's ops."""
    every_store = Replay(stack, collection="all_stores")
    mongo_alone = Replay(stack, collection="mongo_only")
    try:
        every_store.prepare()
        mongo_alone.prepare()
        intake, execution = INTAKE_CONCURRENCY, EXECUTION_CONCURRENCY
        results = {
            "intake": replay(stack, every_store, INTAKE_STEPS, intake, INTAKE_REQUESTS),
            "execution": replay(stack, every_store, EXECUTION_STEPS, execution, EXECUTION_REQUESTS),
            "intake_mongo_only": replay(
                stack, mongo_alone, INTAKE_MONGO_STEPS, intake, INTAKE_REQUESTS
            ),
            "execution_mongo_only": replay(
                stack, mongo_alone, EXECUTION_MONGO_STEPS, execution, EXECUTION_REQUESTS
            ),
        }
    finally:
        every_store.close()
        mongo_alone.close()
    return {name: result.summary() for name, result in results.items()}

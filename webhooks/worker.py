"""The webhook worker (`manage.py runwebhooks`): claims due deliveries and sends them, many at
once, in a process of its own (never inside a request's job: a slow receiver must not hold a
request's executor slot).

One asyncio loop: claim as many due deliveries as there are free slots, start an attempt for
each, and when nothing is due wait for a wake (a Redis BLPOP on WAKE_KEY, pushed by each new
delivery) or for an attempt to end, at most POLL_SECONDS, then look again. SQL runs in one
thread of its own (Django's ORM is synchronous); DNS in the default pool; HTTP on the loop.

An attempt: the client's secrets, the URL's address checked again and connected to directly
(webhooks/addresses.py), the signed POST (no redirects, no proxies from the environment, a
fresh connection each time so TLS is always checked against the URL's host), the whole within
SVC_WEBHOOK_TIMEOUT; then the attempt is recorded and the delivery moved on (services).

`stop()` (SIGTERM/SIGINT in the command) stops claiming; attempts in flight get `grace`
seconds to end; the ones still running are abandoned, their deliveries left `delivering` until
their lease runs out and a worker takes them again.
"""

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone
from redis import RedisError

from api.errors import ApplicationError
from infra import logs
from infra.stores import redis_connection
from webhooks import addresses, defaults, metrics, services, signing
from webhooks.models import WebhookDelivery
from webhooks.services import AttemptResult

logger = logging.getLogger("webhooks")

USER_AGENT = "svc-marketplace-webhooks/1 (+https://www.standardwebhooks.com)"


class WebhookWorker:
    def __init__(
        self, *, concurrency: int, once: bool = False, grace: float = defaults.SHUTDOWN_GRACE
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency, self.once, self.grace = concurrency, once, grace
        self.attempts = 0  # made by this worker (tests and --once read it)
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._wake: asyncio.Future | None = None
        self._soonest_retry = None  # the earliest next_attempt_at this worker set
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="webhooks-sql")
        self._pruned_at = 0.0  # monotonic time of this worker's last pruning
        self.probe_beat = None  # infra.probe.Beat when a liveness port is served

    def run(self) -> int:
        """Work until stop() (or, with `once`, until nothing is due); the attempts made."""
        try:
            asyncio.run(self._main())
        finally:
            self._db_pool.submit(connections.close_all).result()
            self._db_pool.shutdown()
        return self.attempts

    def stop(self) -> None:
        """From any thread or a signal handler: finish up and return from run()."""
        self._stop.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        async with self._client() as client:
            while not self._stop.is_set():
                if self.probe_beat is not None:  # the loop goes round (its liveness probe)
                    self.probe_beat.touch()
                await self._prune_now_and_then()
                found = await self._claim_and_start(client)
                if self.once and not found and not self._tasks:
                    break
                if not found:
                    await self._idle()
            await self._drain()

    async def _prune_now_and_then(self) -> None:
        """Delete old ended deliveries, at most once per PRUNE_EVERY_SECONDS."""
        if time.monotonic() - self._pruned_at < defaults.PRUNE_EVERY_SECONDS and self._pruned_at:
            return
        self._pruned_at = time.monotonic()
        older_than = timezone.now() - timedelta(days=settings.SVC_WEBHOOK_KEEP_DAYS)
        try:
            await self._sql(services.delivery_prune, older_than=older_than)
        except Exception:  # SQL away: the next hour's pruning takes what this one left
            logger.exception("webhook worker could not prune old deliveries")

    async def _claim_and_start(self, client: httpx.AsyncClient) -> bool:
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return False
        try:
            claimed = await self._sql(services.delivery_claim, limit=free)
        except Exception:  # SQL away: say so, look again after the idle wait
            logger.exception("webhook worker could not claim deliveries")
            return False
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(client, delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return bool(claimed)

    async def _idle(self) -> None:
        """Until a wake, an attempt's end or stop(), at most POLL_SECONDS."""
        waiters: set = {*self._tasks, asyncio.ensure_future(self._stopping.wait())}
        if len(self._tasks) < self.concurrency and not self.once:
            if self._wake is None or self._wake.done():
                self._wake = self._loop.run_in_executor(None, self._wait_for_wake)
            waiters.add(self._wake)
        await asyncio.wait(waiters, timeout=self._idle_seconds(), return_when="FIRST_COMPLETED")
        for waiter in waiters - self._tasks - {self._wake}:
            waiter.cancel()

    def _idle_seconds(self) -> float:
        """POLL_SECONDS, or less when a retry this worker scheduled comes due sooner."""
        due = self._soonest_retry
        if due is None:
            return defaults.POLL_SECONDS
        wait = (due - timezone.now()).total_seconds()
        if wait <= 0:
            self._soonest_retry = None  # due now: the next claim takes it (or another worker has)
        return min(defaults.POLL_SECONDS, max(wait, 0.0))

    def _wait_for_wake(self) -> None:
        try:
            redis_connection().blpop([defaults.WAKE_KEY], timeout=int(defaults.POLL_SECONDS))
        except RedisError:
            self._stop.wait(defaults.POLL_SECONDS)  # Redis away: poll SQL meanwhile

    async def _drain(self) -> None:
        if self._wake is not None and not self._wake.done():
            await self._loop.run_in_executor(None, _release_wait)
        if self._tasks:
            logger.info("webhook worker stopping: %d attempt(s) in flight", len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=self.grace)
        for task in list(self._tasks):  # left to their lease
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _attempt(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        with logs.context(
            request_id=delivery.request_id, client=delivery.user_id, attempt=delivery.attempts
        ):
            result, outcome = await self._send(client, delivery)
            try:
                state = await self._sql(services.delivery_record, delivery=delivery, result=result)
            except Exception:
                logger.exception("webhook attempt not recorded id=%s", delivery.webhook_id)
                return
            self.attempts += 1
            if state == WebhookDelivery.PENDING:
                due = delivery.next_attempt_at
                self._soonest_retry = min(filter(None, (self._soonest_retry, due)))
            metrics.attempt_made(outcome=outcome, seconds=result.latency_ms / 1000, state=state)
            logger.info(
                "webhook attempt id=%s event=%s host=%s attempt=%d status=%s latency_ms=%d "
                "outcome=%s state=%s%s excerpt=%r",
                delivery.webhook_id,
                delivery.event,
                _host(delivery.url),
                delivery.attempts,
                result.status_code,
                result.latency_ms,
                outcome,
                state,
                f" error={result.error!r}" if result.error else "",
                result.excerpt[: defaults.EXCERPT_CHARS],
            )

    async def _send(
        self, client: httpx.AsyncClient, delivery: WebhookDelivery
    ) -> tuple[AttemptResult, str]:
        """One signed POST within SVC_WEBHOOK_TIMEOUT: the result and its metrics outcome."""
        started_at, started = timezone.now(), time.perf_counter()
        answer: dict = {}

        def result(outcome: str, error: str = "") -> tuple[AttemptResult, str]:
            elapsed = answer.get("latency", time.perf_counter() - started)
            return AttemptResult(
                started_at=started_at,
                latency_ms=round(elapsed * 1000),
                status_code=answer.get("status"),
                excerpt=answer.get("excerpt", ""),
                error=error,
            ), outcome

        try:
            async with asyncio.timeout(settings.SVC_WEBHOOK_TIMEOUT):
                await self._post(client, delivery, answer, started)
        except TimeoutError:
            if "status" not in answer:
                return result("timeout", f"timeout: no answer in {settings.SVC_WEBHOOK_TIMEOUT:g}s")
        except ApplicationError as exc:  # the address, checked again, is refused
            return result("refused", f"refused: {exc.message}")
        except services.SigningUnavailable as exc:
            logger.error("webhook not signed id=%s: %s", delivery.webhook_id, exc)
            return result("signing", f"signing: {exc}")
        except httpx.TimeoutException:
            return result("timeout", f"timeout: no answer in {settings.SVC_WEBHOOK_TIMEOUT:g}s")
        except httpx.ConnectError as exc:
            return result("connect_error", f"connect: {exc or type(exc).__name__}")
        except httpx.HTTPError as exc:
            return result(metrics.OTHER, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug must cost an attempt, not loop through leases forever
            logger.exception("webhook attempt crashed id=%s", delivery.webhook_id)
            return result(metrics.OTHER, f"error: {type(exc).__name__}")
        return result(_outcome(answer["status"]))

    async def _post(self, client, delivery: WebhookDelivery, answer: dict, started: float) -> None:
        """Send, filling `answer` (status, latency, excerpt) as it comes."""
        signing_secrets = await self._sql(services.delivery_signing_secrets, delivery=delivery)
        target = await asyncio.to_thread(addresses.send_target, delivery.url)
        headers = signing.headers(
            signing_secrets=signing_secrets,
            webhook_id=delivery.webhook_id,
            timestamp=int(time.time()),
            body=delivery.payload,
        )
        request = client.build_request(
            "POST",
            target.url,
            content=delivery.payload.encode(),
            headers={
                **headers,
                "Host": target.host_header,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            extensions={"sni_hostname": target.sni_hostname},
        )
        response = await client.send(request, stream=True)
        try:
            answer["status"] = response.status_code
            answer["latency"] = time.perf_counter() - started
            answer["excerpt"] = await _excerpt(response)
        finally:
            await response.aclose()

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(settings.SVC_WEBHOOK_TIMEOUT),
            follow_redirects=False,
            trust_env=False,  # never through a proxy the environment names
            # No keep-alive: connections are made to addresses, and one made for a host's name
            # (its TLS certificate) must not carry a request for another host on that address.
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=0),
        )

    async def _sql(self, function, /, **kwargs):
        """function(**kwargs) in the SQL thread, with this task's log context."""
        call = functools.partial(_with_fresh_connection, function, **kwargs)
        context = contextvars.copy_context()
        return await self._loop.run_in_executor(self._db_pool, context.run, call)


def _release_wait() -> None:
    """End our own BLPOP now rather than at its timeout (another worker may take the push:
    it then looks at SQL once, for nothing)."""
    with contextlib.suppress(RedisError):
        redis_connection().lpush(defaults.WAKE_KEY, 1)


def _with_fresh_connection(function, **kwargs):
    close_old_connections()  # a connection the database dropped, or past CONN_MAX_AGE
    return function(**kwargs)


def _outcome(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    return "gone" if status == 410 else "http_error"


async def _excerpt(response: httpx.Response) -> str:
    """The start of the answer's body, read no further than EXCERPT_READ_BYTES."""
    read = b""
    async for chunk in response.aiter_bytes():
        read += chunk
        if len(read) >= defaults.EXCERPT_READ_BYTES:
            break
    return read[: defaults.EXCERPT_READ_BYTES].decode("utf-8", "replace")[: defaults.EXCERPT_CHARS]


def _host(url: str) -> str:
    """The URL's host only: its path or query may carry the client's token."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"

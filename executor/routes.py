"""How a request's handler calls are made: retries, circuit breakers and fallbacks.

A request has routes: its offer's handler (the primary), then the offer's fallbacks in order,
each a handler with its params, credentials, credits and resource. For each route in turn:

1. its resource's slots and credits are taken (the primary's already were, by the job);
2. its resource's circuit breaker is asked (executor/breaker.py): refused → next route;
3. each of the `create_qty` calls is tried, retried on retryable failures (executor/
   resilience.py: backoff with jitter, `Retry-After`, the offer's `max_retries`, all within
   the job's deadline), every failed try recorded on the request (an event, `tries`) and,
   when retryable, on the breaker; a call that fails for good fails the route;
4. a route whose failure was retryable (or whose breaker opened meanwhile) hands over to the
   next route; a business error (4xx, bad params, missing credentials) fails the request.

The request is charged its offer's price whichever route served it; `handler_used` says
which one. A handler gets all of this by declaring its resource: it only raises classified
`HandlerError`s (executor/upstream.py does that for HTTP upstreams).
"""

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass

from api.documents import ServiceRequest
from api.services.requests import request_note_try
from configs import live
from executor import breaker, credentials, defaults, resilience, resources, upstream
from executor.handlers import Handler, HandlerCall, HandlerError, UnknownHandler, get_handler
from executor.metrics import FALLBACKS, UPSTREAM_RETRIES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    handler: Handler
    resource: resources.Resource
    params: dict
    credentials: str | None
    credits: int  # integration credits per call
    label: str  # "primary" | "fallback 1" | …


@dataclass(frozen=True)
class Outcome:
    results: list
    handler_used: str
    tries: int  # tries not yet counted on the request (the successful ones)


class _Skipped(Exception):
    """A route that made no call: its breaker is open or its resource gave no slot."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class _RouteFailed(Exception):
    """A route whose calls failed for a retryable reason (retries spent, breaker opened)."""

    def __init__(self, error: HandlerError):
        super().__init__(error.message)
        self.error = error


def open_breaker_wait(request: ServiceRequest, resource: resources.Resource) -> float:
    """Seconds to keep a request queued because its resource's breaker is open, its
    `breaker_policy` is `wait` and it has no fallback; 0 to run it now (the usual case, at
    the cost of nothing: the breaker is read only for such resources)."""
    if resource.breaker_policy != "wait" or request.fallbacks:
        return 0.0
    return breaker.wait_while_open(resource)


async def execute(
    request: ServiceRequest, handler: Handler, resource, grant, *, timeout, relay=None
) -> Outcome:
    """Run the request's calls on its routes (see the module doc) within `timeout` seconds;
    `grant` holds the primary's slots and credits and is always released. `relay`: a gateway
    call's (executor/relay.py), handed to each of its tries."""
    run = _Run(request, asyncio.get_running_loop().time() + timeout, relay)
    try:
        routes = _routes(request, handler, resource)
    except BaseException:
        resources.release(grant, refund=True)
        raise
    try:
        async with asyncio.timeout(timeout):
            return await run.on_routes(routes, grant)
    except TimeoutError:
        raise HandlerError("timeout", f"the handler did not finish within {timeout}s") from None


def _routes(request: ServiceRequest, handler: Handler, resource) -> list[Route]:
    primary = Route(
        handler=handler,
        resource=resource,
        params=dict(request.params or {}),
        credentials=request.credentials or None,
        credits=request.handler_credits,
        label="primary",
    )
    routes = [primary]
    for position, entry in enumerate(request.fallbacks or (), start=1):
        try:
            fallback = get_handler(entry.get("handler") or "")
        except UnknownHandler:
            logger.warning("fallback %s is not installed id=%s", entry.get("handler"), request.id)
            continue
        routes.append(
            Route(
                handler=fallback,
                resource=resources.get_resource(entry.get("resource") or fallback.resource),
                params=dict(entry.get("params") or {}),
                credentials=entry.get("credentials") or None,
                credits=int(entry.get("credits") or 0),
                label=f"fallback {position}",
            )
        )
    return routes


def served_by(request: ServiceRequest) -> tuple[str, str, int]:
    """(handler, resource, integration credits per call) of what produced the request's
    outcome: the fallback named by `handler_used`, else the offer's own handler."""
    used = request.handler_used
    if used and used != request.handler:
        for entry in request.fallbacks or ():
            if entry.get("handler") == used:
                try:
                    resource = entry.get("resource") or get_handler(used).resource
                except UnknownHandler:
                    resource = ""
                return used, resource, int(entry.get("credits") or 0)
    return request.handler or "", request.resource or "", request.handler_credits or 0


class _Run:
    """One execution of a request: its deadline, and the tries not yet counted on it."""

    def __init__(self, request: ServiceRequest, deadline: float, relay=None):
        self.request = request
        self.deadline = deadline
        self.uncounted = 0  # successful tries, counted on the request when it succeeds
        self.relay = relay
        self.chat = json.loads(request.chat) if request.chat else None

    def time_left(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    async def on_routes(self, routes: list[Route], grant) -> Outcome:
        failure: HandlerError | None = None  # the last route that made calls, and why it failed
        why = ""
        for position, route in enumerate(routes):
            if position:
                FALLBACKS.labels(resource=routes[0].resource.name, reason=why).inc()
                await self.note(f"falling back to {route.handler.id} ({route.label}): {why}")
            try:
                results = await self.on_route(route, grant if position == 0 else None)
            except _Skipped as exc:
                why = f"{route.handler.id} skipped: {exc.message}"
                if failure is None:
                    failure = HandlerError("upstream_unavailable", exc.message)
                continue
            except _RouteFailed as exc:
                failure, why = exc.error, f"{route.handler.id} failed: {exc.error.code}"
                continue
            return Outcome(results, route.handler.id, self.uncounted)
        raise failure

    async def on_route(self, route: Route, grant) -> list:
        """The route's calls under its grant (taken here for a fallback), released on exit;
        refunded when no call was made."""
        try:
            first = self.call(route, 0)  # resolves the credentials: a missing set fails here
            if grant is None:
                grant = await self.acquire(route)
            gate = breaker.trusted(route.resource) or await asyncio.to_thread(
                breaker.allow,
                route.resource,
                owner=self.owner(first),
                trial_ttl=(first.timeouts.total or self.time_left()) + defaults.TRIAL_GRACE,
            )
        except BaseException:
            if grant is not None:
                resources.release(grant, refund=True)
            raise
        if not gate.allowed:
            resources.release(grant, refund=True)  # no call made: its credits go back
            raise _Skipped(
                "breaker_open",
                f"{route.resource.name} is unavailable: its circuit breaker is open after "
                f"repeated upstream failures (retry in {max(gate.retry_after, 1):.0f}s)",
            )
        async with resources.leased(grant, route.resource):
            return await self.calls(route, gate, grant.slots)

    async def acquire(self, route: Route):
        """A fallback's slots and credits; waits briefly while its resource is saturated."""
        wait = min(defaults.FALLBACK_SLOT_WAIT, max(self.time_left() - 1, 0))
        try:
            grant = await asyncio.to_thread(
                resources.acquire_waiting,
                route.resource,
                calls=self.request.create_qty,
                credits_per_call=route.credits,
                owner=self.request.id,
                wait=wait,
            )
        except ValueError as exc:
            raise _Skipped("resource_misconfigured", str(exc)) from None
        if isinstance(grant, resources.Denied):
            name = route.resource.name
            raise _Skipped(f"resource_{grant.reason}", f"{name} is {grant.reason}")
        return grant

    async def calls(self, route: Route, gate: breaker.Gate, slots: int) -> list:
        """Every call of the route, at most `slots` at once; the trial (if this route holds
        it) alone first. The first failure cancels the others."""
        calls = [self.call(route, index) for index in range(self.request.create_qty)]
        results = {}
        if gate.decision == "trial":
            results[0] = await self.tried(route, calls.pop(0), gate)
            gate = dataclasses.replace(gate, decision=breaker.CLOSED)
        limit = asyncio.Semaphore(slots)

        async def one(call: HandlerCall):
            async with limit:
                results[call.index] = await self.tried(route, call, gate)

        try:
            async with asyncio.TaskGroup() as group:
                for call in calls:
                    group.create_task(one(call))
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return [results[index] for index in range(self.request.create_qty)]

    def call(self, route: Route, index: int) -> HandlerCall:
        request = self.request
        return HandlerCall(
            request_id=request.id,
            prompt=request.prompt,
            inputs=dict(request.inputs),
            params=dict(route.params),
            index=index,
            credentials=credentials.resolve(route.handler.id, route.credentials),
            timeouts=self.timeouts(route),
            chat=self.chat,
            relay=self.relay,
        )

    def timeouts(self, route: Route):
        configured = live.section("service_map", "handlers", route.handler.id).get("timeouts")
        return resilience.try_timeouts(
            route.handler, configured, route.params, max(self.time_left(), 0.001)
        )

    def owner(self, call: HandlerCall) -> str:
        return f"{call.request_id}:{call.index}"

    async def tried(self, route: Route, call: HandlerCall, gate: breaker.Gate):
        """One call with its retries; raises _RouteFailed when its failure was retryable."""
        policy = resilience.retry_policy(route.resource, self.request.max_retries)
        trial, retries = gate.decision == "trial", 0
        secrets = credentials.secrets_of(call.credentials)
        while True:
            call = dataclasses.replace(call, timeouts=self.timeouts(route))
            try:
                result = await _try(route.handler, call)
            except HandlerError as exc:
                error = _redacted(exc, secrets)
                if error.retryable:
                    await self.record(route, call, outcome="failure")
                if call.relay is not None and call.relay.relayed:
                    # Output reached the client: another try (or route) would send it twice.
                    error = _broken(error, call.relay.relayed)
                    await self.note_failure(route, call, retries + 1, error, None)
                    raise error from None
                elif trial:  # says nothing of the upstream's health: the next caller tries
                    await self.record(route, call, outcome="neutral")
                delay = (
                    None
                    if trial
                    else resilience.next_delay(policy, error, retries, self.time_left())
                )
                await self.note_failure(route, call, retries + 1, error, delay)
                if delay is None:
                    raise _RouteFailed(error) if error.retryable else error from None
                UPSTREAM_RETRIES.labels(resource=route.resource.name, reason=error.reason).inc()
                await asyncio.sleep(delay)
                gate = await asyncio.to_thread(
                    breaker.allow,
                    route.resource,
                    owner=self.owner(call),
                    trial_ttl=(call.timeouts.total or self.time_left()) + defaults.TRIAL_GRACE,
                )
                if not gate.allowed:  # opened meanwhile (other calls, other executors)
                    raise _RouteFailed(error) from None
                trial, retries = gate.decision == "trial", retries + 1
                continue
            self.uncounted += 1
            if trial or retries or gate.failures:
                await self.record(route, call, outcome="success")
            return result

    async def record(self, route: Route, call: HandlerCall, *, outcome: str) -> None:
        await asyncio.to_thread(
            breaker.record, route.resource, outcome=outcome, owner=self.owner(call)
        )

    async def note_failure(self, route, call, number: int, error: HandlerError, delay) -> None:
        then = f"retrying in {delay:.1f}s" if delay is not None else "no retry"
        where = f" (call {call.index})" if self.request.create_qty > 1 else ""
        await self.note(
            f"try {number} of {route.handler.id}{where} failed: {error.code}: {error.message}; "
            f"{then}",
            handler=route.handler.id,
            code=error.code,
            tries=1,
        )

    async def note(self, note: str, tries: int = 0, **details) -> None:
        """An event on the request; `tries` failed tries, plus the successful ones so far."""
        counted = tries + self.uncounted if tries else 0
        if counted:
            self.uncounted = 0
        await asyncio.to_thread(
            request_note_try, request_id=self.request.id, note=note, tries=counted, **details
        )


async def _try(handler: Handler, call: HandlerCall):
    """One try of the handler, ended by its total timeout (a retryable upstream_timeout)."""
    total = call.timeouts.total
    work = handler.func(call) if handler.is_async else asyncio.to_thread(handler.func, call)
    if total is None:
        return await work
    try:
        async with asyncio.timeout(total) as scope:
            return await work
    except TimeoutError:
        if not scope.expired():
            raise
        raise HandlerError(
            "upstream_timeout",
            f"the upstream did not answer within {total:g}s",
            retryable=True,
            reason="timeout",
        ) from None


def _broken(error: HandlerError, relayed: int) -> HandlerError:
    """A streamed call that failed after some of its output was relayed: final."""
    return HandlerError(
        "upstream_stream_broken",
        f"the upstream's stream broke after {relayed} chunks were relayed: {error.message}",
        reason="broken",
    )


def _redacted(error: HandlerError, secrets: list[str]) -> HandlerError:
    """The error with every credential value taken out of its message (defence in depth: a
    handler may quote an upstream without redacting it)."""
    message = upstream.redact(error.message, secrets)
    if message == error.message:
        return error
    return HandlerError(
        error.code,
        message,
        retryable=error.retryable,
        retry_after=error.retry_after,
        reason=error.reason,
    )

"""Request lifecycle in MongoDB: intake, then queued → running → succeeded | failed | expired.

Every transition is a conditional update on the current status, so a transition happens
once even when two processes attempt it.
"""

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from mongoengine.errors import NotUniqueError
from mongoengine.queryset.visitor import Q

from api import defaults, events, metrics, prompt_templates
from api.chat import ChatCall, charge_for
from api.documents import (
    CANCELED,
    EXPIRED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    ServiceRequest,
)
from api.errors import ApplicationError
from api.models import ServiceOffer
from api.shapes import request_repr
from infra.strict_json import strict_json_problem
from webhooks.services import webhook_notify

logger = logging.getLogger(__name__)

# Input values a template can render; objects and arrays have no single text form.
SCALAR_TYPES = (str, int, float, bool)


def now() -> datetime:
    # Mongo keeps milliseconds; truncating here keeps in-memory and stored values equal.
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dedupe_key(*, user_id: int, service: str, action: str, inputs: dict) -> str:
    material = canonical_json(
        {"user": user_id, "service": service, "action": action, "inputs": inputs}
    )
    return hashlib.sha256(material.encode()).hexdigest()


def request_id_for(key: str, seq: int) -> str:
    return key if seq == 0 else hashlib.sha256(f"{key}:{seq}".encode()).hexdigest()


def validate_inputs(*, offer: ServiceOffer, inputs: dict) -> None:
    check_inputs(expected=offer.inputs, inputs=inputs, what="this offer")


def check_inputs(*, expected: list[str], inputs: dict, what: str) -> None:
    """400 unless `inputs` has exactly the `expected` names, each a scalar that fits."""
    if len(inputs) > settings.SVC_MAX_INPUTS:
        raise ApplicationError(
            "invalid_inputs",
            f"{len(inputs)} inputs; at most {settings.SVC_MAX_INPUTS} are taken",
            limit=settings.SVC_MAX_INPUTS,
        )
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise ApplicationError(
            "missing_inputs", f"missing inputs: {', '.join(missing)}", fields=missing
        )
    unknown = sorted(name for name in inputs if name not in expected)
    if unknown:
        raise ApplicationError(
            "unknown_inputs",
            f"unknown inputs: {', '.join(unknown)} ({what} takes: {', '.join(expected) or 'none'})",
            fields=unknown,
        )
    bad = sorted(name for name, value in inputs.items() if not isinstance(value, SCALAR_TYPES))
    if bad:
        raise ApplicationError(
            "invalid_inputs",
            f"inputs must be strings, numbers or booleans: {', '.join(bad)}",
            fields=bad,
        )
    unfit = sorted(name for name, value in inputs.items() if not _fits(value))
    if unfit:
        raise ApplicationError(
            "invalid_inputs",
            "inputs must be finite numbers, or valid Unicode strings without NUL of at most "
            f"{settings.SVC_MAX_INPUT_CHARS} characters: {', '.join(unfit)}",
            fields=unfit,
        )


def _fits(value) -> bool:
    """A scalar input MongoDB, the renderer and every handler take as it is (the HTTP body
    was checked already; this holds for every caller of the service)."""
    if isinstance(value, str) and (len(value) > settings.SVC_MAX_INPUT_CHARS or "\x00" in value):
        return False
    return strict_json_problem(value, max_depth=0) is None


def is_live(request: ServiceRequest, at: datetime) -> bool:
    """Whether an identical submission should be answered with this request."""
    if request.expires_at is not None and request.expires_at <= at:
        return False
    return request.status in (QUEUED, RUNNING, SUCCEEDED)


def offer_request(
    *,
    offer: ServiceOffer,
    inputs: dict,
    queue: str,
    resource: str,
    at: datetime,
    render: bool = True,
    **fields,
) -> ServiceRequest:
    """A queued request document for `offer` (not saved), with a snapshot of the offer so a
    later catalog edit does not change it. `render=False` leaves the prompt for later (a
    pipeline step's template needs the previous step's output)."""
    values = dict(
        kind="offer",
        service=offer.service,
        action=offer.action,
        offer_id=offer.pk,
        handler=offer.handler_id,
        params=offer.params or {},
        create_qty=offer.create_qty,
        price=offer.price,
        resource=resource,
        handler_credits=offer.handler.credits,
        max_retries=offer.max_retries,
        credentials=offer.credentials or None,
        fallbacks=offer.fallback_routes(),
        queue=queue,
        inputs=inputs,
        prompt=prompt_templates.render(offer.prompt_template, inputs) if render else None,
        status=QUEUED,
        created_at=at,
        expires_at=at + timedelta(seconds=offer.expiration) if offer.expiration else None,
        events=[_event(QUEUED, at)],
    )
    return ServiceRequest(**{**values, **fields})


def request_submit(
    *,
    user_id: int,
    offer: ServiceOffer,
    inputs: dict,
    queue: str,
    resource: str = "",
    webhook: dict | None = None,
) -> tuple[ServiceRequest, bool]:
    """Create the request document, or return the caller's live identical one.

    Returns (request, created). The caller enqueues the job only when created. `webhook`:
    where the client is told of it (webhooks/); an identical live request keeps its own.
    """
    validate_inputs(offer=offer, inputs=inputs)
    key = dedupe_key(user_id=user_id, service=offer.service, action=offer.action, inputs=inputs)
    at = now()

    def build(request_id: str, seq: int) -> ServiceRequest:
        return offer_request(
            offer=offer,
            inputs=inputs,
            queue=queue,
            resource=resource,
            at=at,
            id=request_id,
            dedupe_key=key,
            seq=seq,
            user_id=user_id,
            webhook=webhook,
        )

    return insert_unless_live(key=key, at=at, build=build)


def request_submit_chat(
    *, user_id: int, offer: ServiceOffer, call: ChatCall, queue: str, resource: str = ""
) -> ServiceRequest:
    """A gateway call's request document (api/chat.py). Two equal chat calls are two calls
    (a client retrying safely sends an Idempotency-Key), so its id is never an earlier one's."""
    key = secrets.token_hex(32)
    at = now()

    def build(request_id: str, seq: int) -> ServiceRequest:
        return offer_request(
            offer=offer,
            inputs={},
            queue=queue,
            resource=resource,
            at=at,
            render=False,
            id=request_id,
            dedupe_key=key,
            seq=seq,
            user_id=user_id,
            prompt="",
            chat=canonical_json(call.upstream_body),
            stream=call.stream,
            meter=call.meter(offer),
        )

    request, _ = insert_unless_live(key=key, at=at, build=build)
    return request


def request_metered(*, request: ServiceRequest, usage: dict, charge: int) -> None:
    """Record what a running gateway call used and costs, before it ends: settlement then
    captures `charge` whoever ends it (its executor, or recon after a crash)."""
    ServiceRequest.objects(id=request.id, status=RUNNING).update_one(
        set__usage=usage, set__charge=charge
    )
    request.usage, request.charge = usage, charge


def request_meter_lost(*, request: ServiceRequest) -> int:
    """A streamed gateway call whose executor was lost: the output chunks it had relayed (its
    chunk stream says), recorded with their charge when there were any — such a call must
    end, not run again (its client would get them twice). 0: nothing was relayed."""
    if not (request.meter and request.stream):
        return 0
    relayed = events.chunks_relayed(request.id)
    if relayed:
        prompt = request.meter.get("input_tokens") or 0
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": relayed,
            "total_tokens": prompt + relayed,
            "source": "relayed",
        }
        charge, _ = charge_for(request.meter, usage, succeeded=False)
        request_metered(request=request, usage=usage, charge=charge)
    return relayed


def insert_unless_live(
    *, key: str, at: datetime, build: Callable[[str, int], ServiceRequest]
) -> tuple[ServiceRequest, bool]:
    """Insert `build(id, seq)` as the newest request of dedupe chain `key`, or return the
    chain's live request. Returns (request, created).

    Insert first: a new request (the usual case) costs one write and no read. The unique id
    settles identical concurrent submissions; the loser reads the winner and answers with it.
    """
    seq = 0
    for _ in range(defaults.SUBMIT_ATTEMPTS):
        request = build(request_id_for(key, seq), seq)
        try:
            request.save(force_insert=True)
        except NotUniqueError:
            latest = ServiceRequest.objects(dedupe_key=key).order_by("-seq").first()
            if latest is not None and is_live(latest, at):
                return latest, False
            # Ended (a new request gets the next seq), or discarded meanwhile (seq 0 again).
            seq = 0 if latest is None else latest.seq + 1
            continue
        return request, True
    raise ApplicationError(
        "unavailable", "too many concurrent submissions of this request; retry", status=503
    )


def _event(status: str, at: datetime, note: str = "") -> dict:
    event = {"at": at, "status": status}
    if note:
        event["note"] = note
    return event


def transition(
    request_id: str,
    *,
    from_status: str,
    to_status: str,
    note: str = "",
    where: dict | None = None,
    current: ServiceRequest | None = None,
    **fields,
) -> ServiceRequest | None:
    """Move one request from `from_status` to `to_status`; None if it was not in `from_status`
    (or did not match the extra `where` conditions). `inc__x` increments; other fields are set.

    One conditional update. Given `current` (the caller's copy of the document), the change is
    applied to it and it is returned, so the transition costs no read; otherwise the document
    is read back. (findAndModify would do both in one round trip, but costs the embedded
    MongoDB server ten times an update: docs/benchmarks.md.)
    """
    at = now()
    event = _event(to_status, at, note)
    updates = {
        name if name.startswith("inc__") else f"set__{name}": value
        for name, value in fields.items()
    }
    matched = ServiceRequest.objects(id=request_id, status=from_status, **(where or {})).update_one(
        set__status=to_status, push__events=event, **updates
    )
    if not matched:
        return None
    if current is None:
        current = ServiceRequest.objects(id=request_id).first()
        if current is not None:
            if to_status in TERMINAL and from_status not in TERMINAL:
                metrics.request_ended(current)
            _changed(current, from_status=from_status)
        return current
    current.status = to_status
    current.events.append(event)
    for name, value in fields.items():
        if name.startswith("inc__"):
            name = name.removeprefix("inc__")
            value = (getattr(current, name) or 0) + value
        setattr(current, name, value)
    if to_status in TERMINAL and from_status not in TERMINAL:
        metrics.request_ended(current)
    _changed(current, from_status=from_status)
    return current


def request_children(parent: ServiceRequest) -> list[ServiceRequest]:
    """A deal's children in order (those that exist: intake may have stopped half-way); none
    for an offer request."""
    if not parent.children:
        return []
    found = {child.id: child for child in ServiceRequest.objects(id__in=list(parent.children))}
    return [found[cid] for cid in parent.children if cid in found]


def _changed(request: ServiceRequest, *, from_status: str) -> None:
    """Tell who listens: the live answers (api/events.py) and, once it starts, the client's
    webhook (its end is told by settlement, with what it was charged). A deal's events carry
    its items, as its GET does (a deal changes status twice or so)."""
    children = request_children(request) if request.kind == "deal" else None
    events.request_changed(request, children)
    if from_status == QUEUED and request.status == RUNNING and request.webhook:
        webhook_notify(
            user_id=request.user_id,
            request_id=request.id,
            webhook=request.webhook,
            event="start",
            body=request_repr(request, children),
        )


def request_start(
    *, request_id: str, current: ServiceRequest | None = None, worker: str = ""
) -> ServiceRequest | None:
    """Claim a queued request for execution (one write); None when it is not queued.

    `worker` names the executor, so recon can tell when it died. The caller checks
    `expires_at` first (the executor has the document already).
    """
    return transition(
        request_id,
        from_status=QUEUED,
        to_status=RUNNING,
        current=current,
        started_at=now(),
        worker=worker,
        inc__attempts=1,
    )


def request_requeue(
    *,
    request_id: str,
    note: str,
    current: ServiceRequest | None = None,
    retry_at: datetime | None = None,
) -> ServiceRequest | None:
    """Give a running request back to the queue (its executor stopped before it finished).
    `retry_at`: recon enqueues it again no sooner than this."""
    extra = {"retry_at": retry_at} if retry_at is not None else {}
    return transition(
        request_id,
        from_status=RUNNING,
        to_status=QUEUED,
        note=note,
        current=current,
        started_at=None,
        **extra,
    )


def request_claim(*, request_id: str, status: str, for_seconds: float, note: str = "") -> bool:
    """Take a request in `status` for a repair, unless another recon took it within
    `for_seconds`: one conditional update, so several recon processes never both repair it."""
    at = now()
    fresh = Q(recon_at=None) | Q(recon_at__lt=at - timedelta(seconds=for_seconds))
    updates = {"set__recon_at": at}
    if note:
        updates["push__events"] = _event(status, at, note)
    return bool(
        ServiceRequest.objects(Q(id=request_id, status=status) & fresh).update_one(**updates)
    )


def request_purge_results(*, request_id: str, note: str) -> ServiceRequest | None:
    """A succeeded request whose results expired: `expired`, results gone, charge kept."""
    return transition(request_id, from_status=SUCCEEDED, to_status=EXPIRED, note=note, results=[])


def request_succeed(
    *,
    request_id: str,
    results: list,
    current: ServiceRequest | None = None,
    handler_used: str | None = None,
    tries: int = 0,
) -> ServiceRequest | None:
    """Record the results, unless the client canceled meanwhile (then it ends canceled).

    `handler_used`: the handler that produced them; `tries`: upstream tries not yet counted.
    Results that are not strict JSON (an upstream's `NaN`, a lone surrogate) could be stored
    but never read back: the request fails `invalid_result` instead, and is not charged.
    """
    problem = strict_json_problem(results, max_depth=defaults.MAX_RESULT_DEPTH)
    if problem is not None:
        logger.warning("result is not strict JSON id=%s: %s", request_id, problem)
        return request_fail(
            request_id=request_id,
            code="invalid_result",
            message=f"the handler's result is not valid JSON ({problem})",
            current=current,
        )
    extra = {"inc__tries": tries} if tries else {}
    done = transition(
        request_id,
        from_status=RUNNING,
        to_status=SUCCEEDED,
        where={"cancel_requested__ne": True},
        current=current,
        results=results,
        finished_at=now(),
        error=None,
        handler_used=handler_used or (current.handler if current else None),
        **extra,
    )
    return done or request_cancel_running(request_id=request_id, current=current)


def request_note_try(*, request_id: str, note: str, tries: int = 1, **details) -> None:
    """Record a try of a running request's handler call: an event (status stays `running`)
    with `note` and `details` (handler, code), and `tries` more counted."""
    event = {**_event(RUNNING, now(), note), **details}
    changed = ServiceRequest.objects(id=request_id, status=RUNNING).modify(
        new=True, push__events=event, inc__tries=tries
    )
    if changed is not None:  # a retry or a fallback: rare, so the read back is affordable
        events.request_changed(changed)


def request_cancel_running(
    *, request_id: str, current: ServiceRequest | None = None
) -> ServiceRequest | None:
    """End a running request whose client asked to cancel it; its results are discarded."""
    return transition(
        request_id,
        from_status=RUNNING,
        to_status=CANCELED,
        where={"cancel_requested": True},
        current=current,
        finished_at=now(),
        error={"code": "canceled", "message": "canceled while it ran; its results are discarded"},
        cancel_requested=True,
    )


def request_cancel(
    *, request_id: str, error: dict | None = None
) -> tuple[ServiceRequest | None, str]:
    """Cancel a queued request now, or ask its executor to stop a running one.

    Returns (request, outcome) with outcome "canceled", "cancel_requested" or "terminal".
    `error` is what a request canceled while queued shows (default: canceled by the client).
    """
    error = error or {"code": "canceled", "message": "canceled by the client"}
    for _ in range(3):  # the status may move under us (queued → running); look again
        done = transition(
            request_id,
            from_status=QUEUED,
            to_status=CANCELED,
            finished_at=now(),
            error=error,
            cancel_requested=True,
        )
        if done is not None:
            return done, "canceled"
        asked = ServiceRequest.objects(id=request_id, status=RUNNING).modify(
            new=True, set__cancel_requested=True
        )
        if asked is not None:
            events.request_changed(asked, request_children(asked))
            return asked, "cancel_requested"
        current = ServiceRequest.objects(id=request_id).first()
        if current is None or current.status in TERMINAL:
            return current, "terminal"
    return current, "terminal"


def request_exists(*, request_id: str) -> bool:
    return ServiceRequest.objects(id=request_id).only("id").first() is not None


def request_discard(*, request_id: str) -> None:
    """Delete a request that was never accepted (its hold failed); it had no job yet."""
    ServiceRequest.objects(id=request_id, status=QUEUED).delete()


def request_fail(
    *,
    request_id: str,
    code: str,
    message: str,
    from_status: str = RUNNING,
    current: ServiceRequest | None = None,
) -> ServiceRequest | None:
    """End a request failed (or canceled, if its client asked meanwhile)."""
    if from_status == RUNNING:
        canceled = request_cancel_running(request_id=request_id, current=current)
        if canceled is not None:
            return canceled
    return transition(
        request_id,
        from_status=from_status,
        to_status=FAILED,
        current=current,
        error={"code": code, "message": message},
        finished_at=now(),
    )


def request_expire(
    *, request_id: str, from_status: str, current: ServiceRequest | None = None
) -> ServiceRequest | None:
    return transition(
        request_id,
        from_status=from_status,
        to_status=EXPIRED,
        current=current,
        error={"code": "expired", "message": "the request expired before it ran"},
        finished_at=now(),
    )

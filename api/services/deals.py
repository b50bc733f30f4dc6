"""Deals: several offers bought as one request, run as child requests (API.md, "Catalog file").

A deal request is a parent document (kind "deal", no handler, no job) holding the deal's
price, and one child request per item, then per selected add-on, in order. Children are
ordinary offer requests that the executor runs; each child that ends calls
`deal_child_ended`, which moves the deal on:

- a pipeline step waits until the item before it succeeds, then gets that item's output as
  `{previous}` and is queued;
- when every child succeeded, the parent succeeds with each item's output; when one fails
  (or expires, or is canceled), the parent fails and every child not yet ended is canceled
  (no paid upstream work for a deal nobody pays for). The functions that end a deal return
  it, and the settlement service (api/services/settlement.py) captures its hold if it
  succeeded, releases it otherwise: a deal is charged only if every child succeeds.

Every step is a conditional update, so two children ending at once, or a repeated call after
a crash, move the deal once. Intake (api/services/intake.py) inserts the parent, holds the
price, then `deal_start` inserts the children and enqueues the ready ones; a crash between
steps leaves a queued parent that recon converges.
"""

import hashlib
import logging
from dataclasses import dataclass

from api import deal_rules, prompt_templates
from api.documents import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    ServiceRequest,
)
from api.errors import ApplicationError
from api.models import ServiceDeal, ServiceDealAddon, ServiceDealItem
from api.services.requests import (
    canonical_json,
    check_inputs,
    insert_unless_live,
    now,
    offer_request,
    request_cancel,
    request_children,
    request_fail,
    transition,
)
from executor.queues import cancel_job, enqueue_request, route_for_handler, signal_stop_job

logger = logging.getLogger(__name__)

# Keys a deal POST body may have.
BODY_KEYS = ("inputs", "addons")


# --- intake ---------------------------------------------------------------------------------


def deal_parse_body(body: dict) -> tuple[dict, list[str]]:
    """(inputs, addons) from `{"inputs": {...}, "addons": [...]}`; 400 invalid_body otherwise."""
    unknown = sorted(key for key in body if key not in BODY_KEYS)
    if unknown:
        raise ApplicationError(
            "invalid_body",
            f"unknown keys: {', '.join(unknown)}; a deal takes "
            '{"inputs": {...}, "addons": ["service/action", ...]}',
            fields=unknown,
        )
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ApplicationError("invalid_body", "inputs must be an object", fields=["inputs"])
    addons = body.get("addons", [])
    if not isinstance(addons, list) or not all(isinstance(a, str) for a in addons):
        raise ApplicationError(
            "invalid_body", 'addons must be a list of "service/action" strings', fields=["addons"]
        )
    twice = sorted({a for a in addons if addons.count(a) > 1})
    if twice:
        raise ApplicationError(
            "invalid_body", f"add-ons listed twice: {', '.join(twice)}", fields=twice
        )
    return inputs, addons


def deal_selected_addons(deal: ServiceDeal, names: list[str]) -> list[ServiceDealAddon]:
    """The deal's add-ons named in `names`, in the deal's order; 400 unknown_addons otherwise."""
    available = {str(a.offer): a for a in deal.ordered_addons() if a.offer.is_active}
    unknown = sorted(name for name in names if name not in available)
    if unknown:
        raise ApplicationError(
            "unknown_addons",
            f"not add-ons of deal {deal.name}: {', '.join(unknown)} "
            f"(its add-ons: {', '.join(available) or 'none'})",
            fields=unknown,
        )
    return [addon for name, addon in available.items() if name in names]


def deal_dedupe_key(*, user_id: int, deal: str, addons: list[str], inputs: dict) -> str:
    material = canonical_json(
        {"user": user_id, "deal": deal, "addons": sorted(addons), "inputs": inputs}
    )
    return hashlib.sha256(material.encode()).hexdigest()


def child_id(parent_id: str, position: int) -> str:
    return hashlib.sha256(f"{parent_id}/{position}".encode()).hexdigest()


@dataclass(frozen=True)
class DealPlan:
    """What a deal POST buys: its inputs, items then selected add-ons, and its price."""

    deal: ServiceDeal
    inputs: dict
    parts: list  # ServiceDealItem | ServiceDealAddon, in order
    addons: list[str]  # the selected add-ons, "service/action"
    price: int


def deal_plan(*, deal: ServiceDeal, body: dict) -> DealPlan:
    """The deal's parts for this body, inputs checked; 400/404 for what cannot be bought."""
    inputs, addon_names = deal_parse_body(body)
    items = deal.ordered_items()
    if not items or not all(item.offer.is_active for item in items):
        raise ApplicationError("not_found", f"deal {deal.name} is not available", status=404)
    addons = deal_selected_addons(deal, addon_names)
    parts: list[ServiceDealItem | ServiceDealAddon] = [*items, *addons]
    metered = [str(part.offer) for part in parts if part.offer.metered]
    if metered:  # billed per token, on the gateway only: a deal's fixed price cannot cover it
        raise ApplicationError(
            "metered_offer",
            f"deal {deal.name} includes offers billed per token ({', '.join(metered)}), which "
            "are sold on /v1/chat/completions only",
            status=409,
        )
    expected = deal_rules.deal_inputs([part.step() for part in parts])
    check_inputs(expected=expected, inputs=inputs, what=f"deal {deal.name} with these add-ons")
    price = deal.price_for([i.offer for i in items], [a.offer for a in addons])
    return DealPlan(deal, inputs, parts, [str(a.offer) for a in addons], price)


def deal_insert(
    *, user_id: int, plan: DealPlan, webhook: dict | None = None
) -> tuple[ServiceRequest, bool]:
    """The deal's parent request, or the caller's live identical one. Returns (parent,
    created); the caller holds the price and calls deal_start only when created. `webhook`:
    where the client is told of the deal (its items have none of their own)."""
    key = deal_dedupe_key(
        user_id=user_id, deal=plan.deal.name, addons=plan.addons, inputs=plan.inputs
    )
    at = now()

    def build(request_id: str, seq: int) -> ServiceRequest:
        return ServiceRequest(
            id=request_id,
            dedupe_key=key,
            seq=seq,
            kind="deal",
            user_id=user_id,
            service="deal",
            action=plan.deal.name,
            deal_id=plan.deal.pk,
            addons=plan.addons,
            price=plan.price,
            inputs=plan.inputs,
            status=QUEUED,
            created_at=at,
            events=[{"at": at, "status": QUEUED}],
            children=[child_id(request_id, n) for n in range(len(plan.parts))],
            webhook=webhook,
        )

    return insert_unless_live(key=key, at=at, build=build)


def deal_start(*, parent: ServiceRequest, plan: DealPlan) -> list[ServiceRequest]:
    """Insert the deal's children and enqueue those that need no previous step."""
    at = parent.created_at
    children = [_child(parent, n, part, plan.inputs, at) for n, part in enumerate(plan.parts)]
    ServiceRequest.objects.insert(children, load_bulk=False)
    for child in children:
        if not child.awaits_previous:
            enqueue_request(request_id=child.id, queue=child.queue)
    return children


def _child(parent: ServiceRequest, position: int, part, inputs: dict, at) -> ServiceRequest:
    offer = part.offer
    pipeline = getattr(part, "pipeline", "") or None
    step = part.step()
    resource, queue = route_for_handler(offer.handler_id)
    return offer_request(
        offer=offer,
        inputs={name: inputs[name] for name in deal_rules.step_inputs(step)},
        queue=queue,
        resource=resource,
        at=at,
        render=not pipeline,
        id=child_id(parent.id, position),
        dedupe_key=child_id(parent.id, position),
        user_id=parent.user_id,
        price=0,  # the parent holds the deal's price
        parent=parent.id,
        position=position,
        pipeline=pipeline,
        addon=isinstance(part, ServiceDealAddon),
        awaits_previous=bool(pipeline),
        prompt_template=offer.prompt_template if pipeline else None,
    )


# --- reads ----------------------------------------------------------------------------------


def deal_outputs(children: list[ServiceRequest]) -> list[list | None]:
    """Each child's output (deal_rules.item_output), None for a child not succeeded."""
    outputs: list[list | None] = []
    for child in children:
        if child.status != SUCCEEDED:
            outputs.append(None)
            continue
        previous = outputs[-1] if child.pipeline and outputs else None
        outputs.append(deal_rules.item_output(child.pipeline, previous, list(child.results)))
    return outputs


# --- execution ------------------------------------------------------------------------------


def deal_child_started(child: ServiceRequest) -> None:
    """The first child to start moves its deal from queued to running."""
    transition(child.parent, from_status=QUEUED, to_status=RUNNING, started_at=child.started_at)


def deal_child_ended(child: ServiceRequest) -> ServiceRequest | None:
    """Move the deal on after one of its children ended; returns the deal once it has ended
    (the settlement service then settles it), else None. Idempotent."""
    parent = ServiceRequest.objects(id=child.parent).first()
    if parent is None:
        return None
    children = request_children(parent)
    if parent.status in TERMINAL:
        _stop_children(children, _stopped_error(parent))
        return parent
    ended_badly = next(
        (c for c in children if c.status in TERMINAL and c.status != SUCCEEDED), None
    )
    if ended_badly is not None:
        return deal_fail(parent, failed=ended_badly, children=children)
    outputs = deal_outputs(children)
    for position, step in enumerate(children):
        if step.awaits_previous and step.status == QUEUED and position > 0:
            previous = outputs[position - 1]
            if previous is not None:
                ended = _release_step(step, previous)
                if ended is not None:
                    return ended
    if len(children) == len(parent.children) and all(o is not None for o in outputs):
        return _succeed_deal(parent, outputs)
    return None


def _release_step(step: ServiceRequest, previous: list) -> ServiceRequest | None:
    """Render a waiting pipeline step's prompt with {previous} and queue it (once). Returns
    the deal if the step could not be queued and so ended it."""
    inputs = {**step.inputs, deal_rules.PREVIOUS: deal_rules.previous_text(previous)}
    prompt = prompt_templates.render(step.prompt_template, inputs)
    released = ServiceRequest.objects(id=step.id, status=QUEUED, awaits_previous=True).update_one(
        set__awaits_previous=False, set__prompt=prompt
    )
    if not released:
        return None
    try:
        enqueue_request(request_id=step.id, queue=step.queue)
    except Exception:
        logger.exception("enqueue of pipeline step failed id=%s", step.id)
        failed = request_fail(
            request_id=step.id,
            code="unavailable",
            message="the queue was unavailable",
            from_status=QUEUED,
        )
        return deal_child_ended(failed) if failed is not None else None
    logger.info("pipeline step queued id=%s parent=%s", step.id, step.parent)
    return None


def _succeed_deal(parent: ServiceRequest, outputs: list[list]) -> ServiceRequest | None:
    done = None
    for from_status in (RUNNING, QUEUED):  # queued: its first child's start was not recorded
        done = done or transition(
            parent.id,
            from_status=from_status,
            to_status=SUCCEEDED,
            results=outputs,
            finished_at=now(),
            error=None,
        )
    if done is None:  # ended meanwhile (canceled, or another child's call got here first)
        return ServiceRequest.objects(id=parent.id).first()
    logger.info("deal succeeded id=%s", parent.id)
    return done


def deal_fail(
    parent: ServiceRequest,
    *,
    failed: ServiceRequest | None = None,
    children: list[ServiceRequest] | None = None,
    code: str = "item_failed",
    message: str = "",
) -> ServiceRequest | None:
    """End the deal failed (unless it ended already) and cancel its children not yet ended;
    returns the deal as it is now, for the settlement service."""
    if failed is not None:
        label = f"{failed.service}/{failed.action}"
        reason = (failed.error or {}).get("message") or failed.status
        message = f"item {failed.position + 1} ({label}) {failed.status}: {reason}"
    error = {"code": code, "message": message}
    if failed is not None:
        error.update(item=failed.position, request=failed.id)
    done = None
    for from_status in (RUNNING, QUEUED):
        done = done or transition(
            parent.id, from_status=from_status, to_status=FAILED, error=error, finished_at=now()
        )
    if children is None:
        children = request_children(parent)
    current = done or ServiceRequest.objects(id=parent.id).first()
    _stop_children(children, _stopped_error(current or parent), failed=failed)
    if done is not None:
        logger.info("deal failed id=%s: %s", parent.id, message)
    return current


def deal_fail_incomplete(parent: ServiceRequest) -> ServiceRequest | None:
    """Recon: a deal whose intake stopped before all its children existed fails."""
    return deal_fail(parent, code="intake_incomplete", message="the deal's intake did not complete")


def _stopped_error(parent: ServiceRequest) -> dict:
    if parent.status == CANCELED:
        return {"code": "deal_canceled", "message": "the deal was canceled"}
    return {"code": "deal_failed", "message": "another item of the deal failed"}


def _stop_children(
    children: list[ServiceRequest], error: dict, failed: ServiceRequest | None = None
) -> None:
    """Cancel every child not yet ended: queued ones now, running ones by their executor."""
    for child in children:
        if child.status in TERMINAL:
            continue
        reason = error
        if failed is not None and _depends_on(child, failed, children):
            reason = {
                "code": "dependency_failed",
                "message": f"the pipeline step before it ({failed.service}/{failed.action}) "
                f"{failed.status}",
            }
        _, outcome = request_cancel(request_id=child.id, error=reason)
        if outcome == "canceled":
            cancel_job(child.id)
        elif outcome == "cancel_requested":
            signal_stop_job(child.id)


def _depends_on(child: ServiceRequest, failed: ServiceRequest, children) -> bool:
    """Whether `child` is in the chain of pipeline steps that follows `failed`."""
    if child.position <= failed.position:
        return False
    return all(c.pipeline for c in children[failed.position + 1 : child.position + 1])


# --- cancel ---------------------------------------------------------------------------------


def deal_cancel(parent: ServiceRequest) -> tuple[ServiceRequest, str]:
    """Cancel a queued or running deal and every child not yet ended (the caller settles it:
    api/services/cancel.py). Returns (parent, outcome): "canceled", or "terminal" when the
    deal had already ended."""
    error = {"code": "canceled", "message": "canceled by the client"}
    done = None
    for from_status in (RUNNING, QUEUED):
        done = done or transition(
            parent.id,
            from_status=from_status,
            to_status=CANCELED,
            error=error,
            finished_at=now(),
            cancel_requested=True,
        )
    if done is None:
        return ServiceRequest.objects(id=parent.id).first() or parent, "terminal"
    _stop_children(request_children(done), _stopped_error(done))
    logger.info("deal canceled id=%s", parent.id)
    return done, "canceled"

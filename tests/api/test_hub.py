"""The hub (api/http/hub.py): a process told to stop ends every live answer, including one
that had not watched anything yet when the signal came (its hub is made afterwards)."""

import asyncio

import pytest

from api.http import hub as hubs


@pytest.fixture
def fresh_hub(monkeypatch):
    monkeypatch.setattr(hubs, "_hub", None)
    monkeypatch.setattr(hubs, "_stopping", False)


def test_a_hub_made_after_the_stop_signal_is_born_draining(fresh_hub):
    hubs.drain()  # no live answer has made the hub yet
    assert hubs._hub is None

    async def first_event():
        async with hubs.hub().watch("r1") as queue:
            return queue.get_nowait()  # there before anything else could be

    assert asyncio.run(first_event()) is hubs.DRAIN
    assert hubs.hub().draining


def test_watchers_already_there_are_told_at_once(fresh_hub):
    async def watch_then_drain():
        async with hubs.hub().watch("r2") as queue:
            hubs.drain()
            seen = []
            while hubs.DRAIN not in seen:  # a RESYNC (the subscription came up) may be first
                seen.append(await asyncio.wait_for(queue.get(), 5))
            return seen

    assert asyncio.run(watch_then_drain())[-1] is hubs.DRAIN

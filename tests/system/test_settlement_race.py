"""Executors and recon settling the same ended requests at once, as separate processes on
SQLite and on PostgreSQL: each request's hold is settled exactly once and the balances add up."""

import subprocess
import sys
from pathlib import Path

from tests.live import ROOT, wait_until
from tests.system.test_live import assert_ledger_balances, ledger

# Requests left ended but unsettled, as a crash between the status write and the settlement
# leaves them: one succeeded, one failed, one canceled (ids printed, one per line).
LEAVE_ENDED = """
from django.contrib.auth import get_user_model
from api.selectors import offer_get_active
from api.services.intake import intake_submit
from api.services.requests import request_cancel, request_fail, request_start, request_succeed
user = get_user_model().objects.get(username="alice")
offer = offer_get_active(service="text", action="greet")
for n, outcome in enumerate(("succeeded", "failed", "canceled")):
    request, _ = intake_submit(user_id=user.pk, offer=offer, inputs={"name": f"race{n}"})
    if outcome == "canceled":
        request_cancel(request_id=request.id)
    else:
        running = request_start(request_id=request.id)
        if outcome == "succeeded":
            request_succeed(request_id=request.id, results=["x"], current=running)
        else:
            request_fail(request_id=request.id, code="boom", message="boom", current=running)
    print(request.id)
"""
# One racer: says it is ready, waits for the go file, then settles as its role does.
RACER = """
import os, sys, time
from pathlib import Path
import django
django.setup()
from executor.jobs import run_request
from recon import sweeps
race, role = Path(sys.argv[1]), sys.argv[2]
(race / f"ready-{os.getpid()}").touch()
while not (race / "go").exists():
    time.sleep(0.002)
if role == "executor":  # the job's next run finds the request ended: it settles, skips
    for request_id in sys.argv[3:]:
        assert run_request(request_id) == "skipped"
else:  # recon finds holds with no settlement whose request ended
    sweeps.sweep_holds()
"""
RACERS = 6


def test_executors_and_recon_racing_settle_each_request_once(stack, database_url, tmp_path):
    live = stack(database_url, SVC_RECON_HOLD_GRACE="0")
    live.client("alice", credits=100)
    ids = [line for line in live.manage("shell", "-c", LEAVE_ENDED).split() if len(line) == 64]
    assert len(ids) == 3
    race = tmp_path / "race"
    race.mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(race), role, *ids],
            cwd=ROOT,
            env={**live.env, "DJANGO_SETTINGS_MODULE": "marketplace.settings"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for role in ("executor", "recon") * (RACERS // 2)
    ]
    wait_until(lambda: len(list(race.glob("ready-*"))) == RACERS, what="every racer ready")
    Path(race / "go").touch()
    outputs = [racer.communicate(timeout=120)[0] for racer in racers]

    assert [racer.returncode for racer in racers] == [0] * RACERS, outputs
    entries, _ = ledger(live)
    settled = sorted((e["request_id"], e["kind"]) for e in entries if e["kind"] != "grant")
    assert settled == sorted(
        [(ids[0], "hold"), (ids[0], "capture"), (ids[1], "hold"), (ids[1], "release")]
        + [(ids[2], "hold"), (ids[2], "release")]
    )
    assert_ledger_balances(live)

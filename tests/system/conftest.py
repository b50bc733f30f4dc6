"""Fixtures of the multi-process tests: a stack of real processes on SQLite or PostgreSQL."""

import os
import secrets

import pytest

from tests import postgres
from tests.live import LiveStack


@pytest.fixture(scope="module")
def postgres_server():
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        yield os.environ["DATABASE_URL"]
        return
    server = postgres.PostgresServer()
    try:
        url = server.start()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test PostgreSQL: {exc}")
        pytest.skip(f"!!! PostgreSQL NOT TESTED: {exc} !!!")
    yield url
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'live.sqlite3'}"
    server_url = request.getfixturevalue("postgres_server")
    return postgres.create_database(server_url, f"svc_live_{secrets.token_hex(4)}")


@pytest.fixture
def stack(tmp_path):
    stacks = []

    def make(database_url: str = f"sqlite:///{tmp_path / 'live.sqlite3'}", **env) -> LiveStack:
        live = LiveStack(database_url, tmp_path)
        live.env.update(env)
        live.prepare()
        stacks.append(live)
        return live

    yield make
    for live in stacks:
        live.stop()

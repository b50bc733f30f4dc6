"""pytest plugin (`-p marketplace.pytest_plugin`): real servers for the whole test session.

It starts SecantusDB and redis-server on free loopback ports in a temporary directory
before pytest-django reads the settings, unless MONGO_URI / REDIS_URL name servers already
(then each test session uses its own database and Redis db 15 is flushed; 14, 13… for more
pytest-xdist workers). Each xdist worker starts servers of its own. Tests never touch the
`make run` data: DATA_DIR points into the temporary directory too.
"""

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
from pymongo.uri_parser import parse_uri

from infra import embedded

_servers: list[embedded.Server] = []
_tmp = Path(tempfile.mkdtemp(prefix="svc-tests-"))


# Set to the pid of the test process whose servers MONGO_URI / REDIS_URL name: a pytest-xdist
# worker inherits its controller's environment and must start servers of its own.
OWNER_ENV = "SVC_TEST_SERVERS_OF"
# With REDIS_URL given, each test process flushes a Redis db of its own: 15, then 14 for the
# second xdist worker, and so on.
REDIS_TEST_DB = 15


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    os.environ["DATA_DIR"] = str(_tmp / "data")
    (_tmp / "data" / "static").mkdir(parents=True)  # STATIC_ROOT, served by whitenoise
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(32))
    # Local hosts over plain HTTP (marketplace/settings.py); what reads /metrics sends the token.
    os.environ.setdefault("SVC_ENVIRONMENT", "development")
    os.environ.setdefault("SVC_METRICS_TOKEN", secrets.token_urlsafe(32))
    os.environ["SVC_TEST_DB_IS_MAIN"] = "1"
    if os.environ.pop(OWNER_ENV, None):  # started by the controller of this xdist worker
        del os.environ["MONGO_URI"], os.environ["REDIS_URL"]
    db_name = f"svc_test_{secrets.token_hex(4)}"
    given = bool(os.environ.get("MONGO_URI") or os.environ.get("REDIS_URL"))
    if os.environ.get("MONGO_URI"):
        os.environ["MONGO_URI"] = _with_db(os.environ["MONGO_URI"], db_name)
    else:
        _servers.append(embedded.start_mongo(_tmp / "mongo", db=db_name))
        os.environ["MONGO_URI"] = _servers[-1].uri
    if os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = _with_redis_db(os.environ["REDIS_URL"], REDIS_TEST_DB - _worker())
    else:
        _servers.append(embedded.start_redis(_tmp / "redis"))
        os.environ["REDIS_URL"] = _servers[-1].uri
    if not given:
        os.environ[OWNER_ENV] = str(os.getpid())
    return (yield)


def _worker() -> int:
    """This pytest-xdist worker's number (gw0 → 0), 0 without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw") or 0)


def _with_redis_db(url: str, db: int) -> str:
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/{db}" + (f"?{query}" if query else "")


def _with_db(uri: str, db: str) -> str:
    base, _, query = uri.partition("?")
    if parse_uri(uri).get("database"):
        base = base.rsplit("/", 1)[0]
    return f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else "")


@atexit.register
def _stop_servers() -> None:
    for server in reversed(_servers):
        server.stop()
    shutil.rmtree(_tmp, ignore_errors=True)


def servers_by_name() -> dict[str, embedded.Server]:
    return {server.name: server for server in _servers}

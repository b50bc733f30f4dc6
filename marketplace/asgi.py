"""The API as served (deploy/gunicorn.conf.py: uvicorn workers under gunicorn), one port:

- the long-lived answers on the event loop, holding no thread while they wait
  (api/http/live.py): `GET /svc/request/<id>/events/` (SSE), `Prefer: wait` on intake, and the
  WebSocket `/ws/requests/` (Channels, api/http/sockets.py); the answers of the gateway's
  `POST /v1/chat/completions`, streamed or whole (api/http/chat.py);
- everything else — the DRF views, the admin, /metrics, /healthz — is the Django WSGI
  application, unchanged, run in a pool of API_THREADS threads per process (a2wsgi), as
  gunicorn's gthread workers ran it: Django's own ASGI handler would run every sync view on
  one thread per process.
"""

import os

from infra import logs

logs.set_role("api")
# Multiprocess metrics (infra/metrics.py): the directory must exist before the first
# metric is created; gunicorn's child_exit hook (deploy/gunicorn.conf.py) forgets dead workers.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.urls import path  # noqa: E402

django_wsgi = get_wsgi_application()  # sets Django up: the modules below read models

from api.http import chat, live  # noqa: E402
from api.http.sockets import RequestEventsConsumer  # noqa: E402
from infra.envs import envint  # noqa: E402

# Threads per process for the sync views (as many as gunicorn's gthread workers had here).
API_THREADS = envint("API_THREADS", 4)


class LiveRouter:
    """HTTP: the live answers to the event loop, the rest to Django in the thread pool."""

    def __init__(self, sync_app):
        self.sync_app = sync_app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        found = live.EVENTS_PATH.match(scope["path"])
        if found is not None:
            await live.events_app(scope, receive, send, found["request_id"])
            return
        if scope["path"] == chat.PATH and scope["method"] == "POST":
            await chat.chat_app(scope, receive, send, self.sync_app)
            return
        if scope["method"] == "POST" and live.INTAKE_PATH.match(scope["path"]):
            seconds = live.wait_seconds(_header(scope, b"prefer"))
            if seconds is not None:
                await live.wait_app(scope, receive, send, self.sync_app, seconds)
                return
        await self.sync_app(scope, receive, send)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _terminated_input(environ, start_response):
    """The ASGI server hands a body over as messages ending with the last one (a chunked
    body included), so the WSGI input ends where the body does: `wsgi.input_terminated`, as
    gunicorn set it, lets Django read a body without Content-Length (api/http/body.py)."""
    environ["wsgi.input_terminated"] = True
    return django_wsgi(environ, start_response)


http = LiveRouter(WSGIMiddleware(_terminated_input, workers=API_THREADS))

application = ProtocolTypeRouter(
    {
        "http": http,
        "lifespan": http,
        "websocket": URLRouter([path("ws/requests/", RequestEventsConsumer.as_asgi())]),
    }
)

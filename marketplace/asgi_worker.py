"""gunicorn's worker for the ASGI API (deploy/gunicorn.conf.py): uvicorn's, told when it is asked
to stop, so that the live answers it holds end first instead of being cut at the grace's end —
a `Prefer: wait` answers with the request as it is, an SSE stream ends (its client resumes
elsewhere with `Last-Event-ID`), a WebSocket subscription says `draining`."""

import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    # Seconds the requests in progress get once the worker stops; then uvicorn cancels them.
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "timeout_graceful_shutdown": 10}

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = Server(config=self.config)
        stop = server.handle_exit

        def handle_exit(sig, frame) -> None:
            from api.http import hub  # the app is loaded by now

            hub.drain()
            stop(sig, frame)

        server.handle_exit = handle_exit
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

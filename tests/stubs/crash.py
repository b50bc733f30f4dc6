"""A handler that takes its executor process down, as a segfault in a native library would.

Loaded by real processes with SVC_HANDLER_MODULES=tests.stubs.crash: registers `crash.exit`.
"""

import os

from executor.handlers import HandlerCall, handler

# The exit status of a process the handler ended (EX_SOFTWARE).
EXIT_STATUS = 70


@handler(resource="local")
def exit(call: HandlerCall) -> str:  # noqa: A001 - the handler id reads `crash.exit`
    """Ends the whole executor process at once: no exception, no cleanup, no RQ bookkeeping."""
    os._exit(EXIT_STATUS)

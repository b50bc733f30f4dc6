"""The domain's one error type: a failure the client caused or can act on, with a code.

api/http/errors.py turns it (and DRF's and the stores' errors) into the one JSON shape,
`{"error": {"code", "message", …}}`; commands turn it into a one-line reason.
"""


class ApplicationError(Exception):
    """A failure the client caused or can act on; `extra` keys go into the error body."""

    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        fields: list[str] | None = None,
        **extra,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or self.status
        self.fields = fields
        self.extra = extra

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.fields is not None:
            error["fields"] = self.fields
        error.update(self.extra)
        return {"error": error}

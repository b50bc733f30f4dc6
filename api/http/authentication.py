"""`Authorization: Bearer <key>` (or `Token <key>`, the older spelling) → the key's client.

Every way of failing — no header on a view that needs one, a malformed header, an unknown,
revoked or expired key — is counted against the caller's IP (throttling.unauthenticated_hit)
before it is answered, so a flood of bad keys meets a 429, not an unbounded stream of 401s.
"""

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from api.errors import ApplicationError
from api.http.throttling import unauthenticated_hit
from api.services.keys import key_authenticate

SCHEMES = ("bearer", "token")


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            unauthenticated_hit(request)
            return None  # the view's permission check answers 401
        scheme, _, raw = header.strip().partition(" ")
        if scheme.lower() not in SCHEMES or not raw.strip() or " " in raw.strip():
            self._refuse(request, "use the header Authorization: Bearer <API key>")
        try:
            key = key_authenticate(raw.strip())
        except ApplicationError as exc:
            self._refuse(request, exc.message)
        return key.user, key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'

    @staticmethod
    def _refuse(request, message: str):
        unauthenticated_hit(request)
        raise AuthenticationFailed(message)

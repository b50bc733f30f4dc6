"""The address of the client a request came from, as far as this deployment can trust it.

Behind N reverse proxies (settings.SVC_PROXY_COUNT) each proxy appends the address it saw to
X-Forwarded-For, so the N-th address from the right is the one the outermost trusted proxy
saw; anything further left was written by the client and may be forged. With 0 proxies, a
header shorter than N (the request bypassed a proxy) or an entry that is not an address
(an `address:port` one is read as its address), it is REMOTE_ADDR. Callers: the admin login
throttle (django-axes, marketplace/login_guard.py), the audit trail and the API's per-IP limits.
"""

import ipaddress

from django.conf import settings


def client_ip(request) -> str:
    remote_addr = request.META.get("REMOTE_ADDR", "")
    proxies = getattr(settings, "SVC_PROXY_COUNT", 0)
    if proxies <= 0:
        return remote_addr
    header = request.META.get("HTTP_X_FORWARDED_FOR", "")
    forwarded = [entry.strip() for entry in header.split(",") if entry.strip()]
    if len(forwarded) < proxies:
        return remote_addr
    return _address(forwarded[-proxies]) or remote_addr


def _address(entry: str) -> str | None:
    """The address of an X-Forwarded-For entry ("203.0.113.7", "203.0.113.7:4711",
    "[2001:db8::1]:4711"), normalised; None if it holds none."""
    host, colon, port = entry.rpartition(":")
    candidates = [entry, host] if colon and port.isdigit() else [entry]
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate.removeprefix("[").removesuffix("]")))
        except ValueError:
            continue
    return None

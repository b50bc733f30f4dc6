"""Which webhook URLs we send to: https, and only to public addresses.

A webhook URL is the client's, and the worker posts to it from inside our network: without a
check it would reach our databases, the cloud's metadata service or anything else on a private
range (SSRF). So the host is resolved and every address it resolves to must be public, both
when the URL is given (`check_webhook_url`, at intake and when an account default is set) and
again right before each attempt (`send_target`), because a DNS name may change its answer
between the two (DNS rebinding). The attempt then connects to the very address that was
checked, never resolving the name again, and never follows a redirect.

Resolution uses getaddrinfo only (an IP literal needs no DNS); a refusal happens before any
connection is opened. SVC_WEBHOOK_ALLOW_PRIVATE=1 (development, tests) also accepts http and
every address.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from django.conf import settings

from api.errors import ApplicationError
from webhooks import defaults

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Shared address space (carrier-grade NAT, RFC 6598): not private to Python, not ours to reach.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 (RFC 6052): the IPv4 address it translates to is in the last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IPv4-compatible IPv6 (::a.b.c.d, deprecated but still routed by some stacks).
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: `url` names the checked address instead of the host; the
    `Host` header and TLS (SNI and the certificate's name) keep the host."""

    url: str
    host_header: str
    sni_hostname: str
    address: str


def check_webhook_url(url: str) -> str:
    """The URL, if we may send to it; else `400 invalid_webhook` saying why."""
    parts, host = _parse(url)
    _resolve_checked(host, parts.port or _default_port(parts.scheme))
    return url


def send_target(url: str) -> Target:
    """The checked address this attempt connects to (the URL is checked again: see above)."""
    parts, host = _parse(url)
    port = parts.port or _default_port(parts.scheme)
    address = _resolve_checked(host, port)[0]
    shown = f"[{address}]" if address.version == 6 else str(address)
    netloc = shown if parts.port is None else f"{shown}:{parts.port}"
    host_header = _bracketed(host) if parts.port is None else f"{_bracketed(host)}:{parts.port}"
    return Target(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host_header=host_header,
        sni_hostname=host,
        address=str(address),
    )


def refusal(address: IPAddress) -> str | None:
    """Why we do not send to `address` (its kind, e.g. "loopback"), None if it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return refusal(embedded)
        # 6to4 and Teredo carry an IPv4 address too: a private one is refused whatever the
        # outer address (Teredo's is not global anyway).
        tunnelled = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if tunnelled is not None and refusal(tunnelled):
            return refusal(tunnelled)
        if address.is_site_local:
            return "site-local"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared (carrier-grade NAT)"
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, IPv4-compatible or NAT64."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _parse(url) -> tuple[SplitResult, str]:
    """The URL's parts and its host (lower case, ASCII), or invalid_webhook."""
    if not isinstance(url, str) or not url:
        raise _invalid("the webhook URL is empty")
    if len(url) > defaults.MAX_URL_LENGTH:
        raise _invalid(f"the webhook URL is longer than {defaults.MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise _invalid("the webhook URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError:
        raise _invalid("the webhook URL cannot be parsed (check its host and port)")
    allowed = ("https", "http") if settings.SVC_WEBHOOK_ALLOW_PRIVATE else ("https",)
    if parts.scheme.lower() not in allowed:
        raise _invalid("the webhook URL must start with https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _invalid("the webhook URL must not carry a user name or password")
    if not parts.hostname:
        raise _invalid("the webhook URL names no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise _invalid("the webhook URL's host is not a valid domain name")
    return parts._replace(scheme=parts.scheme.lower()), host


def _resolve_checked(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, refusing the host if any of them is not public."""
    addresses = _resolve(host, port)
    if not settings.SVC_WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            kind = refusal(address)
            if kind:
                raise _invalid(
                    f"the webhook host {host} resolves to a {kind} address; webhooks go to "
                    "public addresses only"
                )
    return addresses


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]  # a literal: no DNS
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _invalid(f"the webhook host {host} does not resolve")
    addresses = []
    for _family, _type, _proto, _name, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0].partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _invalid(f"the webhook host {host} does not resolve")
    return addresses


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _invalid(message: str) -> ApplicationError:
    return ApplicationError("invalid_webhook", message, status=400)

"""Which webhook URLs are refused (webhooks/addresses.py), and that refusing opens no
connection: this machine forbids traffic to private ranges, and so must the code. No test here
resolves a real DNS name: hosts are IP literals, `localhost` (the hosts file), or names whose
getaddrinfo answer the test gives."""

import socket

import pytest

from api.errors import ApplicationError
from webhooks import addresses
from webhooks.addresses import check_webhook_url, send_target

REFUSED = [
    ("http://93.184.216.34/hook", "https"),
    ("https://127.0.0.1/hook", "loopback"),
    ("https://localhost/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://172.16.0.1/hook", "private"),
    ("https://192.168.1.1/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://100.64.0.1/hook", "carrier-grade NAT"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://224.0.0.1/hook", "multicast"),
    ("https://240.0.0.1/hook", "reserved"),
    ("https://[::1]/hook", "loopback"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://[fc00::1]/hook", "private"),
    ("https://[fec0::1]/hook", "site-local"),
    ("https://[ff02::1]/hook", "multicast"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://[::ffff:10.0.0.1]/hook", "private"),
    ("https://[::ffff:169.254.169.254]/hook", "link-local"),
    ("https://[::127.0.0.1]/hook", "loopback"),
    ("https://[64:ff9b::10.0.0.1]/hook", "private"),
    ("https://[2002:a00:1::1]/hook", "private"),
    ("https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/hook", "private"),
    ("https://user:pw@93.184.216.34/hook", "user name or password"),
    ("https:///hook", "no host"),
    ("https://93.184.216.34:99999/hook", "cannot be parsed"),
    ("ftp://93.184.216.34/hook", "https"),
    ("https://93.184.216.34/a b", "spaces"),
    ("", "empty"),
    ("https://93.184.216.34/" + "a" * 2048, "longer than 2048"),
]


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if anything opens a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def resolving(monkeypatch, answers: dict[str, list[str]]) -> list[str]:
    """getaddrinfo answers `answers[host]` (no DNS); returns the hosts it was asked for."""
    asked = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_it_refuses_urls_that_are_not_https_and_public(no_connections, url, why):
    with pytest.raises(ApplicationError) as refused:
        check_webhook_url(url)

    assert refused.value.code == "invalid_webhook"
    assert refused.value.status == 400
    assert why in refused.value.message


def test_it_accepts_a_public_https_address(no_connections):
    url = "https://93.184.216.34:8443/hooks?token=abc"
    assert check_webhook_url(url) == url


def test_a_name_is_judged_by_every_address_it_resolves_to(no_connections, monkeypatch):
    resolving(monkeypatch, {"hooks.example": ["93.184.216.34", "10.0.0.7"]})

    with pytest.raises(ApplicationError, match="resolves to a private address"):
        check_webhook_url("https://hooks.example/in")


def test_a_name_that_does_not_resolve_is_refused(no_connections, monkeypatch):
    resolving(monkeypatch, {})

    with pytest.raises(ApplicationError, match="does not resolve") as refused:
        check_webhook_url("https://nowhere.example/in")
    assert refused.value.code == "invalid_webhook"


def test_an_ip_literal_needs_no_dns(no_connections, monkeypatch):
    asked = resolving(monkeypatch, {})

    check_webhook_url("https://[2606:4700::1111]/in")

    assert asked == []


def test_allow_private_takes_http_and_loopback(settings, no_connections):
    settings.SVC_WEBHOOK_ALLOW_PRIVATE = True

    assert check_webhook_url("http://127.0.0.1:9/in") == "http://127.0.0.1:9/in"
    with pytest.raises(ApplicationError, match="user name"):
        check_webhook_url("http://me:pw@127.0.0.1/in")  # still refused: no credentials in URLs


def test_the_send_target_connects_to_the_checked_address_and_keeps_the_host(
    no_connections, monkeypatch
):
    resolving(monkeypatch, {"hooks.example": ["93.184.216.34"]})

    target = send_target("https://Hooks.Example:8443/in?x=1#frag")

    assert target.url == "https://93.184.216.34:8443/in?x=1"
    assert target.host_header == "hooks.example:8443"
    assert target.sni_hostname == "hooks.example"


def test_the_send_target_brackets_ipv6(no_connections, monkeypatch):
    resolving(monkeypatch, {"v6.example": ["2606:4700::1111"]})

    target = send_target("https://v6.example/in")

    assert target.url == "https://[2606:4700::1111]/in"
    assert target.host_header == "v6.example"


def test_a_name_that_now_resolves_privately_is_refused_at_send_time(no_connections, monkeypatch):
    """DNS rebinding: public when given, private when sent."""
    answers = {"rebind.example": ["93.184.216.34"]}
    resolving(monkeypatch, answers)
    check_webhook_url("https://rebind.example/in")
    answers["rebind.example"] = ["127.0.0.1"]

    with pytest.raises(ApplicationError, match="loopback"):
        send_target("https://rebind.example/in")


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_public_addresses_have_no_refusal(address):
    import ipaddress

    assert addresses.refusal(ipaddress.ip_address(address)) is None

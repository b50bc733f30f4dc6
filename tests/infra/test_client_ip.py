"""infra/client_ip.py: the N-th X-Forwarded-For address from the right behind N proxies."""

import pytest
from django.test import RequestFactory

from infra.client_ip import client_ip


def request_from(remote_addr: str = "10.0.0.9", forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote_addr}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(
    "proxies, forwarded, expected",
    [
        (0, None, "10.0.0.9"),
        (0, "203.0.113.7", "10.0.0.9"),  # no proxy: the header is the client's own words
        (1, None, "10.0.0.9"),  # reached the API past the proxy
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the client's forgery is left of it
        (2, "6.6.6.6, 203.0.113.7, 10.1.1.1", "203.0.113.7"),
        (2, "203.0.113.7", "10.0.0.9"),  # shorter than the proxies: REMOTE_ADDR
        (3, "203.0.113.7, 10.1.1.1", "10.0.0.9"),
        (1, " 203.0.113.7 ", "203.0.113.7"),
        (1, "203.0.113.7,", "203.0.113.7"),  # empty entries do not count
        (1, "203.0.113.7:4711", "203.0.113.7"),
        (1, "[2001:db8::1]:4711", "2001:db8::1"),
        (1, "2001:DB8:0::1", "2001:db8::1"),
        (1, "unknown", "10.0.0.9"),  # not an address: REMOTE_ADDR
        (1, "203.0.113.7:port", "10.0.0.9"),
    ],
)
def test_it_takes_the_address_the_outermost_trusted_proxy_saw(
    settings, proxies, forwarded, expected
):
    settings.SVC_PROXY_COUNT = proxies
    assert client_ip(request_from(forwarded=forwarded)) == expected


def test_without_any_address_it_is_empty(settings):
    settings.SVC_PROXY_COUNT = 0
    request = RequestFactory().get("/")
    del request.META["REMOTE_ADDR"]
    assert client_ip(request) == ""

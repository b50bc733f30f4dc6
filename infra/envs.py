"""Typed readers for environment variables that fail with a message saying how to fix them."""

import ipaddress
import os

from django.core.exceptions import ImproperlyConfigured


def envstr(name: str, default: str | None = None, *, hint: str = "") -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ImproperlyConfigured(
            f"{name} is not set. {hint or 'Set it in the environment.'}".strip()
        )
    return value


def envoptional(name: str) -> str:
    """The variable's value, or "" when it is unset (for settings where empty means "none")."""
    return os.environ.get(name, "")


def envint(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer; set it to e.g. {default}.")


def envfloat(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number; set it to e.g. {default}.")
    return value


def envlist(name: str) -> list[str]:
    """A comma-separated variable as its non-empty items ([] when unset)."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def envhostports(name: str) -> list[tuple[str, int]]:
    """A comma-separated variable of `host:port` items ([] when unset)."""
    found = []
    for item in envlist(name):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ImproperlyConfigured(f"{name}: {item!r} is not host:port, e.g. 10.0.0.5:26379.")
        found.append((host.strip("[]"), int(port)))
    return found


def envnetworks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A comma-separated variable of networks in CIDR form (10.0.0.0/8, fd00::/8; a bare
    address is that one host); [] when unset."""
    networks = []
    for item in envlist(name):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not a network; use CIDRs such as 10.0.0.0/8, comma-separated."
            ) from None
    return networks


def envmatching(suffix: str) -> dict[str, str]:
    """Every variable whose name ends with `suffix`, by name (e.g. the `*_API_KEY` ones)."""
    return {name: value for name, value in os.environ.items() if name.endswith(suffix)}


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use 1/0, true/false or yes/no.")


def load_dev_env(path) -> None:
    """Read KEY=VALUE lines written by the dev stack; never override the real environment."""
    try:
        with open(path, encoding="utf-8") as env_file:
            lines = env_file.read().splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            os.environ.setdefault(key.strip(), value.strip())

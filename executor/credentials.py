"""Credentials of handler calls, from the versioned `service_map` config (configs/live.py).

    credentials:                       # named credential sets; secrets must be `~` keys
      openai-main: {kind: api_key, ~api_key: sk-…}
      openai-backup: {kind: api_key, ~api_key: sk-…}
      storage: {kind: access_key, ~access_key: AK…, ~secret_key: …}
      public: {kind: none}
    handlers:
      openai.chat: {credentials: openai-main}   # the handler's default set

An offer may name another set (`ServiceOffer.credentials`, e.g. a second account of the same
provider); a fallback entry may too. The older inline form `handlers: openai.chat: {~api_key}`
still works: it is the handler's default `api_key` set. Values never reach a log, an error
or a metric: Credentials hides them from repr(), and their values redact upstream messages.
"""

from configs import live
from executor.calls import Credentials, HandlerError

# Credential kinds (the neighbouring seeds' "no auth", "API key", "access key + secret key"):
# the secret fields each requires. Every one of them must be written `~name` in the config.
KINDS = {
    "none": (),
    "api_key": ("api_key",),
    "access_key": ("access_key", "secret_key"),
}
# Optional plain (non-secret) settings of a kind: `header` names the HTTP header an API key
# goes in (http.post; default `Authorization: Bearer <key>`).
OPTIONS = {"api_key": ("header",)}
# Names of credential sets: what an offer or a handler's settings refer to.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


def credential_sets() -> dict:
    """The active config's credential sets by name ({} when there is no config)."""
    return live.section("service_map", "credentials")


def resolve(handler_id: str, name: str | None = None) -> Credentials:
    """The set `name` (an offer's override), else the handler's default in the config, else
    an inline `api_key` under the handler, else no credentials (kind none)."""
    configured = live.section("service_map", "handlers", handler_id)
    name = name or configured.get("credentials")
    if name:
        return named(name)
    if configured.get("api_key"):
        values = {"api_key": str(configured["api_key"]).strip()}
        return Credentials(name=f"handlers.{handler_id}", kind="api_key", values=values)
    return Credentials()


def named(name: str) -> Credentials:
    entry = credential_sets().get(name)
    if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
        raise HandlerError(
            "missing_credentials",
            f"credential set {name!r} is not in the active service_map config",
        )
    kind = entry["kind"]
    fields = KINDS[kind] + OPTIONS.get(kind, ())
    values = {key: str(entry[key]).strip() for key in fields if entry.get(key) is not None}
    missing = [key for key in KINDS[kind] if not values.get(key)]
    if missing:
        raise HandlerError(
            "missing_credentials", f"credential set {name!r} lacks {', '.join(missing)}"
        )
    return Credentials(name=name, kind=kind, values=values)


def secrets_of(credentials: Credentials | None) -> list[str]:
    """The secret values of a set (not its plain options such as `header`)."""
    if credentials is None:
        return []
    return [credentials.get(key) for key in KINDS.get(credentials.kind, ()) if credentials.get(key)]

"""The Fernet keys that seal `~` config values: the bootstrap's `fernet_key` (the seed's
`decrypt_key`; the shipped bootstrap reads CONFIG_FERNET_KEY).

It holds one key, or several separated by commas, newest first: the newest encrypts, any of
them decrypts. To rotate, put a new key in front, run `config rotate-keys`, then drop the old
keys. Messages never quote key material.
"""

from cryptography.fernet import Fernet, MultiFernet

from configs import bootstrap
from configs.protocol import ConfigError

# The variable the shipped bootstrap takes the key from (what messages name by default).
KEY_ENV = bootstrap.DEFAULT_KEY_VARIABLE
_GENERATE = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


def key_variable() -> str:
    """The variable the bootstrap in effect reads its key from (for messages)."""
    try:
        return bootstrap.load_bootstrap().key_variable
    except ConfigError:
        return KEY_ENV


def fernet() -> MultiFernet:
    """The keys the bootstrap gives, read now (so a changed environment takes effect)."""
    loaded = bootstrap.load_bootstrap()
    variable = loaded.key_variable
    keys = [key.strip() for key in loaded.fernet_key.split(",") if key.strip()]
    if not keys:
        raise ConfigError(f"{variable} is not set; generate a key with: {_GENERATE}")
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise ConfigError(
                f"{variable}: key {position} of {len(keys)} is not a Fernet key "
                f"(32 url-safe base64-encoded bytes); generate one with: {_GENERATE}"
            ) from None
    return MultiFernet(fernets)

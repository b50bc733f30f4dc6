"""The Fernet keys that seal `~` config values, from CONFIG_FERNET_KEY (the seed's decrypt_key).

CONFIG_FERNET_KEY holds one key, or several separated by commas, newest first: the newest
encrypts, any of them decrypts. To rotate, put a new key in front, run `config rotate-keys`,
then drop the old keys. Messages never quote key material.
"""

import os

from cryptography.fernet import Fernet, MultiFernet

from configs.protocol import ConfigError

KEY_ENV = "CONFIG_FERNET_KEY"
_GENERATE = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


def fernet() -> MultiFernet:
    """The keys in CONFIG_FERNET_KEY, read now (so a changed environment takes effect)."""
    keys = [key.strip() for key in os.environ.get(KEY_ENV, "").split(",") if key.strip()]
    if not keys:
        raise ConfigError(f"{KEY_ENV} is not set; generate a key with: {_GENERATE}")
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise ConfigError(
                f"{KEY_ENV}: key {position} of {len(keys)} is not a Fernet key "
                f"(32 url-safe base64-encoded bytes); generate one with: {_GENERATE}"
            ) from None
    return MultiFernet(fernets)

import pytest

# A secret: must never reach MongoDB in plaintext (TEST_API_KEY, read by `!ENV` at upload).
CANARY = "sk-canary-Ünï-7f3a91"


@pytest.fixture
def fernet_key(fresh_fernet_key, monkeypatch) -> str:
    """A fresh CONFIG_FERNET_KEY (the shipped bootstrap's key), and TEST_API_KEY set."""
    monkeypatch.setenv("TEST_API_KEY", CANARY)
    return fresh_fernet_key

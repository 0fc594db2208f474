"""Fixtures shared by the Hub tests: the loopback fake Hub and an isolated Hugging Face cache."""

import pytest

from tests.hub_server import FakeHub, guard_sockets, isolate_hf


@pytest.fixture(scope="module")
def fake_hub():
    with FakeHub() as server:
        yield server


@pytest.fixture()
def cache(monkeypatch, tmp_path):
    cache = isolate_hf(monkeypatch, tmp_path)
    guard_sockets(monkeypatch, allow_loopback=True)
    return cache

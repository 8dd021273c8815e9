"""Fixtures for the runtime's tests (the helpers behind them are in ``helpers.py``)."""

from __future__ import annotations

import pytest

from streams import InMemoryPublisher, SingleObjectSerde

from .helpers import make_library


@pytest.fixture
def publisher(catalog):
    return InMemoryPublisher(SingleObjectSerde(catalog))


@pytest.fixture
def library(tmp_path):
    """Reference kernels for 8-wide chunks in a store, and an Urza view in which they are VALIDATED."""
    return make_library(tmp_path)

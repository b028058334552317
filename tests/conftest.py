"""Shared fixtures: the tiny-weight engine (official formats, random weights from ../shared/parity)."""
from __future__ import annotations

import pytest

from tests.parity import TINY_CLIP, TINY_DINO, tiny_model


@pytest.fixture(scope="session")
def tiny_weights():
    if not TINY_CLIP.is_file() or not TINY_DINO.is_file():
        pytest.skip(f"tiny weights not found under {TINY_CLIP.parent}")
    return TINY_CLIP, TINY_DINO


@pytest.fixture(scope="session")
def model(tiny_weights):
    """A CASS engine on the tiny weights with the ``default`` preset (shared: do not mutate)."""
    return tiny_model(*tiny_weights)

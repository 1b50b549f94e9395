"""Fixtures shared by the callback tests."""

import pytest

from tests.training.callbacks.fitting import (
    EPOCHS,
    STEPS_PER_EPOCH,
    _fit,
    _iterations,
    _model,
    _weights,
)


@pytest.fixture(scope="module")
def uninterrupted():
    """Weights after the whole run without any backup (plain `fit`)."""
    model = _model()
    _fit(model, [])
    assert _iterations(model) == EPOCHS * STEPS_PER_EPOCH
    return _weights(model)

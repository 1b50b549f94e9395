"""Test configuration: one backend per process, chosen by KERAS_BACKEND."""

import os

import keras
import numpy as np
import pytest


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32, channels_last and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.config.set_image_data_format("channels_last")
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_image_data_format("channels_last")
    keras.backend.clear_session()


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""Test configuration: one backend per process, chosen by KERAS_BACKEND."""

import os

import keras
import numpy as np
import pytest


def pytest_runtest_setup(item):
    """The one check for tests that need channels_first convolutions."""
    if item.get_closest_marker("channels_first_conv") is None:
        return
    from kseg.ops._backend import channels_first_conv_supported

    if not channels_first_conv_supported():
        pytest.skip(
            "TensorFlow cannot run channels_first convolutions on this CPU (oneDNN is off: "
            "TF_ENABLE_ONEDNN_OPTS=0 or no AVX-512)"
        )


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

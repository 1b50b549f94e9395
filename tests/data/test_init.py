import keras
import pytest
import tensorflow as tf

import kseg.data


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="TF keeps its GPUs")
def test_tensorflow_sees_no_gpu_under_other_backends():
    assert tf.config.get_visible_devices("GPU") == []


def test_lazy_exports():
    for name in kseg.data.__all__:
        assert getattr(kseg.data, name) is not None
    assert kseg.data.voc_dataset.__module__ == "kseg.data.voc"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        kseg.data.nothing  # noqa: B018

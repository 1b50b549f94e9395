import numpy as np

import kseg
from tests.helpers import run_model_test, to_numpy
from tests.models.conftest import tiny_resnet


def test_glorenet_tiny():
    model = kseg.models.GloReNet(
        num_classes=3, backbone=tiny_resnet(8), reduce_filters=16, num_state=8, num_node=4
    )
    run_model_test(model, (1, 37, 45, 3), 3)


def test_glore_unit_starts_as_identity_inside_the_model():
    model = kseg.models.GloReNet(
        num_classes=3, backbone=tiny_resnet(8), reduce_filters=16, num_state=8, num_node=4
    )
    import keras

    probe = keras.Model(
        model.input, [model.get_layer("glore").input, model.get_layer("glore").output]
    )
    x = np.random.default_rng(0).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
    before, after = (to_numpy(t) for t in probe(x))
    np.testing.assert_array_equal(after, before)

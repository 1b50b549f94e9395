import keras
import numpy as np

import kseg
from tests.helpers import run_model_test, to_numpy


def test_parameter_count_matches_reference():
    # SegNet VGG16-BN, K = 11: 29,449,355 trainable parameters (SPEC 5; BN's
    # moving statistics are buffers in the reference, non-trainable here).
    model = kseg.models.SegNet(num_classes=11)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 29_449_355


def test_logits_at_input_size_and_round_trip():
    model = kseg.models.SegNet(num_classes=3)
    run_model_test(model, (1, 37, 45, 3), 3, train=False)


def test_decoder_unpools_to_the_argmax_positions():
    """The first unpooling puts each pooled value back where the encoder's max was."""
    model = kseg.models.SegNet(num_classes=2)
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    sub = keras.Model(
        model.input, [model.get_layer("unpool5").output, model.get_layer("pool5_argmax").input]
    )
    unpooled, before = (to_numpy(t) for t in sub(x))
    # Reference: 2x2/2 max-pool of `before`, values placed at the first argmax.
    h, w = before.shape[1] // 2, before.shape[2] // 2
    windows = before[:, : 2 * h, : 2 * w].reshape(1, h, 2, w, 2, -1).transpose(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(1, h, w, 4, -1)
    arg = windows.argmax(axis=3)
    expected = np.zeros_like(before)
    for i in range(h):
        for j in range(w):
            for c in range(before.shape[-1]):
                k = arg[0, i, j, c]
                expected[0, 2 * i + k // 2, 2 * j + k % 2, c] = windows[0, i, j, k, c]
    np.testing.assert_allclose(unpooled, expected, rtol=1e-6)

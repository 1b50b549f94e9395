import numpy as np
import pytest

from kseg.layers.crop import CropLike
from tests.helpers import random_array, run_layer_test, to_numpy


@pytest.mark.parametrize("offset", [None, 0, 3])
def test_crop_matches_numpy_slice(offset):
    x = random_array((2, 11, 14, 3))
    ref = np.zeros((2, 6, 7, 5), "float32")
    out = to_numpy(CropLike(offset=offset)([x, ref]))
    top, left = (offset, offset) if offset is not None else ((11 - 6) // 2, (14 - 7) // 2)
    np.testing.assert_array_equal(out, x[:, top : top + 6, left : left + 7, :])


def test_crop_channels_first():
    x = random_array((1, 3, 9, 8))
    ref = np.zeros((1, 1, 5, 4), "float32")
    out = to_numpy(CropLike(offset=1, data_format="channels_first")([x, ref]))
    np.testing.assert_array_equal(out, x[:, :, 1:6, 1:5])


def test_crop_layer_contract():
    run_layer_test(
        CropLike,
        {"offset": 2},
        input_data=[random_array((2, 12, 13, 4)), random_array((2, 7, 9, 2), seed=1)],
        expected_output_shape=(2, 7, 9, 4),
        symbolic_input_shape=[(None, None, 4), (None, None, 2)],
    )


def test_crop_errors():
    with pytest.raises(ValueError, match="offset"):
        CropLike(offset=-1)
    with pytest.raises(ValueError, match="cannot crop"):
        CropLike(offset=4)([np.zeros((1, 6, 6, 1)), np.zeros((1, 4, 4, 1))])

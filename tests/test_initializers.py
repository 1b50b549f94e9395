import keras
import numpy as np
import pytest

from kseg.initializers import BilinearUpsampling
from tests.helpers import to_numpy


def _fcn_upsampling_weight(channels, k):
    """FCN's `upsample_filt` written out: f = floor((k+1)/2), centre by parity."""
    f = (k + 1) // 2
    c = f - 1 if k % 2 == 1 else f - 0.5
    w = np.zeros((k, k, channels, channels))
    for i in range(k):
        for j in range(k):
            v = (1 - abs(i - c) / f) * (1 - abs(j - c) / f)
            for ch in range(channels):
                w[i, j, ch, ch] = v
    return w


@pytest.mark.parametrize("k", [3, 4, 5, 16])
def test_matches_formula(k):
    w = to_numpy(BilinearUpsampling()((k, k, 3, 3)))
    np.testing.assert_allclose(w, _fcn_upsampling_weight(3, k), atol=1e-7)


def test_hand_worked_k4():
    # k = 4: f = 2, c = 1.5 -> 1D taps (0.25, 0.75, 0.75, 0.25).
    w = to_numpy(BilinearUpsampling()((4, 4, 1, 1)))[:, :, 0, 0]
    t = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(w, np.outer(t, t), atol=1e-7)


def test_constant_map_stays_constant_under_8x_upsampling():
    x = np.full((1, 5, 6, 2), 3.0, "float32")
    x[..., 1] = -2.0
    up = keras.layers.Conv2DTranspose(
        2, 16, strides=8, padding="valid", use_bias=False, kernel_initializer=BilinearUpsampling()
    )
    y = to_numpy(up(x))
    assert y.shape == (1, 48, 56, 2)
    interior = y[:, 8:-8, 8:-8]
    np.testing.assert_allclose(interior[..., 0], 3.0, rtol=1e-5)
    np.testing.assert_allclose(interior[..., 1], -2.0, rtol=1e-5)


def test_matches_torch_conv_transpose():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((1, 5, 4, 3)).astype("float32")
    up = keras.layers.Conv2DTranspose(
        3, 4, strides=2, padding="valid", use_bias=False, kernel_initializer=BilinearUpsampling()
    )
    y = to_numpy(up(x))
    weight = torch.tensor(_fcn_upsampling_weight(3, 4).transpose(3, 2, 0, 1), dtype=torch.float32)
    ref = torch.nn.functional.conv_transpose2d(torch.tensor(x).permute(0, 3, 1, 2), weight, stride=2)
    np.testing.assert_allclose(y, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_serialization():
    init = BilinearUpsampling()
    config = keras.initializers.serialize(init)
    revived = keras.initializers.deserialize(config)
    assert isinstance(revived, BilinearUpsampling)
    assert keras.initializers.get("kseg>BilinearUpsampling") is not None


@pytest.mark.parametrize(
    "shape, match",
    [
        ((4, 4, 3, 2), "as many output as input channels"),
        ((4, 3, 2, 2), "square kernel"),
        ((4, 4, 2), "rank 4"),
    ],
)
def test_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        BilinearUpsampling()(shape)

import numpy as np
import pytest

import kseg
from kseg.models.unet import _tile_geometry
from tests.helpers import run_model_test, to_numpy


def test_original_parameter_count():
    # Original U-Net: 1 input channel, 2 classes, valid convs, no BN (SPEC 5).
    model = kseg.models.UNet(num_classes=2, input_shape=(None, None, 1))
    assert model.count_params() == 31_030_658


@pytest.mark.parametrize("channels", [1, 4])
def test_grey_and_multispectral_inputs_run(channels):
    # The paper's setting is 1 channel; the normalisation must keep the channel count.
    model = kseg.models.UNet(num_classes=2, input_shape=(None, None, channels), base_filters=2, depth=2)
    x = np.random.default_rng(0).uniform(0, 255, (1, 37, 45, channels)).astype("float32")
    logits = to_numpy(model(x))
    assert logits.shape == (1, 37, 45, 2) and np.all(np.isfinite(logits))


def test_original_tile_geometry():
    # 572 -> 388 in the paper: margin 92 and valid sizes 572 + 16k.
    margin, multiple, residue = _tile_geometry(4, "valid")
    assert (margin, multiple, 572 % multiple) == (92, 16, residue)


def _reference_valid_output_size(size, depth):
    """Output size of a valid U-Net, or None when a pool would see an odd size."""
    for _ in range(depth):
        size -= 4
        if size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        size = size * 2 - 4
    return size


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_tile_geometry_covers_the_image(depth):
    margin, multiple, residue = _tile_geometry(depth, "valid")
    for size in range(1, 80):
        need = size + 2 * margin
        padded = need + (residue - need) % multiple
        out = _reference_valid_output_size(padded, depth)
        assert out is not None and out >= size


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": "valid"},
        {"padding": "same", "batch_norm": True, "upsampling": "bilinear"},
    ],
)
def test_logits_at_input_size(kwargs):
    model = kseg.models.UNet(num_classes=3, base_filters=4, depth=2, **kwargs)
    run_model_test(model, (1, 37, 45, 3), 3)


def test_same_unet_on_a_size_that_needs_no_padding():
    model = kseg.models.UNet(num_classes=2, base_filters=2, depth=2, padding="same")
    assert to_numpy(model(np.zeros((1, 32, 32, 3), "float32"))).shape == (1, 32, 32, 2)


def test_valid_unet_is_translation_consistent_with_the_paper_geometry():
    """The crop keeps output pixel j aligned with input pixel j.

    A valid-conv U-Net's output at (i, j) depends only on a window centred on
    input pixel (i, j) (plus the mirrored margin). Changing one input pixel far
    from the border must therefore change the logits around that same pixel.
    """
    model = kseg.models.UNet(num_classes=1, base_filters=2, depth=1)
    x = np.zeros((1, 40, 40, 3), "float32")
    base = to_numpy(model(x))
    x[0, 20, 20] = 255.0
    diff = np.abs(to_numpy(model(x)) - base)[0, ..., 0]
    rows, cols = np.nonzero(diff > 0)
    assert rows.min() <= 20 <= rows.max() and cols.min() <= 20 <= cols.max()
    assert abs((rows.min() + rows.max()) / 2 - 20) <= 1
    assert abs((cols.min() + cols.max()) / 2 - 20) <= 1


def test_errors():
    with pytest.raises(ValueError, match="padding"):
        kseg.models.UNet(num_classes=2, padding="full")
    with pytest.raises(ValueError, match="depth"):
        kseg.models.UNet(num_classes=2, depth=0)
    model = kseg.models.UNet(num_classes=2, base_filters=2, depth=4)
    with pytest.raises(ValueError, match="tile_padding='constant'"):
        model(np.zeros((1, 40, 40, 3), "float32"))

import kseg
from tests.helpers import run_model_test
from tests.models.conftest import tiny_resnet


def test_pspnet_tiny_with_aux():
    model = kseg.models.PSPNet(num_classes=3, backbone=tiny_resnet(8), fusion_filters=8, aux_head=True)
    ppm = model.get_layer("ppm")
    assert tuple(ppm.bins) == (1, 2, 3, 6)
    # PPM output: 128 backbone channels + 4 branches of 128 / 4.
    assert model.get_layer("fusion").input.shape[-1] == 256
    out = run_model_test(model, (1, 37, 45, 3), 3)
    assert set(out) == {"main", "aux"}

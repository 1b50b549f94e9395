import kseg
from tests.helpers import run_model_test
from tests.models.conftest import tiny_resnet


def test_gcunet_tiny():
    model = kseg.models.GCUNet(
        num_classes=3, backbone=tiny_resnet(8), unit_filters=8, fusion_filters=8, aux_head=True
    )
    # [X, GCU_2, GCU_4, GCU_8, GCU_32]: 128 + 4 * 8 channels into the fusion conv.
    assert model.get_layer("fusion").input.shape[-1] == 160
    run_model_test(model, (1, 37, 45, 3), 3)

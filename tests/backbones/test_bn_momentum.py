"""Every backbone takes one BatchNorm momentum, `bn_momentum`, and every BatchNormalization has it.

keras.applications builds its models with momenta of its own (MobileNet 0.999,
EfficientNet, Xception, DenseNet and ResNetV2 0.99: `families.KERAS_BATCH_NORM`),
at which the moving statistics of a run of a few hundred steps hardly move.
Every kseg backbone defaults to 0.9 (torch's momentum 0.1) and keeps the
epsilon its weights were trained with. The checks walk the whole model
(`tests.helpers.batch_norms`: nested models and layers included), and the
momentum must survive a `.keras` save and reload.
"""

import inspect

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import VGG16, Application, ResNet, Xception65, with_input_channels
from tests.backbones.families import KERAS_BATCH_NORM, SMALLEST
from tests.helpers import BACKEND, batch_norms, to_numpy

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="the built config does not depend on the backend"
)

# Neither kseg's default 0.9 nor Keras' 0.99 nor any family's own momentum.
MOMENTUM = 0.8
DEFAULT = 0.9


def _momenta(model):
    return {layer.momentum for layer in batch_norms(model)}


def _epsilons(model):
    return {layer.epsilon for layer in batch_norms(model)}


@tensorflow_only
@pytest.mark.parametrize("family", sorted(SMALLEST))
def test_application_sets_every_batch_norm(family):
    model = Application(SMALLEST[family], bn_momentum=MOMENTUM)
    expected = KERAS_BATCH_NORM[family]
    if expected is None:  # ConvNeXt and VGG19 have no BatchNorm
        assert batch_norms(model) == []
        return
    assert batch_norms(model)
    assert _momenta(model) == {MOMENTUM}
    # The epsilon stays the one the family's ImageNet weights were trained with.
    assert _epsilons(model) == {expected[1]}


def test_application_defaults_to_torch_momentum_everywhere():
    reference = keras.applications.MobileNetV2(include_top=False, weights=None)
    model = Application("mobilenetv2", output_stride=16)
    assert _momenta(reference) == {KERAS_BATCH_NORM["mobilenetv2"][0]}
    # The encoder ends at block 16's projection: the last 1x1 conv and its BN are not used.
    assert len(batch_norms(model)) == len(batch_norms(reference)) - 1
    assert _momenta(model) == {DEFAULT}
    assert _epsilons(model) == _epsilons(reference)


def test_application_keeps_the_weights_and_statistics(tmp_path):
    reference = keras.applications.MobileNetV2(include_top=False, weights=None)
    rng = np.random.default_rng(0)
    for layer in batch_norms(reference):  # non-trivial moving statistics
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32"))
    path = str(tmp_path / "mobilenetv2_notop.weights.h5")
    reference.save_weights(path)
    model = Application("mobilenetv2", weights=path, bn_momentum=MOMENTUM)
    for layer in batch_norms(model):
        want = reference.get_layer(layer.name)
        for got, expected in zip(layer.weights, want.weights):
            np.testing.assert_array_equal(to_numpy(got), to_numpy(expected), err_msg=got.path)


def test_application_momentum_survives_saving(tmp_path):
    model = Application("mobilenetv2", output_stride=16, bn_momentum=MOMENTUM)
    path = str(tmp_path / "encoder.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert len(batch_norms(reloaded)) == len(batch_norms(model))
    assert _momenta(reloaded) == {MOMENTUM}


def test_adapted_input_channels_keep_the_momentum():
    model = with_input_channels(Application("mobilenetv2", bn_momentum=MOMENTUM), 1)
    assert batch_norms(model) and _momenta(model) == {MOMENTUM}


# kseg's own backbones, with the epsilon of the weights each layout loads.
OWN = {
    "resnet_v1": (lambda **kw: ResNet((1, 1, 1, 1), width=4, **kw), 1.001e-5),
    "resnet_v1.5": (lambda **kw: ResNet((1, 1, 1, 1), width=4, variant="v1.5", **kw), 1e-5),
    "resnet_v1c": (lambda **kw: ResNet((1, 1, 1, 1), width=4, variant="v1c", **kw), 1e-5),
    "vgg16_bn": (lambda **kw: VGG16(variant="bn", **kw), 1e-5),
    "xception65": (lambda **kw: Xception65(output_stride=8, **kw), 1e-3),
}


@pytest.mark.parametrize("name", sorted(OWN))
def test_own_backbones_set_every_batch_norm(name):
    build, epsilon = OWN[name]
    model = build(bn_momentum=MOMENTUM)
    assert batch_norms(model)
    assert _momenta(model) == {MOMENTUM}
    assert _epsilons(model) == {epsilon}
    assert _momenta(build()) == {DEFAULT}


def test_own_backbone_momentum_survives_saving(tmp_path):
    model = OWN["resnet_v1c"][0](bn_momentum=MOMENTUM)
    path = str(tmp_path / "resnet.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert len(batch_norms(reloaded)) == len(batch_norms(model))
    assert _momenta(reloaded) == {MOMENTUM}


@pytest.mark.parametrize(
    "build",
    [
        lambda m: Application("mobilenetv2", bn_momentum=m),
        lambda m: Xception65(bn_momentum=m),
        lambda m: ResNet((1, 1, 1, 1), width=4, bn_momentum=m),
        lambda m: VGG16(variant="bn", bn_momentum=m),
    ],
    ids=["application", "xception65", "resnet", "vgg16"],
)
@pytest.mark.parametrize("momentum", [1.5, -0.1, None])
def test_bad_momentum(build, momentum):
    with pytest.raises((ValueError, TypeError), match="bn_momentum"):
        build(momentum)


def test_every_backbone_constructor_takes_bn_momentum():
    builders = (Application, ResNet, kseg.backbones.ResNet50, kseg.backbones.ResNet101)
    for builder in (*builders, VGG16, Xception65):
        assert inspect.signature(builder).parameters["bn_momentum"].default == DEFAULT

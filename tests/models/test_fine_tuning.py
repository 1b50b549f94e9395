"""`kseg.models.with_num_classes`: a trained model for another class count."""

import numpy as np
import pytest

import kseg
from tests.models.conftest import tiny_resnet


def _randomized(model, seed=0):
    """Every weight drawn afresh, so that a copied weight cannot equal a new one by chance."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def _by_path(model):
    return {v.path: np.asarray(v) for v in model.weights}


def _check_copied(old, new, changed):
    """Every weight of `new` equals `old`'s at the same path, but those of the layers `changed`."""
    old_weights, new_weights = _by_path(old), _by_path(new)
    assert set(old_weights) == set(new_weights)
    seen = set()
    for path, value in new_weights.items():
        layer = path.split("/")[0]
        if layer in changed:
            seen.add(layer)
            assert value.shape != old_weights[path].shape or not np.array_equal(
                value, old_weights[path]
            ), path
        else:
            np.testing.assert_array_equal(value, old_weights[path], err_msg=path)
    assert seen == set(changed)


def test_deeplabv3plus_on_a_backbone_model_keeps_all_but_the_classifier():
    old = _randomized(kseg.models.DeepLabV3Plus(3, backbone=tiny_resnet(), decoder_filters=8))
    new = kseg.models.with_num_classes(old, 5)
    assert new.builder == "DeepLabV3Plus" and new.arguments["num_classes"] == 5
    assert new.output.shape[-1] == 5
    _check_copied(old, new, {"classifier"})
    assert kseg.models.fine_tuning.replaced_layers(old, new) == ["classifier"]


def test_aux_head_and_dataset():
    old = _randomized(
        kseg.models.PSPNet(3, backbone=tiny_resnet(8), fusion_filters=8, aux_head=True)
    )
    dataset = {"name": "mine", "class_names": ["a", "b"]}
    new = kseg.models.with_num_classes(old, 2, dataset=dataset)
    _check_copied(old, new, {"classifier", "aux_classifier"})
    assert new.dataset["class_names"] == ["a", "b"]
    # The same class count keeps every weight, and the description.
    described = kseg.models.with_dataset(old, {"name": "old", "class_names": ["x", "y", "z"]})
    same = kseg.models.with_num_classes(described, 3)
    _check_copied(old, same, set())
    assert same.dataset["name"] == "old"
    image = np.random.default_rng(1).uniform(0, 255, (1, 33, 31, 3)).astype("float32")
    np.testing.assert_allclose(
        same.predict(image, verbose=0)["main"], old.predict(image, verbose=0)["main"], atol=1e-5
    )


def test_reloaded_model(tmp_path):
    old = _randomized(kseg.models.UNet(4, depth=2, base_filters=4))
    path = str(tmp_path / "unet.keras")
    old.save(path)
    import keras

    reloaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    new = kseg.models.with_num_classes(reloaded, 2)
    _check_copied(old, new, {"classifier"})


def test_refusals():
    import keras

    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 1)])
    with pytest.raises(ValueError, match="kseg.models"):
        kseg.models.with_num_classes(plain, 3)
    model = kseg.models.UNet(4, depth=2, base_filters=4)
    with pytest.raises(ValueError, match="num_classes"):
        kseg.models.with_num_classes(model, 0)
    with pytest.raises(ValueError, match="line up|layers"):
        kseg.models.with_num_classes(model, 2, depth=3)

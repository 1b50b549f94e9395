import keras
import numpy as np
import pytest

import kseg
from tests.helpers import run_model_test
from tests.models.conftest import tiny_resnet


def _tiny(num_classes, **kwargs):
    return kseg.models.GINet(
        num_classes=num_classes,
        backbone=tiny_resnet(8),
        jpu_width=8,
        filters=16,
        num_state=8,
        num_node=6,
        **kwargs,
    )


def test_ginet_outputs_logits_and_class_presence():
    model = _tiny(5, class_embeddings="learned")
    out = run_model_test(model, (2, 37, 45, 3), 5)
    assert out["presence"].shape == (2, 5)
    assert out["presence"].dtype == np.float32


def test_ginet_trains_with_the_semantic_context_loss():
    model = _tiny(3, class_embeddings="learned", use_jpu=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    y = np.zeros((2, 33, 33), "int32")
    y[0, :10] = 2
    y[1] = 255  # an all-ignored image: no class present
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss={
            "main": kseg.losses.SegmentationCrossEntropy(),
            "presence": kseg.losses.SemanticContextLoss(3),
        },
        loss_weights={"main": 1.0, "presence": 0.2},
    )
    history = model.fit(x, {"main": y, "presence": y}, epochs=2, batch_size=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_shipped_embeddings():
    voc = kseg.models.shipped_class_embeddings("voc")
    names = kseg.models.class_embedding_names("voc")
    assert voc.shape == (21, 384) and len(names) == 21 and names[0] == "background"
    np.testing.assert_allclose(np.linalg.norm(voc, axis=1), 1.0, rtol=1e-5)
    # Related classes are closer than unrelated ones.
    sim = voc @ voc.T
    cat, dog, car = names.index("cat"), names.index("dog"), names.index("car")
    assert sim[cat, dog] > sim[cat, car]
    assert kseg.models.shipped_class_embeddings("cityscapes").shape == (19, 384)


def test_auto_embeddings_pick_the_dataset_by_class_count():
    model = _tiny(21, use_jpu=False)
    table = model.get_layer("gi_unit").get_weights()
    voc = kseg.models.shipped_class_embeddings("voc")
    assert any(w.shape == voc.shape and np.allclose(w, voc) for w in table)


def test_embedding_errors():
    with pytest.raises(ValueError, match="num_classes=19"):
        _tiny(19, class_embeddings="voc")
    with pytest.raises(ValueError, match="dataset"):
        kseg.models.shipped_class_embeddings("ade20k")

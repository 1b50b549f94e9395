import keras
import numpy as np
import pytest

import kseg
from tests.helpers import compile_for_fit, run_model_test, to_numpy
from tests.models.conftest import tiny_resnet


def _tiny(num_classes, **kwargs):
    return kseg.models.GINet(
        num_classes=num_classes,
        backbone=tiny_resnet(8),
        jpu_width=8,
        reduce_filters=16,
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
    compile_for_fit(
        model,
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


def _embedding_table(model):
    unit = model.get_layer("gi_unit")
    (table,) = [w for w in unit.weights if w.path.endswith("class_embeddings")]
    return to_numpy(table)


def test_class_count_does_not_choose_the_embeddings():
    # 21 classes are not necessarily PASCAL VOC: without a dataset name the
    # table is the reference's zeros, whatever the class count.
    for k in (21, 19):
        table = _embedding_table(_tiny(k, use_jpu=False))
        assert table.shape == (k, 300)
        np.testing.assert_array_equal(table, 0.0)


@pytest.mark.parametrize("dataset, k", [("voc", 21), ("cityscapes", 19)])
def test_dataset_name_takes_the_shipped_embeddings(dataset, k):
    table = _embedding_table(_tiny(k, use_jpu=False, class_embeddings=dataset))
    np.testing.assert_array_equal(table, kseg.models.shipped_class_embeddings(dataset))


def test_array_embeddings_are_used_as_given():
    values = np.random.default_rng(0).standard_normal((4, 7)).astype("float32")
    table = _embedding_table(_tiny(4, use_jpu=False, class_embeddings=values))
    np.testing.assert_array_equal(table, values)


def test_shipped_embeddings_follow_the_dataset_label_order():
    from kseg.data.palette import CITYSCAPES_CLASSES, VOC_CLASSES

    assert kseg.models.class_embedding_names("voc") == tuple(VOC_CLASSES)
    assert kseg.models.class_embedding_names("cityscapes") == tuple(CITYSCAPES_CLASSES)


@pytest.mark.parametrize(
    "num_classes, value, error, message",
    [
        (19, "voc", ValueError, r"'voc' have 21 classes.*Received: num_classes=19"),
        (21, "cityscapes", ValueError, r"'cityscapes' have 19 classes.*num_classes=21"),
        (4, np.zeros((5, 7), "float32"), ValueError, r"5 rows.*Received: num_classes=4"),
        (21, "auto", ValueError, r"dataset name.*Received: class_embeddings='auto'"),
        (21, "ade20k", ValueError, r"Received: class_embeddings='ade20k'"),
        (3, 7, TypeError, r"Received: class_embeddings=7"),
    ],
)
def test_embedding_errors(num_classes, value, error, message):
    with pytest.raises(error, match=message):
        _tiny(num_classes, use_jpu=False, class_embeddings=value)


def test_shipped_embeddings_error():
    with pytest.raises(ValueError, match="dataset"):
        kseg.models.shipped_class_embeddings("ade20k")

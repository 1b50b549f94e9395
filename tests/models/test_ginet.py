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


def test_ginet_outputs_logits_and_class_nodes():
    model = _tiny(5, class_embeddings="learned")
    out = run_model_test(model, (2, 37, 45, 3), 5)
    assert out["class_nodes"].shape == (2, 5, 8)
    assert out["class_nodes"].dtype == np.float32


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

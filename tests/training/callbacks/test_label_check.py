"""LabelCheck (kseg.training.callbacks.label_check)."""

import keras
import numpy as np
import pytest

import kseg
from kseg.training import (
    LabelCheck,
    segmentation_callbacks,
)
from tests.helpers import compile_for_fit
from tests.training.callbacks.fitting import NUM_CLASSES
from tests.training.callbacks.fitting import _image_data as _data
from tests.training.callbacks.fitting import _image_model as _model


class StubMetric:
    def per_class_iou(self):
        return np.array([0.5, np.nan, 0.25])


class _BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.train_batches = 0
        self.test_batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.train_batches += 1

    def on_test_batch_end(self, batch, logs=None):
        self.test_batches += 1


def _seg_compile(model, metrics):
    compile_for_fit(
        model,
        optimizer=keras.optimizers.SGD(0.1),
        loss=kseg.losses.SegmentationCrossEntropy(),
        metrics=metrics,
    )


def test_label_check_stops_fit_at_the_first_bad_batch():
    images, masks = _data(n=6)
    masks[3, 0, :5] = NUM_CLASSES + 4  # second batch of two: 5 pixels labelled 7
    model = _model()
    _seg_compile(model, [kseg.metrics.MeanIoU(NUM_CLASSES), "accuracy"])
    counter = _BatchCounter()
    with pytest.raises(ValueError, match=r"'mean_iou' counted 5 pixel\(s\).*largest 7"):
        model.fit(
            images,
            masks,
            batch_size=2,
            epochs=1,
            shuffle=False,
            callbacks=[LabelCheck(), counter],
            verbose=0,
        )
    assert counter.train_batches == 1  # stopped at batch 2, before later callbacks saw it
    # Clean labels train to the end.
    images, masks = _data(n=6)
    model = _model()
    _seg_compile(model, [kseg.metrics.MeanIoU(NUM_CLASSES)])
    history = model.fit(
        images, masks, batch_size=2, epochs=2, callbacks=[LabelCheck()], verbose=0,
        validation_data=(images, masks),
    )  # fmt: skip
    assert len(history.history["val_mean_iou"]) == 2


def test_label_check_in_validation_and_evaluate():
    images, masks = _data(n=4)
    bad = masks.copy()
    bad[-1, -1, -1] = -2
    model = _model()
    _seg_compile(model, [kseg.metrics.PixelAccuracy(NUM_CLASSES)])
    counter = _BatchCounter()
    with pytest.raises(ValueError, match=r"'pixel_accuracy' counted 1 pixel.*largest -2"):
        model.fit(
            images, masks, batch_size=2, epochs=1, validation_data=(images, bad),
            callbacks=[LabelCheck(), counter], verbose=0,
        )  # fmt: skip
    assert counter.train_batches == 2 and counter.test_batches == 1
    with pytest.raises(ValueError, match="counted 1 pixel"):
        model.evaluate(images, bad, batch_size=2, callbacks=[LabelCheck()], verbose=0)
    model.evaluate(images, masks, batch_size=2, callbacks=[LabelCheck()], verbose=0)


def test_label_check_finds_metrics_per_output():
    images, masks = _data(n=2)
    inputs = keras.Input((None, None, 3))
    main = keras.layers.Conv2D(NUM_CLASSES, 1, name="main")(inputs)
    aux = keras.layers.Conv2D(NUM_CLASSES, 1, name="aux")(inputs)
    model = keras.Model(inputs, {"main": main, "aux": aux})
    main_miou, aux_miou = kseg.metrics.MeanIoU(NUM_CLASSES), kseg.metrics.MeanIoU(NUM_CLASSES)
    compile_for_fit(
        model,
        optimizer="sgd",
        loss={"main": kseg.losses.SegmentationCrossEntropy(), "aux": None},
        metrics={"main": [main_miou, "accuracy"], "aux": [aux_miou]},
    )
    check = LabelCheck()
    check.set_model(model)
    bad = masks.copy()
    bad[0, 0, 0] = 30
    with pytest.raises(ValueError, match="largest 30"):
        model.fit(images, {"main": bad, "aux": masks}, batch_size=2, callbacks=[check], verbose=0)
    found = check.checked_metrics()
    assert len(found) == 2
    assert any(m is main_miou for m in found) and any(m is aux_miou for m in found)


def test_label_check_arguments_and_standard_set(tmp_path):
    metric = kseg.metrics.MeanIoU(NUM_CLASSES)
    assert LabelCheck(metric).checked_metrics() == [metric]
    with pytest.raises(TypeError, match="check_labels"):
        LabelCheck([StubMetric()])
    callbacks = segmentation_callbacks(str(tmp_path))
    assert sum(isinstance(c, LabelCheck) for c in callbacks) == 1
    callbacks = segmentation_callbacks(str(tmp_path), label_check=False)
    assert not any(isinstance(c, LabelCheck) for c in callbacks)
    # With train_batches=False, training batches go on; the epoch end checks.
    images, masks = _data(n=4)
    masks[0, 0, 0] = 9
    model = _model()
    _seg_compile(model, [metric])
    counter = _BatchCounter()
    with pytest.raises(ValueError, match="largest 9"):
        model.fit(
            images, masks, batch_size=2, verbose=0,
            callbacks=[LabelCheck(train_batches=False), counter],
        )  # fmt: skip
    assert counter.train_batches == 2

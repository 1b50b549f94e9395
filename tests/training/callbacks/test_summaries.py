"""TensorBoard summaries: sample images, per-class IoU, learning rate (kseg.training.callbacks.summaries)."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kseg
from kseg.data.palette import colorize
from kseg.training import (
    LearningRateLogger,
    PerClassIoULogger,
    PolyDecay,
    SegmentationImageLogger,
    segmentation_callbacks,
    take_samples,
)
from tests.helpers import compile_for_fit
from tests.training.callbacks.fitting import NUM_CLASSES
from tests.training.callbacks.fitting import _image_data as _data
from tests.training.callbacks.fitting import _image_model as _model


class StubMetric:
    def per_class_iou(self):
        return np.array([0.5, np.nan, 0.25])


def _compile(model, metrics=(), lr=0.1):
    compile_for_fit(
        model,
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
    )


def _events(directory):
    """{tag: [(step, value or image size)]} read back from every event file of a run folder."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
                found.setdefault(value.tag, []).append((event.step, tensor, value))
    return found


def test_writes_expected_tags(tmp_path):
    log_dir = str(tmp_path / "logs")
    images, masks = _data()
    metric = kseg.metrics.MeanIoU(NUM_CLASSES)
    model = _model()
    schedule = PolyDecay(0.1, decay_steps=8, warmup_steps=2)
    compile_for_fit(
        model,
        optimizer=keras.optimizers.SGD(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[metric],
    )
    callbacks = segmentation_callbacks(
        log_dir,
        samples=(images[:2], masks[:2]),
        metric=metric,
        class_names=["bg", "red", "yellow"],
        checkpoint_path=str(tmp_path / "best.keras"),
        lr_update_freq=1,
    )
    model.fit(
        images,
        masks,
        batch_size=2,
        epochs=2,
        validation_data=(images, masks),
        callbacks=callbacks,
        verbose=0,
    )
    train = _events(os.path.join(log_dir, "train"))
    val = _events(os.path.join(log_dir, "validation"))
    assert "epoch_loss" in train  # Keras' own TensorBoard writes to the same runs
    assert "epoch_mean_iou" in val

    # Learning rate at every optimizer step 1..4, equal to the schedule.
    lr = train["learning_rate"]
    assert [s for s, _, _ in lr] == [1, 2, 3, 4]
    expected = [0.1 * (1 - s / 8) ** 0.9 * (0.1 + 0.9 * min(s / 2, 1)) for s in (1, 2, 3, 4)]
    np.testing.assert_allclose([float(t) for _, t, _ in lr], expected, rtol=1e-5)

    # Per-class IoU equals a NumPy confusion matrix of the final model on the validation data.
    for name in ("bg", "red", "yellow"):
        assert [s for s, _, _ in val[f"per_class_iou/{name}"]] == [0, 1]
    pred = np.argmax(keras.ops.convert_to_numpy(model.predict(images, verbose=0)), -1)
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES))
    np.add.at(cm, (masks.ravel(), pred.ravel()), 1)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    for k, name in enumerate(("bg", "red", "yellow")):
        if np.isfinite(iou[k]):
            np.testing.assert_allclose(
                float(val[f"per_class_iou/{name}"][-1][1]), iou[k], atol=1e-5
            )

    # One image per sample and epoch: input | ground truth | prediction.
    samples = val["samples"]
    assert [s for s, _, _ in samples] == [0, 1]
    encoded = samples[-1][1]  # [width, height, png_1, png_2]
    assert encoded[:2].tolist() == [b"24", b"8"] and len(encoded) == 4
    panel = tf.io.decode_png(encoded[2]).numpy()
    np.testing.assert_array_equal(panel[:, :8], np.round(images[0]).astype(np.uint8))
    np.testing.assert_array_equal(panel[:, 8:16], colorize(masks[0]))
    np.testing.assert_array_equal(panel[:, 16:], colorize(pred[0]))

    assert os.path.isfile(tmp_path / "best.keras")


def test_per_class_iou_with_stub_and_without_validation(tmp_path):
    log_dir = str(tmp_path)
    images, masks = _data()
    model = _model()
    _compile(model)
    logger = PerClassIoULogger(StubMetric(), log_dir, ["a", "b", "c"], add_to_logs=True)
    history = model.fit(images, masks, batch_size=4, epochs=1, callbacks=[logger], verbose=0)
    train = _events(os.path.join(log_dir, "train"))
    assert float(train["per_class_iou/a"][0][1]) == 0.5
    assert float(train["per_class_iou/c"][0][1]) == 0.25
    assert "per_class_iou/b" not in train  # NaN: the class never occurred
    assert history.history["iou_a"] == [0.5]
    assert logger.last_values["c"] == 0.25


def test_image_logger_with_dict_model(tmp_path):
    images, masks = _data(n=3)
    inputs = keras.Input((None, None, 3))
    main = keras.layers.Conv2D(NUM_CLASSES, 1, name="main")(inputs)
    aux = keras.layers.Conv2D(NUM_CLASSES, 1, name="aux")(inputs)
    model = keras.Model(inputs, {"main": main, "aux": aux})
    logger = SegmentationImageLogger(str(tmp_path), images, masks[..., None], every_n_epochs=2)
    logger.set_model(model)
    panels = logger.panels()
    expected = np.argmax(keras.ops.convert_to_numpy(model.predict(images, verbose=0)["main"]), -1)
    np.testing.assert_array_equal(panels[:, :, 16:], colorize(expected))
    logger.on_epoch_end(0)  # skipped: every second epoch
    logger.on_epoch_end(1)
    logger.on_train_end()
    assert [s for s, _, _ in _events(os.path.join(str(tmp_path), "validation"))["samples"]] == [1]


def test_take_samples():
    images, masks = _data(n=5)
    batched = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    got_images, got_masks = take_samples(batched, 3)
    np.testing.assert_array_equal(got_images, images[:3])
    np.testing.assert_array_equal(got_masks, masks[:3])
    got_images, _ = take_samples(tf.data.Dataset.from_tensor_slices((images, masks)), 9)
    assert len(got_images) == 5


def test_epoch_learning_rate(tmp_path):
    images, masks = _data()
    model = _model()
    compile_for_fit(
        model,
        optimizer=keras.optimizers.SGD(PolyDecay(0.1, decay_steps=10)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        images,
        masks,
        batch_size=2,
        epochs=2,
        callbacks=[LearningRateLogger(str(tmp_path))],
        verbose=0,
    )
    lr = _events(os.path.join(str(tmp_path), "train"))["learning_rate"]
    assert [s for s, _, _ in lr] == [0, 1]
    np.testing.assert_allclose(
        [float(t) for _, t, _ in lr], [0.1 * 0.8**0.9, 0.1 * 0.6**0.9], rtol=1e-5
    )


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="per_class_iou"):
        PerClassIoULogger(object(), str(tmp_path))
    with pytest.raises(ValueError, match="Received: update_freq=0"):
        LearningRateLogger(str(tmp_path), update_freq=0)
    with pytest.raises(ValueError, match=r"masks.shape=\(2, 4, 4\)"):
        SegmentationImageLogger(str(tmp_path), np.zeros((2, 5, 5, 3)), np.zeros((2, 4, 4)))

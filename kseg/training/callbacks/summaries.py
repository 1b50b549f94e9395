"""TensorBoard summaries beside Keras' own: sample predictions, per-class IoU, learning rate.

The scalars and images are written with `tf.summary` into the run folders of
`keras.callbacks.TensorBoard` (`<log_dir>/train` and `<log_dir>/validation`),
so one `tensorboard --logdir <log_dir>` shows them next to Keras' loss and
metric curves, on every backend.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from kseg.data.palette import colorize, voc_palette
from kseg.inference import predict
from kseg.training import _keras_internals


class _SummaryCallback(keras.callbacks.Callback):
    """Base class: lazily created `tf.summary` writers, one per run sub-folder."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writers = {}

    def _writer(self, subdir):
        if subdir not in self._writers:
            with tf.device("/cpu:0"):
                self._writers[subdir] = tf.summary.create_file_writer(
                    os.path.join(self.log_dir, subdir)
                )
        return self._writers[subdir]

    def _close(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def on_train_end(self, logs=None):
        self._close()

    def __del__(self):
        try:
            self._close()
        except Exception:  # the interpreter may be shutting down
            pass


def take_samples(dataset, count):
    """Takes the first `count` samples of a dataset as NumPy `(images, masks)`.

    Args:
        dataset: a batched or unbatched `tf.data.Dataset` (or any iterable)
            of `(image(s), mask(s))`.
        count: number of samples.

    Returns:
        images float32 `(count, H, W, 3)` and masks int32 `(count, H, W)`
        (fewer when the dataset is shorter). Samples must share a size.
    """
    images, masks = [], []
    for element in dataset:
        image, mask = np.asarray(element[0]), np.asarray(element[1])
        if image.ndim == 3:
            image, mask = image[None], mask[None]
        if mask.ndim == 4:
            mask = mask[..., 0]
        images.extend(image)
        masks.extend(mask)
        if len(images) >= count:
            break
    if not images:
        raise ValueError("Expected a dataset with at least one sample. Received: an empty dataset")
    return np.stack(images[:count]).astype(np.float32), np.stack(masks[:count]).astype(np.int32)


class SegmentationImageLogger(_SummaryCallback):
    """Writes `input | ground truth | prediction` images of fixed samples to TensorBoard.

    At the end of every `every_n_epochs`-th epoch the model predicts the
    given samples (whole images, `kseg.inference.predict`); each sample is
    written as one image, the input next to its ground truth and its
    prediction coloured with the VOC palette (ignore pixels in the boundary
    cream colour), under the tag `tag` in `<log_dir>/<subdir>`, at
    step = epoch.

    Args:
        log_dir: the TensorBoard log folder (the one given to
            `keras.callbacks.TensorBoard`).
        images: float `(N, H, W, 3)` RGB in [0, 255], channels_last.
        masks: integer `(N, H, W)` or `(N, H, W, 1)` ground truth.
        every_n_epochs: write every this many epochs. Defaults to 1.
        tag: image tag. Defaults to "samples".
        subdir: run sub-folder. Defaults to "validation".
        palette: `(256, 3)` uint8 palette. Defaults to the VOC palette.
        output_key: key of the logits when the model returns a dict.
            Defaults to "main".
        data_format: the model's layout; see `kseg.inference`.

    Example:

    >>> images, masks = take_samples(val_ds, 4)
    >>> model.fit(..., callbacks=[SegmentationImageLogger(log_dir, images, masks)])
    """

    def __init__(
        self,
        log_dir,
        images,
        masks,
        *,
        every_n_epochs=1,
        tag="samples",
        subdir="validation",
        palette=None,
        output_key="main",
        data_format=None,
    ):
        super().__init__(log_dir)
        images = np.asarray(images, np.float32)
        masks = np.asarray(masks)
        if masks.ndim == 4:
            masks = masks[..., 0]
        if images.ndim != 4 or images.shape[-1] != 3 or masks.shape != images.shape[:3]:
            raise ValueError(
                "Expected `images` of shape (N, H, W, 3) and `masks` of shape (N, H, W). "
                f"Received: images.shape={images.shape}, masks.shape={masks.shape}"
            )
        if every_n_epochs < 1:
            raise ValueError(
                f"Expected `every_n_epochs` >= 1. Received: every_n_epochs={every_n_epochs}"
            )
        self.images = images
        self.masks = masks.astype(np.int32)
        self.every_n_epochs = int(every_n_epochs)
        self.tag = tag
        self.subdir = subdir
        self.palette = voc_palette() if palette is None else np.asarray(palette, np.uint8)
        self.output_key = output_key
        self.data_format = data_format

    def panels(self):
        """The `(N, H, 3 W, 3)` uint8 images `input | ground truth | prediction`."""
        pred = predict(
            self.model, self.images, output_key=self.output_key, data_format=self.data_format
        )
        rgb = np.clip(np.round(self.images), 0, 255).astype(np.uint8)
        truth = colorize(self.masks, self.palette)
        guess = colorize(np.clip(pred, 0, len(self.palette) - 1), self.palette)
        return np.concatenate([rgb, truth, guess], axis=2)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        panels = self.panels()
        with tf.device("/cpu:0"), self._writer(self.subdir).as_default():
            tf.summary.image(
                self.tag,
                panels,
                step=epoch,
                max_outputs=len(panels),
                description="input | ground truth | prediction",
            )
        self._writer(self.subdir).flush()


class PerClassIoULogger(_SummaryCallback):
    """Writes the IoU of every class as TensorBoard scalars at the end of each epoch.

    Reads `metric.per_class_iou()`, a `(K,)` array, from the metric object
    passed to `compile` (e.g. `kseg.metrics.MeanIoU`); any object with that
    method works. At the end of an epoch with validation the metric holds the
    validation state, so the scalars go to `<log_dir>/validation`; without
    validation data they describe the training epoch and go to
    `<log_dir>/train`. Tags are `<tag_prefix><class name>`; classes that
    never occurred (NaN IoU) are skipped.

    Args:
        metric: object with a `per_class_iou()` method.
        log_dir: the TensorBoard log folder.
        class_names: K names. Defaults to "class_0", "class_1", ...
        tag_prefix: defaults to "per_class_iou/".
        add_to_logs: also put the values into the epoch `logs` as
            `val_iou_<name>` (or `iou_<name>`), for `CSVLogger` or
            `keras.callbacks.TensorBoard` placed after this callback.
            Defaults to False.
    """

    def __init__(
        self, metric, log_dir, class_names=None, *, tag_prefix="per_class_iou/", add_to_logs=False
    ):
        super().__init__(log_dir)
        if not callable(getattr(metric, "per_class_iou", None)):
            raise TypeError(
                "Expected `metric` to have a `per_class_iou()` method (e.g. "
                f"kseg.metrics.MeanIoU). Received: metric={metric!r}"
            )
        self.metric = metric
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.tag_prefix = tag_prefix
        self.add_to_logs = add_to_logs
        self.last_values = None

    def on_epoch_end(self, epoch, logs=None):
        values = np.asarray(keras.ops.convert_to_numpy(self.metric.per_class_iou()), np.float64)
        values = values.reshape(-1)
        names = self.class_names or [f"class_{i}" for i in range(len(values))]
        if len(names) != len(values):
            raise ValueError(
                f"Expected {len(values)} class names for the metric's {len(values)} classes. "
                f"Received: {len(names)} class_names"
            )
        validation = logs is not None and any(k.startswith("val_") for k in logs)
        self.last_values = dict(zip(names, values.tolist()))
        with (
            tf.device("/cpu:0"),
            self._writer("validation" if validation else "train").as_default(),
        ):
            for name, value in zip(names, values):
                if np.isfinite(value):
                    tf.summary.scalar(self.tag_prefix + name, float(value), step=epoch)
        self._writer("validation" if validation else "train").flush()
        if self.add_to_logs and logs is not None:
            prefix = "val_iou_" if validation else "iou_"
            for name, value in zip(names, values):
                logs[prefix + name] = float(value)


class LearningRateLogger(_SummaryCallback):
    """Writes the optimizer's learning rate to TensorBoard (`<log_dir>/train`).

    Args:
        log_dir: the TensorBoard log folder.
        update_freq: "epoch" writes the rate at the end of every epoch (step =
            epoch); an integer `n` writes it every `n` training batches (step =
            the optimizer step), which shows a schedule's warm-up.
        tag: defaults to "learning_rate".
    """

    def __init__(self, log_dir, *, update_freq="epoch", tag="learning_rate"):
        super().__init__(log_dir)
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1
        ):
            raise ValueError(
                "Expected `update_freq` to be 'epoch' or a positive integer. "
                f"Received: update_freq={update_freq!r}"
            )
        self.update_freq = update_freq
        self.tag = tag
        self._step = 0

    def _rate_at(self, step):
        optimizer = self.model.optimizer
        # The schedule object itself: `optimizer.learning_rate` evaluates it at
        # `optimizer.iterations`, which is stale inside a JAX epoch.
        lr = _keras_internals.learning_rate(optimizer)
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            lr = lr(step)
        elif callable(lr):
            lr = lr()
        return float(keras.ops.convert_to_numpy(lr))

    def _write(self, value, step):
        with tf.device("/cpu:0"), self._writer("train").as_default():
            tf.summary.scalar(self.tag, value, step=step)

    def on_train_begin(self, logs=None):
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        # Counted here rather than read from `optimizer.iterations`, which the
        # JAX trainer updates only at the end of an epoch.
        self._step += 1
        if self.update_freq != "epoch" and self._step % self.update_freq == 0:
            self._write(self._rate_at(self._step), self._step)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._write(self._rate_at(self._step), epoch)
        self._writer("train").flush()

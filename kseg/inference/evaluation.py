"""Evaluation: metrics updated with the test-time predictions of every batch of a dataset."""

import keras
import numpy as np

from kseg._common import standardize_data_format
from kseg.inference._common import _classes, _to_numpy
from kseg.inference.tta import _average_probabilities
from kseg.postprocess import dense_crf


def evaluate(
    model, dataset, metrics, *, steps=None, reset=True, verbose=0, crf=None, **predict_kwargs
):
    """Evaluates a model with `predict_probabilities` and returns the metric results.

    Runs `predict_probabilities(model, images, **predict_kwargs)` on every
    batch and calls `metric.update_state(masks, probabilities)` for each
    metric (kseg's metrics take `(B, H, W)` labels with 255 ignored and
    `(B, H, W, K)` scores; with `data_format="channels_first"` the scores are
    passed as `(B, K, H, W)`, the layout kseg's metrics then expect). Feed full-size images with
    `kseg.data.eval_pipeline(ds, batch_size=1)` and pass `crop_size` for
    sliding-window inference, so that no pixel is resized or dropped.

    A binary model (one output channel) is scored on its 0/1 class map: the
    metrics get `metric.update_state(masks, classes)` with the int32 `(B, H, W)`
    map of `predict`, so 2-class metrics that take label maps, such as
    `kseg.metrics.MeanIoU(2)`, score background and foreground.

    With `crf`, the averaged probabilities of each image (after the scales and
    flips) are refined by DeepLab's fully connected CRF,
    `kseg.postprocess.dense_crf(image, probabilities, **options)`, before the
    metrics take them (and their argmax): the images must then be RGB in [0, 255].
    A binary model's foreground probability p goes in as the two classes
    `[1 - p, p]`.

    Args:
        model: see `predict_probabilities`.
        dataset: an iterable of `(images, masks)` batches (a `tf.data.Dataset`
            or a list of NumPy pairs); extra elements are ignored.
        metrics: a metric object or a list of them.
        steps: stop after this many batches. Defaults to the whole dataset.
        reset: reset the metrics first. Defaults to True.
        verbose: 1 shows a progress bar. Defaults to 0.
        crf: None or False (default): no CRF. True: `dense_crf` with its
            defaults (DeepLab's VOC values). A dict: those keyword arguments
            of `dense_crf`, e.g. `{"bilateral_xy_std": 67, "gaussian_xy_std": 1}`.
        **predict_kwargs: `crop_size`, `stride`, `scales`, `flip`,
            `size_buckets`, ... for `predict_probabilities`.

    Returns:
        A dict `{metric.name: result}`, results as floats (or NumPy arrays
        for vector-valued metrics). The metric objects keep their state, so
        e.g. `per_class_iou()` can be read afterwards.

    Raises:
        ValueError: from `metric.check_labels()` after a batch, when a kseg metric
            saw labels that are neither classes nor the ignore index.

    Example:

    >>> miou = kseg.metrics.MeanIoU(21)
    >>> kseg.inference.evaluate(model, val_ds, [miou], crop_size=513, flip=True)
    {'mean_iou': 0.78...}
    """
    if not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    crf_options = _crf_options(crf)
    channels_first = standardize_data_format(predict_kwargs.get("data_format")) == "channels_first"
    if reset:
        for metric in metrics:
            metric.reset_state()
    progbar = keras.utils.Progbar(steps) if verbose else None
    for step, batch in enumerate(dataset):
        if steps is not None and step >= steps:
            break
        images, masks = _to_numpy(batch[0]), _to_numpy(batch[1])
        if images.ndim != 4:
            raise ValueError(
                "Expected `dataset` to yield batches of images (B, H, W, C). "
                f"Received: images.shape={images.shape}"
            )
        probs, _ = _average_probabilities(model, images, **predict_kwargs)
        if crf_options is not None:
            probs = _refine(images, probs, crf_options)
        if probs.shape[-1] == 1:
            probs = _classes(probs)
        else:
            probs = probs.astype(np.float32)
            if channels_first:
                probs = np.transpose(probs, (0, 3, 1, 2))
        for metric in metrics:
            metric.update_state(masks, probs)
            if callable(getattr(metric, "check_labels", None)):
                metric.check_labels()  # labels that are not classes: ValueError
        if progbar is not None:
            progbar.update(step + 1)
    results = {}
    for metric in metrics:
        value = _to_numpy(metric.result())
        results[metric.name] = float(value) if value.ndim == 0 else value
    return results


def _crf_options(crf):
    """The keyword arguments of `dense_crf` that `crf` asks for, or None."""
    if crf is None or crf is False:
        return None
    if crf is True:
        return {}
    if isinstance(crf, dict):
        return dict(crf)
    raise TypeError(
        "Expected `crf` to be a bool or a dict of `kseg.postprocess.dense_crf` arguments. "
        f"Received: crf={crf!r}"
    )


def _refine(images, probs, options):
    """`dense_crf` of each image's probabilities (a binary model's p as `[1 - p, p]`)."""
    binary = probs.shape[-1] == 1
    if binary:
        probs = np.concatenate([1.0 - probs, probs], axis=-1)
    refined = np.stack(
        [_to_numpy(dense_crf(image, p, **options)) for image, p in zip(images, probs)]
    )
    return refined[..., 1:] if binary else refined

"""`LabelCheck`: stop `fit` / `evaluate` at the first batch whose labels are not classes."""

import keras


def _label_checked_metrics(objects, found):
    """Appends every object with `check_labels()` in `objects`, looking inside wrappers.

    Keras wraps the metrics passed to `compile` in `CompileMetrics` and, for several or
    dict outputs, per-output `MetricsList`s; both expose their content as `.metrics`.
    """
    for obj in objects:
        if callable(getattr(obj, "check_labels", None)):
            if not any(obj is seen for seen in found):
                found.append(obj)
            continue
        inner = getattr(obj, "metrics", None)
        if isinstance(inner, (list, tuple)):
            _label_checked_metrics(inner, found)
    return found


class LabelCheck(keras.callbacks.Callback):
    """Stops `fit` / `evaluate` with an error when a metric saw labels that are not classes.

    kseg's confusion-matrix metrics (`kseg.metrics.MeanIoU`, ...) leave out of the
    matrix every pixel whose label is neither a class nor the ignore index, and count
    them (`out_of_range_count()`). This callback calls each metric's `check_labels()`
    at the end of every training batch and every evaluation batch (`evaluate`, and
    the validation of `fit`), which raises `ValueError` naming the metric, the number
    of such pixels and one offending label, so the run stops at the first bad batch
    instead of reporting plausible wrong figures (e.g. Cityscapes labelIds 0-33 fed to
    a 19-class model).

    The check reads a few integers per batch (on JAX it first syncs the trainer's
    state into the variables, as Keras' own callbacks do when they read the model).

    Args:
        metrics: metric objects with a `check_labels()` method, or None (default) to
            use every such metric that the model was compiled with (found inside Keras'
            compile wrappers, per output for dict outputs).
        train_batches: also check after every training batch. Defaults to True;
            with False only evaluation batches (and the end of each epoch) are checked.
    """

    def __init__(self, metrics=None, *, train_batches=True):
        super().__init__()
        if metrics is not None:
            metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
            for metric in metrics:
                if not callable(getattr(metric, "check_labels", None)):
                    raise TypeError(
                        "Expected `metrics` to hold objects with a `check_labels()` method "
                        f"(e.g. kseg.metrics.MeanIoU). Received: metrics={metric!r}"
                    )
        self.metrics = metrics
        self.train_batches = bool(train_batches)

    def checked_metrics(self):
        """The metrics this callback checks (found in the model when not given)."""
        if self.metrics is not None:
            return self.metrics
        model = getattr(self, "model", None)
        return [] if model is None else _label_checked_metrics(model.metrics, [])

    def _check(self):
        metrics = self.checked_metrics()
        if not metrics:
            return
        sync = getattr(self.model, "jax_state_sync", None)
        if callable(sync):
            sync()
        for metric in metrics:
            metric.check_labels()

    def on_train_batch_end(self, batch, logs=None):
        if self.train_batches:
            self._check()

    def on_test_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()

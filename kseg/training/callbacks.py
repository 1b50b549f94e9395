"""Training callbacks: TensorBoard images, per-class IoU and learning-rate scalars, checkpoints,
resumable backups, label checks.

The scalars and images are written with `tf.summary` into the run folders of
`keras.callbacks.TensorBoard` (`<log_dir>/train` and `<log_dir>/validation`),
so one `tensorboard --logdir <log_dir>` shows them next to Keras' loss and
metric curves, on every backend.

Resuming after an interruption: `BackupAndRestore` is Keras' callback of that
name (it saves the model and optimizer state, so the step count of a schedule
such as `PolyDecay` too) with two changes. It resumes a backup saved in the
middle of an epoch at that step, so that the finished run has done exactly
`epochs * steps_per_epoch` optimizer steps (Keras 3.15's callback restarts the
interrupted epoch from its first batch, with the optimizer's step count already
advanced, and so trains that epoch's saved steps twice); and it writes every
file atomically (`save_atomically`), so that a kill during a save leaves the
previous backup usable. `BestCheckpoint` keeps the best model and its score the
same way, so that the best score so far survives a resume. kseg's tests check
both on the TensorFlow, JAX and PyTorch backends.
"""

import errno
import gc
import glob
import json
import math
import os
import secrets
import shutil
import sys
import warnings

import keras
import numpy as np
import tensorflow as tf

from kseg.data.palette import colorize, voc_palette
from kseg.inference import predict
from kseg.training.divergence import (
    DivergenceCheck,
    DivergenceError,
    check_finite_state,
    count_nonfinite,
)


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
        lr = getattr(optimizer, "_learning_rate", None)
        if lr is None:
            lr = optimizer.learning_rate
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


#: Endings kept at the end of a temporary name: Keras chooses the format of a save by them.
_SUFFIXES = (".weights.h5", ".weights.json", ".keras", ".h5", ".json")


def _split_suffix(name):
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    stem, suffix = os.path.splitext(name)
    return stem, suffix


def _temporary_path(path, tag="*"):
    """`<folder>/.<stem>.tmp-<tag><suffix>`: same folder (so `os.replace` is a rename), same ending."""
    folder, name = os.path.split(path)
    stem, suffix = _split_suffix(name)
    return os.path.join(folder, f".{stem}.tmp-{tag}{suffix}")


def _fsync(path):
    """Flushes a file (or a folder's entries) to the disk; a no-op where the OS refuses."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:  # a folder on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path):
    """Deletes the temporary files that `save_atomically(path, ...)` calls killed mid-save left.

    Args:
        path: the target path given to `save_atomically`.

    Returns:
        The paths removed.
    """
    removed = []
    for stale in glob.glob(_temporary_path(os.fspath(path))):
        if os.path.isfile(stale):
            os.remove(stale)
            removed.append(stale)
    return removed


def save_atomically(path, save, size=None):
    """Writes a file through a temporary name in its folder, then moves it into place.

    `save(temporary_path)` writes the file (e.g. `model.save`, `model.save_weights`
    or a JSON dump) to `<folder>/.<stem>.tmp-<pid>-<random><suffix>`, which keeps the
    ending (`.keras`, `.weights.h5`, `.json`, ...) that Keras chooses the format
    by; the file is flushed to the disk and renamed to `path` with `os.replace`,
    which replaces the old file in one step (POSIX `rename`). A process killed
    during the save leaves the previous `path` whole and usable; an exception in
    `save` also deletes the temporary file and propagates.

    A full device raises `DiskFullError` (an `OSError` with `errno.ENOSPC` that
    names the file, its folder and whether the previous file is intact), before
    anything is written when `size` says the file cannot fit: h5py, which
    writes Keras' `.weights.h5` and `.keras` files, does not recover from a
    write that fails for space (it crashed the process at exit).

    Args:
        path: the final path (a local file; its folder must exist).
        save: a function of one argument, the temporary path, that writes the file.
        size: the bytes the file will take at least (`saved_size(model)`), checked
            against the device's free space first; None skips the check.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Expected the folder of `path` to exist. Received: path={path!r} (no folder {folder!r})"
        )
    # The process id and a random part: processes on several hosts may share the folder.
    temporary = _temporary_path(path, f"{os.getpid()}-{secrets.token_hex(4)}")
    if size is not None and shutil.disk_usage(folder or ".").free < size:
        raise DiskFullError(path, os.path.isfile(path), size, shutil.disk_usage(folder or ".").free)
    try:
        _save_reporting_disk_full(save, temporary, path)
        if not os.path.isfile(temporary):
            raise RuntimeError(
                f"Expected `save` to write the file it was given. Received: save={save!r}, "
                f"which wrote nothing at {temporary!r}"
            )
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.isfile(temporary):
            os.remove(temporary)
        raise
    _fsync(folder)
    return path


class DiskFullError(OSError):
    """`save_atomically` found no space left on the device; the previous file is intact.

    An `OSError` with `errno.ENOSPC`, whose message names the file, its folder and
    whether an earlier version of it is still there.
    """

    def __init__(self, path, kept, needed=None, free=None):
        folder = os.path.dirname(os.path.abspath(path))
        room = (
            ""
            if needed is None
            else f" (it needs about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free)"
        )
        state = (
            f"the previous {os.path.basename(path)} is intact"
            if kept
            else f"no earlier {os.path.basename(path)} existed"
        )
        super().__init__(
            errno.ENOSPC,
            f"No space left on device: could not write {path}{room} in the folder {folder}; "
            f"nothing was left half-written and {state}. Free space on that device or write "
            "elsewhere.",
        )
        self.path = path


def saved_size(model, optimizer=False):
    """A lower bound on the bytes of `model`'s saved weights (and optimizer state)."""
    variables = list(model.weights)
    if optimizer and getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    data = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    # HDF5 adds a few KiB per dataset and group; a .keras zip stores the same bytes.
    return data + 4096 * (len(variables) + 16)


def _save_reporting_disk_full(save, temporary, path):
    """`save(temporary)`, where a full device ends in one `DiskFullError` and nothing else.

    h5py (Keras' `.weights.h5` and `.keras` writer) that runs out of space keeps
    its file open and flushes it again each time one of its objects is freed,
    failing and printing "Exception ignored" each time; a file still open at
    interpreter exit crashed the process (exit 139). On a full device, the
    temporary file is emptied (its blocks freed, so h5py's last flush finds room),
    h5py's objects are freed now, and their reports of the failure are dropped.
    Other reports made during the save are passed on.
    """
    hook = sys.unraisablehook
    reports = []
    sys.unraisablehook = reports.append
    disk_full = False
    try:
        save(temporary)
    except OSError as error:
        if not _is_disk_full(error):
            raise
        disk_full = True
    finally:
        try:
            if disk_full:
                if os.path.isfile(temporary):
                    os.truncate(temporary, 0)
                gc.collect()
                reports = [r for r in reports if not _is_disk_full(r.exc_value)]
        finally:
            sys.unraisablehook = hook
            for report in reports:
                hook(report)
    if disk_full:
        raise DiskFullError(path, os.path.isfile(path))


def _is_disk_full(error):
    """An error for a full device, also when a library (h5py) drops its errno."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error) or "errno = 28," in str(error)


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model with the best validation score, written atomically, and its score.

    At the end of every epoch whose logs hold `monitor`, the model is saved to
    `filepath` when the value improves on the best so far (`mode="max"`: is
    larger; NaN never improves). The file is written through a temporary name
    and moved into place (`save_atomically`), so a kill during the save leaves
    the previous best model whole.

    With `state_path`, the best value is also written there (JSON
    `{monitor: value}`, atomically, right after the model) and read back at the
    start of `fit` when both files exist, so that a resumed run replaces the
    checkpoint only with a better model than the one it holds. The two files
    are replaced one after the other, model first: only a kill in the
    microseconds between the two renames leaves the state one save behind.

    Args:
        filepath: ".keras" file (or ".weights.h5" with `save_weights_only`).
        monitor: the logged name of the score, "val_" + the metric's `name`.
            Defaults to "val_mean_iou".
        mode: "max" (IoU-like scores) or "min" (losses). Defaults to "max".
        save_weights_only: save only the weights. Defaults to False.
        state_path: JSON file for the best value (survives a resume), or None.
        verbose: 1 prints a line when the checkpoint is replaced (or not).

    Attributes:
        best: the best value so far (-inf / inf before any).
    """

    def __init__(
        self,
        filepath,
        *,
        monitor="val_mean_iou",
        mode="max",
        save_weights_only=False,
        state_path=None,
        verbose=0,
    ):
        super().__init__()
        filepath = os.fspath(filepath)
        endings = (".weights.h5",) if save_weights_only else (".keras",)
        if not filepath.endswith(endings):
            raise ValueError(
                f"Expected `filepath` to end with {endings[0]!r}"
                + (" with save_weights_only=True" if save_weights_only else "")
                + f". Received: filepath={filepath!r}"
            )
        if mode not in ("max", "min"):
            raise ValueError(f"Expected `mode` to be 'max' or 'min'. Received: mode={mode!r}")
        self.filepath = filepath
        self.monitor = monitor
        self.mode = mode
        self.save_weights_only = bool(save_weights_only)
        self.state_path = None if state_path is None else os.fspath(state_path)
        self.verbose = int(verbose)
        self.best = -math.inf if mode == "max" else math.inf

    def _improves(self, value):
        return value > self.best if self.mode == "max" else value < self.best

    def on_train_begin(self, logs=None):
        remove_stale_temporaries(self.filepath)
        if self.state_path is None:
            return
        remove_stale_temporaries(self.state_path)
        if not (os.path.isfile(self.state_path) and os.path.isfile(self.filepath)):
            return
        state = _read_json(self.state_path)
        if not isinstance(state, dict) or self.monitor not in state:
            raise ValueError(
                f"Expected {self.state_path} to hold the best value of {self.monitor!r} "
                f"(monitor={self.monitor!r}). Received: {state!r}"
            )
        self.best = float(state[self.monitor])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            warnings.warn(
                f"BestCheckpoint: no {self.monitor!r} in the logs of epoch {epoch + 1} "
                f"(monitor={self.monitor!r}; logged: {sorted(logs)}); nothing saved.",
                stacklevel=2,
            )
            return
        value = float(np.asarray(logs[self.monitor]))
        nonfinite = sorted(
            key
            for key, v in logs.items()
            if key.startswith("val_") and key.endswith("loss") and not np.all(np.isfinite(v))
        )
        if nonfinite:
            # A diverged model can still score (its argmax is some class): never the best.
            if self.verbose:
                print(
                    f"\nEpoch {epoch + 1}: {', '.join(nonfinite)} not finite; {self.monitor} "
                    f"{value:.5f} is not counted, {self.filepath} is kept"
                )
            return
        if not self._improves(value):
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
            return
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                f"{value:.5f}, saving model to {self.filepath}"
            )
        model = self.model
        check_finite_state(model, self.filepath)
        folder = os.path.dirname(self.filepath)
        if folder:
            os.makedirs(folder, exist_ok=True)
        size = saved_size(model, optimizer=not self.save_weights_only)
        if self.save_weights_only:
            save_atomically(
                self.filepath, lambda path: model.save_weights(path, overwrite=True), size
            )
        else:
            save_atomically(self.filepath, lambda path: model.save(path, overwrite=True), size)
        self.best = value
        if self.state_path is not None:
            save_atomically(self.state_path, lambda path: _write_json(path, {self.monitor: value}))


def best_checkpoint(
    filepath,
    *,
    monitor="val_mean_iou",
    mode="max",
    save_weights_only=False,
    state_path=None,
    verbose=0,
):
    """The callback that keeps the model with the best validation mIoU (`BestCheckpoint`).

    Args:
        filepath: ".keras" file (or ".weights.h5" with `save_weights_only`).
        monitor: the logged name of the mIoU: "val_" + the metric's `name`.
            Defaults to "val_mean_iou".
        mode: "max" for IoU-like metrics. Defaults to "max".
        save_weights_only: save only the weights. Defaults to False.
        state_path: JSON file that keeps the best value across a resume, or None.
        verbose: 1 prints a line when the checkpoint is replaced.

    Returns:
        `BestCheckpoint(filepath, monitor=monitor, mode=mode, ...)`.
    """
    return BestCheckpoint(
        filepath,
        monitor=monitor,
        mode=mode,
        save_weights_only=save_weights_only,
        state_path=state_path,
        verbose=verbose,
    )


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore` that resumes in the middle of an epoch and writes atomically.

    Saves the model's weights and the optimizer's state (its step count, so a
    schedule such as `PolyDecay` continues where it was) to
    `<backup_dir>/latest.weights.h5`, and the run's position to
    `<backup_dir>/training_metadata.json` (`{"epoch": epochs done, "step":
    training steps done, "iterations": the optimizer's step count}`), every
    `save_freq` training steps (when the step count is a multiple of it) and at
    the end of every epoch; when `fit` is called again with the same folder, the
    state is restored and training continues at that step.

    Differences from `keras.callbacks.BackupAndRestore` (Keras 3.15):

    - A backup saved after step `s` of a run with `n` steps per epoch resumes
      in epoch `s // n` after `s % n` of its steps, and the run stops once it
      has done `epochs * n` steps in all. Keras' callback restarts the
      interrupted epoch from its first batch with the optimizer's step count
      already at `s`, so the run trains `s % n` steps too many. `fit` cannot
      start an epoch part-way, so after a mid-epoch resume each epoch ends
      `s % n` steps later than in an uninterrupted run (the validation, the
      epoch-end logs and checkpoints move with it) and the last epoch is cut
      short; the optimizer step, the schedule and the total are those of the
      uninterrupted run. The input pipeline starts again from its first batch.
    - Every file is written to a temporary name and moved into place
      (`save_atomically`): a kill during a save leaves the previous backup
      usable. The weights are replaced before the metadata; a kill between the
      two renames is detected from the optimizer step stored in both.
    - The end-of-epoch save is made after every other callback's `on_epoch_end`
      (at the next `on_epoch_begin`, or `on_train_end`), so a run resumed from
      it has already given its validation score to `BestCheckpoint`; with an
      integer `save_freq` the end of every epoch is saved too, so the final
      state of a run is always in the backup.

    Several hosts (`MultiWorkerMirroredStrategy`): every worker saves, on purpose.
    The variables are mirrored, so the workers write the same state; in a folder
    that the hosts share, each rename is atomic and the last one stands, and in a
    folder on each host's own disk every host keeps the copy it must restore from
    (every worker restores, and all must resume at the same step).

    Step-level resuming needs `fit` to know the number of steps per epoch
    (`steps_per_epoch`, or a dataset of known length); `save_freq` as an
    integer without it is an error. A backup written by Keras' own callback (no
    "step" in its metadata) resumes as Keras does, at its epoch. Keep the same
    `compile` and `fit` arguments (`steps_per_epoch` above all) across a resume.

    Args:
        backup_dir: folder of the backup, used by nothing else.
        save_freq: "epoch" (at the end of every epoch) or a positive integer:
            also every `save_freq` training steps. Defaults to "epoch".
        double_checkpoint: also keep the previous backup (`*.bkp`), restored
            when the latest cannot be read. Defaults to False.
        delete_checkpoint: delete the backup when `fit` ends. Defaults to True
            (as Keras); False keeps it, so that a finished run can be extended.
        verbose: 1 prints a line at every save and restore. Defaults to 0.

    Attributes:
        restored_step: the training step the last `fit` resumed after, or None
            when it found no backup of this class.

    Example:

    >>> backup = kseg.training.BackupAndRestore("runs/x/backup", save_freq=500)
    >>> model.fit(train_ds, epochs=10, steps_per_epoch=1000, callbacks=[backup])
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
        verbose=0,
    ):
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ValueError(
                "Expected `save_freq` to be 'epoch' or a positive integer (training steps). "
                f"Received: save_freq={save_freq!r}"
            )
        if not backup_dir:
            raise ValueError(f"Expected a backup folder. Received: backup_dir={backup_dir!r}")
        super().__init__(
            os.fspath(backup_dir),
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self.verbose = int(verbose)
        self.restored_step = None
        self._step = None
        self._saved_step = None
        self._batch_begin = 0
        self._stop_at = None
        self._epoch_save_due = False

    def _steps_per_epoch(self):
        return (self.params or {}).get("steps") or None

    def _iterations(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        self.restored_step = None
        self._step = self._saved_step = self._stop_at = None
        self._epoch_save_due = False
        steps = self._steps_per_epoch()
        if self.save_freq != "epoch" and steps is None:
            raise ValueError(
                f"BackupAndRestore(save_freq={self.save_freq}) saves and resumes at training "
                "steps, which needs the number of steps per epoch: pass `steps_per_epoch` to "
                "`fit` (or a dataset of known length). Received: steps_per_epoch=None"
            )
        for path in (self._weights_path, self._training_metadata_path):
            if os.path.isdir(os.path.dirname(path)):
                remove_stale_temporaries(path)
        # Keras restores the weights (and the `.bkp` copies when the latest is unreadable)
        # and sets the initial epoch from the metadata.
        try:
            super().on_train_begin(logs)
        except OSError as error:  # h5py: "Unable to open file (truncated file ...)"
            raise ValueError(
                f"The backup {self._weights_path} is not a valid weights file (truncated or "
                f"corrupt: {error}). Delete the folder {self.backup_dir} to start again."
            ) from None
        if os.path.isfile(self._weights_path):
            # A backup written before kseg refused non-finite states may hold them.
            bad = count_nonfinite(self.model.weights)
            if bad:
                raise DivergenceError(
                    f"The backup {self._weights_path} holds {bad:,} NaN or infinite weight "
                    "values: a diverged run saved it. Start again in a new --logdir (or "
                    "delete that folder)."
                )
        if not (
            os.path.isfile(self._weights_path) and os.path.isfile(self._training_metadata_path)
        ):
            return
        metadata = _read_json(self._training_metadata_path)
        if "step" not in metadata or steps is None:
            return  # Keras' own backup, or no steps per epoch: Keras' epoch-level resume
        # The weights are replaced before the metadata: if the process died between the two
        # renames, the weights are ahead of the metadata by the difference of optimizer steps.
        iterations = self._iterations()
        step = int(metadata["step"]) + iterations - int(metadata.get("iterations", iterations))
        epoch, offset = divmod(step, steps)
        self.model._initial_epoch = epoch
        self.restored_step = self._step = self._saved_step = step
        total = self.params["epochs"] * steps
        if offset and step < total:
            self._stop_at = total
        if self.verbose:
            print(
                f"Resuming after training step {step} (epoch {epoch + 1}, step {offset} of "
                f"{steps}) from {self.backup_dir}; the run ends after step {total}.",
                flush=True,
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._save_due_epoch_end()
        if self._step is None:  # a fresh run (fit may start at `initial_epoch`)
            self._step = epoch * (self._steps_per_epoch() or 0)
        self._current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_begin = batch

    def on_train_batch_end(self, batch, logs=None):
        before = self._step
        self._step += batch - self._batch_begin + 1  # several with `steps_per_execution`
        if self.save_freq != "epoch" and self._step // self.save_freq > before // self.save_freq:
            self._save_model()
        if self._stop_at is not None and self._step >= self._stop_at:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        self._epoch_save_due = True

    def _save_due_epoch_end(self):
        if self._epoch_save_due and self._step != self._saved_step:
            self._save_model()
        self._epoch_save_due = False

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint:
            self._save_due_epoch_end()
        self._epoch_save_due = False
        if self.model is not None:
            self.model._initial_epoch = None  # not to leak into a later `fit`
        super().on_train_end(logs)

    def _save_model(self):
        """Writes the weights, then the metadata, each atomically, once they are finite."""
        check_finite_state(self.model, f"the backup in {self.backup_dir}")
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for latest, previous in (
                (self._weights_path, self._prev_weights_path),
                (self._training_metadata_path, self._prev_training_metadata_path),
            ):
                if os.path.isfile(latest):
                    save_atomically(previous, lambda path, src=latest: shutil.copyfile(src, path))
        model = self.model
        steps = self._steps_per_epoch()
        metadata = {
            "epoch": self._step // steps if steps else self._current_epoch,
            "step": self._step,
            "iterations": self._iterations(),
        }
        save_atomically(
            self._weights_path,
            lambda path: model.save_weights(path, overwrite=True),
            saved_size(model, optimizer=True),
        )
        save_atomically(self._training_metadata_path, lambda path: _write_json(path, metadata))
        self._saved_step = self._step
        if self.verbose:
            print(f"\nSaved the training state after step {self._step} to {self.backup_dir}")


def segmentation_callbacks(
    log_dir,
    *,
    samples=None,
    metric=None,
    class_names=None,
    checkpoint_path=None,
    backup_dir=None,
    monitor="val_mean_iou",
    lr_update_freq="epoch",
    label_check=True,
):
    """The standard set of callbacks of the training recipe.

    Args:
        log_dir: TensorBoard log folder.
        samples: `(images, masks)` for `SegmentationImageLogger`, or None.
        metric: object with `per_class_iou()` for `PerClassIoULogger`, or None.
        class_names: class names for the per-class scalars.
        checkpoint_path: file for `best_checkpoint`, or None.
        backup_dir: folder for `BackupAndRestore` (resume after an
            interruption, saved at every epoch end), or None.
        monitor: the validation mIoU name for the checkpoint.
        lr_update_freq: `update_freq` of `LearningRateLogger`.
        label_check: add `LabelCheck()` (stop with an error when a metric of
            the model sees labels that are not classes). Defaults to True.

    Returns:
        A list: `DivergenceCheck` (a non-finite loss stops the run before
        anything is saved from it), `BackupAndRestore` (before the others, so
        that they see the restored state), `LabelCheck` (before anything logs a figure),
        `TensorBoard(log_dir)`, `LearningRateLogger`, and the optional image,
        per-class IoU and checkpoint callbacks.
    """
    # DivergenceCheck first: it stops the run at a non-finite loss before any callback saves.
    callbacks = [DivergenceCheck()]
    if backup_dir is not None:
        callbacks.append(BackupAndRestore(backup_dir))
    if label_check:
        callbacks.append(LabelCheck())
    callbacks.append(keras.callbacks.TensorBoard(os.fspath(log_dir)))
    callbacks.append(LearningRateLogger(log_dir, update_freq=lr_update_freq))
    if metric is not None:
        callbacks.append(PerClassIoULogger(metric, log_dir, class_names))
    if samples is not None:
        callbacks.append(SegmentationImageLogger(log_dir, *samples))
    if checkpoint_path is not None:
        callbacks.append(best_checkpoint(checkpoint_path, monitor=monitor))
    return callbacks

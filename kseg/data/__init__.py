"""Input pipelines as tf.data datasets, on every backend: PASCAL VOC 2012, Cityscapes, ADE20K,
any folder of images and masks (`folder_dataset`) and synthetic data.

Every dataset yields `(image, mask)`: image float32 `(H, W, 3)` RGB in
[0, 255] (the models normalise inside), mask int32 `(H, W)` of class ids with
255 = ignore; batches are `(B, H, W, 3)` and `(B, H, W)`, channels_last.
A file that cannot be read raises `kseg.data.DataError` (a `ValueError`; the
VOC reader's `VOCDataError` is a subclass), whose message names the file.

Typical use::

    train = kseg.data.train_pipeline(
        kseg.data.voc_dataset(data_dir, "train_aug", shuffle=True, seed=0),
        batch_size=8, crop_size=513, seed=0)
    val = kseg.data.eval_pipeline(kseg.data.voc_dataset(data_dir, "val"), size=512)
    # or, with no VOC folder:
    train = kseg.data.train_pipeline(
        kseg.data.synthetic_dataset("train", shuffle=True), batch_size=8, crop_size=96, seed=0)

TensorFlow is imported here. When the Keras backend is not TensorFlow, the
GPUs are hidden from TensorFlow, so that tf.data does not take the memory of
the accelerator that JAX or PyTorch trains on.
"""

import keras
import tensorflow as tf

if keras.backend.backend() != "tensorflow":
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TensorFlow's devices were already initialised by an earlier import; nothing to do.
        pass

# Names are resolved on first use so that `python -m kseg.data.voc` (and
# `python -m kseg.data`) runs the module once, as __main__.
_EXPORTS = {
    "VOC_CLASSES": "palette",
    "voc_palette": "palette",
    "colorize": "palette",
    "overlay": "palette",
    "DataError": "errors",
    "VOC_SPLITS": "voc",
    "VOCDataError": "voc",
    "find_voc_root": "voc",
    "voc_file_list": "voc",
    "voc_dataset": "voc",
    "read_image": "voc",
    "read_mask": "voc",
    "read_sample": "voc",
    "check_voc": "voc",
    "make_synthetic_sample": "synthetic",
    "make_synthetic_arrays": "synthetic",
    "synthetic_dataset": "synthetic",
    "write_fake_voc": "fixtures",
    "write_fake_folder": "fixtures",
    "write_fake_cityscapes": "fixtures",
    "write_fake_ade20k": "fixtures",
    "dataset_description": "palette",
    "ADE20K_CLASSES": "palette",
    "CITYSCAPES_CLASSES": "palette",
    "MASK_FORMATS": "_reader",
    "folder_dataset": "folder",
    "folder_file_list": "folder",
    "folder_description": "folder",
    "check_folder": "folder",
    "CITYSCAPES_LABEL_TO_TRAIN": "cityscapes",
    "CITYSCAPES_SPLITS": "cityscapes",
    "find_cityscapes_root": "cityscapes",
    "cityscapes_file_list": "cityscapes",
    "cityscapes_dataset": "cityscapes",
    "check_cityscapes": "cityscapes",
    "ADE20K_SPLITS": "ade20k",
    "find_ade20k_root": "ade20k",
    "ade20k_file_list": "ade20k",
    "ade20k_dataset": "ade20k",
    "check_ade20k": "ade20k",
    "augment_sample": "augment",
    "train_pipeline": "augment",
    "eval_preprocess": "augment",
    "eval_pipeline": "augment",
}

__all__ = sorted(_EXPORTS) + ["IMAGENET_MEAN_RGB"]

from kseg.layers.preprocessing import IMAGENET_MEAN_RGB  # noqa: E402


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f"kseg.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kseg.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

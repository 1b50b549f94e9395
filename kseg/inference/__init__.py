"""Sliding-window, multi-scale and flip test-time inference, and evaluation with it.

Backend-neutral (keras.ops and NumPy). Images go in channels_last, as float
values like the training data (RGB in [0, 255] for the RGB models),
`(B, H, W, C)` with any number of channels C (1 for grayscale, 4 for RGB-NIR,
...); results come back as NumPy arrays at the input resolution, `(B, H, W, K)`
probabilities or `(B, H, W)` class ids. A model whose input and output are
channels_first is used by passing `data_format="channels_first"`.

A model with one output channel (`num_classes=1`) is binary: its logit is
the foreground's, the probabilities are its sigmoid `(B, H, W, 1)` (averaged
over scales and flips like the softmax of a multi-class model) and the class
is 1 where that probability is above 0.5 (one view: where the logit is
positive), else 0.

Procedure (as in mmsegmentation's `EncoderDecoder.slide_inference` and
`aug_test`, and the PSPNet evaluation code):
1. For each scale `s` in `scales`, resize the image bilinearly by `s`.
2. With a `crop_size`: pad the image (bottom and right, with `pad_value`) to
   at least the crop, slide a crop-sized window with `stride`, average the
   *logits* of the windows where they overlap and crop the padding off.
   Without a `crop_size`, run the model on the whole image.
3. Resize the logits bilinearly to the input size and take the softmax
   (the sigmoid for one channel).
4. With `flip=True`, do the same for the horizontally flipped image and flip
   the result back.
5. Average the *probabilities* of all scales and flips.
6. In `evaluate(..., crf=True)` only: refine each image's averaged probabilities
   with DeepLab's fully connected CRF (`kseg.postprocess.dense_crf`) before the
   metrics (and their argmax) see them.

Size buckets (`size_buckets`): every batch reaches the model padded
bottom/right to a bucketed shape and its output is cropped back, so that a
compiled model sees a bounded number of input shapes. The sliding window pads
short batches of windows by default (the result is the same); whole-image
inference pads only with `size_buckets=True`, which changes the result of a
model with spatial kernels. Details and bounds: `kseg.inference.buckets`.

Memory on torch: Keras' functional call keeps every intermediate tensor of
the model until it returns, which compiled TensorFlow and JAX avoid but eager
torch cannot. On the torch backend every batch therefore runs through
`lean_call` (`kseg.inference.lean`), which executes the model layer by layer
and frees each tensor after its last use, with the same outputs (figures:
benchmarks/README.md, "Inference memory"). TensorFlow and JAX keep
`model.predict_on_batch`.

Modules: `tta` (`predict`, `predict_probabilities`: scales and flips),
`sliding` (`sliding_window_logits`), `buckets` (`bucket_length`), `forward`
(one batch through the model), `lean` (`lean_call`), `evaluation`
(`evaluate`).
"""

from kseg.inference._common import DEFAULT_PAD_VALUE, IMAGENET_MEAN_RGB
from kseg.inference.buckets import DEFAULT_SIZE_BUCKETS, bucket_length
from kseg.inference.evaluation import evaluate
from kseg.inference.lean import lean_call
from kseg.inference.sliding import sliding_window_logits
from kseg.inference.tta import predict, predict_probabilities

__all__ = [
    "predict",
    "predict_probabilities",
    "sliding_window_logits",
    "evaluate",
    "lean_call",
    "bucket_length",
    "DEFAULT_SIZE_BUCKETS",
    "DEFAULT_PAD_VALUE",
    "IMAGENET_MEAN_RGB",
]

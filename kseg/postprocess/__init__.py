"""Post-processing of predicted class probabilities.

`dense_crf` refines a softmax with DeepLab's fully connected CRF (mean-field inference
with Gaussian and bilateral kernels), exactly on small images and with the
permutohedral lattice on large ones.
"""

from kseg.postprocess.crf import dense_crf

__all__ = ["dense_crf"]

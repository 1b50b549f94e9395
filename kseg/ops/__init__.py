"""Backend-neutral segmentation ops built on `keras.ops`."""

from kseg.ops.pooling import adaptive_average_pool, max_pool_with_argmax, max_unpool, pool
from kseg.ops.resize import resize

__all__ = ["resize", "adaptive_average_pool", "max_pool_with_argmax", "max_unpool", "pool"]

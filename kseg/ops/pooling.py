"""Adaptive, argmax and padded pooling, and max-unpooling."""


def adaptive_average_pool(x, output_size, data_format=None):
    raise NotImplementedError


def max_pool_with_argmax(x, pool_size=2, strides=2, padding='valid', data_format=None):
    raise NotImplementedError


def max_unpool(x, indices, output_size, data_format=None):
    raise NotImplementedError

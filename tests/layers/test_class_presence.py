"""Tests for kseg.layers.ClassPresenceScore."""

import numpy as np

import kseg
from kseg.layers import ClassPresenceScore
from tests.helpers import random_array, run_layer_test, to_numpy


def test_score_layer():
    nodes = random_array((2, 7, 5), seed=0)
    out = run_layer_test(
        ClassPresenceScore,
        {},
        input_data=nodes,
        expected_output_shape=(2, 7),
        symbolic_input_shape=(7, 5),
    )
    np.testing.assert_allclose(out, nodes.sum(-1), rtol=1e-5)  # centroid starts at ones
    layer = ClassPresenceScore()
    layer.build((None, 7, 5))
    centroid = random_array((7, 5), seed=1)
    layer.semantic_centroid.assign(centroid)
    np.testing.assert_allclose(to_numpy(layer(nodes)), (nodes * centroid).sum(-1), rtol=1e-5)


def test_still_importable_from_losses():
    assert kseg.losses.ClassPresenceScore is ClassPresenceScore

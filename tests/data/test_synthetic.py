import numpy as np
import pytest
import tensorflow as tf

from kseg.data import synthetic


def test_sample_is_a_pure_function_of_seed_split_index():
    a_img, a_mask = synthetic.make_synthetic_sample(3, height=40, width=48, seed=1)
    b_img, b_mask = synthetic.make_synthetic_sample(3, height=40, width=48, seed=1)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = synthetic.make_synthetic_sample(3, height=40, width=48, seed=2)
    d_img, _ = synthetic.make_synthetic_sample(3, height=40, width=48, seed=1, split="val")
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)
    images, masks = synthetic.make_synthetic_arrays(5, image_size=(40, 48), seed=1)
    np.testing.assert_array_equal(images[3], a_img)
    np.testing.assert_array_equal(masks[3], a_mask)


def test_labels_and_class_balance():
    images, masks = synthetic.make_synthetic_arrays(24, image_size=64, num_classes=5, seed=0)
    assert images.shape == (24, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (24, 64, 64)
    counts = np.bincount(masks.ravel(), minlength=5)
    assert len(counts) == 5  # only classes 0..4
    fractions = counts / counts.sum()
    assert 0.4 < fractions[0] < 0.9  # background is a majority, not everything
    assert (fractions[1:] > 0.03).all()  # every shape class is well represented


def test_classes_have_distinct_colours():
    images, masks = synthetic.make_synthetic_arrays(24, image_size=64, num_classes=6, seed=0)
    means = np.stack([images[masks == c].mean(axis=0) for c in range(6)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(6, dtype=bool)].min() > 40


def test_boundary_band():
    _, mask = synthetic.make_synthetic_sample(0, height=48, width=48, boundary_width=2)
    _, plain = synthetic.make_synthetic_sample(0, height=48, width=48)
    band = mask == 255
    assert band.any()
    np.testing.assert_array_equal(mask[~band], plain[~band])
    # Every label change of the plain mask lies inside the band.
    change = plain[1:] != plain[:-1]
    assert (band[1:][change] | band[:-1][change]).all()


def test_synthetic_dataset():
    ds = synthetic.synthetic_dataset("val", 6, image_size=(32, 40), num_classes=4, seed=7)
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32
    samples = [(np.asarray(i), np.asarray(m)) for i, m in ds]
    assert len(samples) == 6
    images, masks = synthetic.make_synthetic_arrays(
        6, image_size=(32, 40), num_classes=4, seed=7, split="val"
    )
    for k, (image, mask) in enumerate(samples):
        np.testing.assert_array_equal(image, images[k].astype(np.float32))
        np.testing.assert_array_equal(mask, masks[k].astype(np.int32))
    shuffled = synthetic.synthetic_dataset(
        "val", 6, image_size=(32, 40), num_classes=4, seed=7, shuffle=True
    )
    order = [np.asarray(m) for _, m in shuffled]
    assert sorted(m.tobytes() for m in order) == sorted(m.tobytes() for m in masks.astype(np.int32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: split='dev'"):
        synthetic.make_synthetic_sample(0, split="dev")
    with pytest.raises(ValueError, match="Received: num_classes=1"):
        synthetic.make_synthetic_sample(0, num_classes=1)

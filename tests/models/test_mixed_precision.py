"""Every model builder under `mixed_float16` and `mixed_bfloat16`.

Each model is built twice, under float32 and under the 16-bit policy, with the
same weights; the 16-bit model's logits must be float32, finite and close to
the float32 model's.
"""

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import BACKEND, assert_close_to_float32, infer, to_numpy
from tests.models.conftest import tiny_resnet

K = 3

BUILDERS = {
    "fcn8s": lambda: kseg.models.FCN8s(num_classes=K, fc_filters=16),
    "unet": lambda: kseg.models.UNet(
        num_classes=K, base_filters=4, depth=2, padding="same", batch_norm=True
    ),
    "segnet": lambda: kseg.models.SegNet(num_classes=K),
    "pspnet": lambda: kseg.models.PSPNet(
        num_classes=K, backbone=tiny_resnet(8), fusion_filters=8, aux_head=True
    ),
    "deeplabv1": lambda: kseg.models.DeepLabV1(num_classes=K, fc_filters=8),
    "deeplabv2": lambda: kseg.models.DeepLabV2(num_classes=K, backbone=tiny_resnet(8)),
    "deeplabv3": lambda: kseg.models.DeepLabV3(
        num_classes=K, backbone=tiny_resnet(16, multi_grid=(1, 2, 4)), aspp_filters=8, aux_head=True
    ),
    "deeplabv3plus": lambda: kseg.models.DeepLabV3Plus(
        num_classes=K,
        backbone=tiny_resnet(8),
        aspp_filters=8,
        low_level_filters=4,
        decoder_filters=8,
    ),
    "gcunet": lambda: kseg.models.GCUNet(
        num_classes=K, backbone=tiny_resnet(8), unit_filters=8, fusion_filters=8, aux_head=True
    ),
    "glorenet": lambda: kseg.models.GloReNet(
        num_classes=K,
        backbone=tiny_resnet(8),
        reduce_filters=16,
        num_state=8,
        num_node=4,
        aux_head=True,
    ),
    "ginet": lambda: kseg.models.GINet(
        num_classes=K,
        backbone=tiny_resnet(8),
        class_embeddings="learned",
        jpu_width=8,
        reduce_filters=16,
        num_state=8,
        num_node=6,
    ),
    "segformer": lambda: tiny_segformer(),
    # The encoder-decoder models read the stride-4 to 32 features of an output-stride-32
    # backbone (UNet++ and Linknet also the stride-2 one).
    "fpn": lambda: kseg.models.FPN(
        num_classes=K, backbone=tiny_resnet(32), pyramid_filters=8, segmentation_filters=32
    ),
    "linknet": lambda: kseg.models.Linknet(
        num_classes=K, backbone=tiny_resnet(32), final_filters=8
    ),
    "unetplusplus": lambda: kseg.models.UNetPlusPlus(
        num_classes=K, backbone=tiny_resnet(32), decoder_filters=(16, 8, 8, 8, 4)
    ),
    "upernet": lambda: kseg.models.UPerNet(
        num_classes=K, backbone=tiny_resnet(32), decoder_filters=8, aux_head=True
    ),
}


def tiny_segformer():
    """SegFormer on a Mix Transformer of widths 8-32, one block per stage (two in stage 2).

    Tested at its training crop's token count (below), where a 64x64 image would reduce
    its keys and values to a few positions.
    """
    backbone = kseg.backbones.MixTransformer(
        hidden_sizes=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4)
    )
    return kseg.models.SegFormer(num_classes=K, backbone=backbone, decoder_filters=8)


def _randomize_zero_weights(model, seed=0):
    """Gives every all-zero trainable weight (zero-initialised gates, BN gammas,
    classifiers) small random values, so that each branch reaches the logits."""
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights:
        value = to_numpy(w.value)
        if not np.any(value):
            w.assign(rng.normal(0.0, 0.1, value.shape).astype(value.dtype))


def _calibrate_batch_norms(model, x):
    """Sets every BN's moving statistics to those of `x`, as in a trained model.

    Fresh moving statistics (mean 0, variance 1) do not match the scale of
    the features, so a BN whose gamma is nonzero would give outputs that no
    trained model gives. The variance is kept at least 1 (its initial value),
    so that a BN over a few nearly equal pooled values (a 1x1 pyramid bin of
    one image) does not magnify their rounding errors.
    """
    bns = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    if BACKEND == "jax":
        # One compiled training-mode call instead of one compiled program per op.
        import jax

        def moving_statistics(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=True)[1]

        values = jax.jit(moving_statistics)(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            x,
        )
        for variable, value in zip(model.non_trainable_variables, values):
            variable.assign(value)
    else:
        model(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        variance = to_numpy(bn.moving_variance.value)
        bn.moving_variance.assign(np.maximum(variance, 1.0))


def _logits(out):
    return out if not isinstance(out, dict) else {k: out[k] for k in ("main", "aux") if k in out}


POLICIES = ("mixed_float16", "mixed_bfloat16")


@pytest.mark.parametrize("name", sorted(set(BUILDERS) - {"segnet"}))
def test_model_under_mixed_precision(name):
    # One float32 reference per builder, compared with the model under each 16-bit policy.
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    reference = BUILDERS[name]()
    _randomize_zero_weights(reference)
    _calibrate_batch_norms(reference, x)
    expected = infer(reference, x)
    for key, value in _as_items(expected):
        assert np.max(np.abs(value)) > 0, f"{key}: float32 output is all zero"

    for policy in POLICIES:
        keras.config.set_dtype_policy(policy)
        model = BUILDERS[name]()
        model.set_weights(reference.get_weights())
        out = infer(model, x)
        for key, logits in _as_items(_logits(out)):
            dtype = keras.backend.standardize_dtype(logits.dtype)
            assert dtype == "float32", (policy, key, dtype)
        assert_close_to_float32(out, expected, policy)


def test_glorenet_paper_head_at_a_realistic_feature_size():
    # The PaddleSeg head (reduce to 512, GloRe S=128, N=64) on a 64x128
    # stride-8 map: without 1/L its reprojection exceeds float16's range there.
    x = np.random.default_rng(0).uniform(0, 255, (1, 512, 1024, 3)).astype("float32")

    def build():
        return kseg.models.GloReNet(num_classes=K, backbone=tiny_resnet(8))

    reference = build()
    _randomize_zero_weights(reference)
    _calibrate_batch_norms(reference, x)
    expected = infer(reference, x)
    for policy in POLICIES:
        keras.config.set_dtype_policy(policy)
        model = build()
        model.set_weights(reference.get_weights())
        got = infer(model, x)
        assert keras.backend.standardize_dtype(got.dtype) == "float32", policy
        assert_close_to_float32(got, expected, policy)


def test_segformer_at_a_realistic_token_count():
    # A 512x512 image (SegFormer's ADE20K crop) gives stage 1 128 x 128 = 16384 queries
    # over 16 x 16 = 256 reduced keys and values: under float16 the attention's logits and
    # softmax (computed in float32) and the LayerNorms (Keras computes them in float32)
    # stay finite and close to float32. (bfloat16 has float32's range; one 512x512 pass
    # costs 5-10 s on a 2-core CPU.)
    x = np.random.default_rng(0).uniform(0, 255, (1, 512, 512, 3)).astype("float32")
    reference = tiny_segformer()
    _randomize_zero_weights(reference)
    _calibrate_batch_norms(reference, x)
    attention = reference.get_layer("mix_transformer").get_layer("stage1_block1_attention")
    assert attention.sr_ratio == 8
    expected = infer(reference, x)
    keras.config.set_dtype_policy("mixed_float16")
    model = tiny_segformer()
    model.set_weights(reference.get_weights())
    got = infer(model, x)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    assert_close_to_float32(got, expected, "mixed_float16")


def test_segnet_under_mixed_precision():
    # SegNet unpools to the encoder's argmax positions. Where two values of a
    # pooling window are within 16-bit rounding of each other the argmax may
    # pick the other one (measured: 0.2% of the indices under float16, up to
    # 2% under bfloat16), and each such flip moves a whole value by a pixel,
    # so the logits differ by about sqrt(2 * flip fraction) in relative L2
    # (4% and 9% measured) although every encoder map is as close to float32
    # as in the other models. The test checks each part for what it is.
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    probes = [f"pool{stage}_argmax" for stage in range(1, 6)]

    def build():
        model = BUILDERS["segnet"]()
        outputs = [t for name in probes for t in model.get_layer(name).output]
        return model, keras.Model(model.input, [model.output, *outputs])

    reference, reference_probe = build()
    _randomize_zero_weights(reference)
    _calibrate_batch_norms(reference, x)
    expected = infer(reference_probe, x)

    # policy: (least fraction of equal argmax indices, largest relative L2 error of the logits)
    bounds = {"mixed_float16": (0.99, 0.1), "mixed_bfloat16": (0.95, 0.25)}
    for policy, (min_agreement, max_error) in bounds.items():
        keras.config.set_dtype_policy(policy)
        model, probe = build()
        model.set_weights(reference.get_weights())
        got = infer(probe, x)
        assert keras.backend.standardize_dtype(got[0].dtype) == "float32", policy
        for stage in range(5):
            values, indices = 1 + 2 * stage, 2 + 2 * stage
            assert_close_to_float32(got[values], expected[values], policy)
            agreement = np.mean(got[indices] == expected[indices])
            assert agreement >= min_agreement, (policy, probes[stage], agreement)
        logits = got[0].astype("float64")
        assert np.all(np.isfinite(logits)), policy
        error = np.linalg.norm(logits - expected[0]) / np.linalg.norm(expected[0])
        assert error <= max_error, (policy, error)


def _as_items(out):
    return out.items() if isinstance(out, dict) else [("logits", out)]

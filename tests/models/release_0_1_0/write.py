"""Writes the `.keras` files of this folder with kseg 0.1.0 (run once, from the repository root).

    KERAS_BACKEND=tensorflow python tests/models/release_0_1_0/write.py

The files are kept: tests/models/test_model_structure.py checks that models saved by
that release still load.
"""

import os

import keras

import kseg

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    keras.utils.set_random_seed(0)
    unet = kseg.models.UNet(3, depth=2, base_filters=4, padding="same", batch_norm=True)
    unet.save(os.path.join(HERE, "unet.keras"))
    backbone = kseg.backbones.ResNet(blocks=(1, 1, 1, 1), width=4, output_stride=8)
    backbone.save(os.path.join(HERE, "resnet_tiny.keras"))
    deeplab = kseg.models.DeepLabV3Plus(
        num_classes=3,
        backbone=kseg.backbones.ResNet(blocks=(1, 1, 1, 1), width=4, output_stride=8),
        aspp_filters=8,
        low_level_filters=4,
        decoder_filters=8,
    )
    description = {"name": "toy", "class_names": ["bg", "a", "b"], "ignore_index": 255}
    kseg.models.with_dataset(deeplab, description).save(os.path.join(HERE, "deeplabv3plus.keras"))


if __name__ == "__main__":
    main()

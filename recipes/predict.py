"""Predicts segmentation masks for images with a checkpoint of the training recipe.

    python recipes/predict.py --checkpoint runs/.../best.keras photo.jpg more/ --output-dir out

Each input image `<name>.<ext>` (files, or every .jpg/.jpeg/.png/.bmp/.tif/.tiff
in a folder) gives two files in `--output-dir`: `<name>_mask.png`, a palette
PNG whose pixel values are the class ids and whose colours are the palette the
model carries (the PASCAL VOC palette for a model without one), and
`<name>_overlay.png`, the image with the coloured mask blended over it.
Test-time options (`--crop-size S` or `--crop-size H W`, `--scales`,
`--flip`) are those of `evaluate.py`. The printed class names and the colours
are those of the dataset the checkpoint was trained on (synthetic, PASCAL VOC,
Cityscapes, ADE20K or a folder's `dataset.json`), which train.py stores in it.

Images are read with the channel count of the model's input: RGB for 3
channels, grayscale for 1 (a grey image stored as RGB is accepted), RGBA or
a 4-band PNG/TIFF for 4 (e.g. RGB-NIR). The overlay is drawn on the grey
image (1 channel) or on the first three channels (4 channels). A binary model
(one output channel, a sigmoid logit) writes 0/1 masks with two palette colours.

A file that cannot be read, or whose channels do not fit the model, is
reported in one line (`predict.py: error: <file>: <reason>`) and skipped; the
other images are still predicted, and the script then exits with status 1
saying how many images failed.
"""

import argparse
import os
import sys
import time

import _common

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict coloured masks and overlays for images or folders of images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument(
        "--checkpoint", required=True, help=".keras file written by train.py or train_voc.py"
    )
    parser.add_argument("--output-dir", default="predictions", help="where the PNGs go")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="weight of the mask colours in the overlay"
    )
    _common.add_inference_args(parser, "default: none (whole image)")
    return parser


def list_images(parser, inputs):
    """Expands folders into their image files (sorted); checks that every path exists."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                parser.error(f"argument inputs: no {'/'.join(IMAGE_EXTENSIONS)} files in {item!r}")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            parser.error(f"argument inputs: no such file or folder: {item!r}")
    return paths


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        parser.error(f"argument --checkpoint: no such file: {args.checkpoint!r}")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"argument --alpha: must be in [0, 1], got {args.alpha}")
    _common.check_inference_args(parser, args)
    args.images = list_images(parser, args.inputs)
    return args


def input_channels(model):
    """The channel count of the model's image input (3 when it is not fixed)."""
    import keras

    shape = model.inputs[0].shape
    channels = shape[1] if keras.config.image_data_format() == "channels_first" else shape[-1]
    return 3 if channels is None else int(channels)


def display_rgb(image):
    """The `(H, W, 3)` image the overlay is drawn on: grey repeated, or the first 3 channels."""
    import numpy as np

    image = np.clip(image, 0, 255)
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_tensorflow()
    start = time.time()

    import numpy as np
    from PIL import Image

    import kseg.inference
    from kseg.data import DataError
    from kseg.data.palette import overlay
    from kseg.data.voc import read_image

    model = _common.load_checkpoint("predict.py", args.checkpoint)
    num_classes = _common.num_classes_of(model, args.output_key)
    binary = num_classes == 1
    dataset = _common.dataset_of(model, num_classes)
    class_names, colors = dataset["class_names"], dataset["palette"]
    channels = input_channels(model)
    if channels not in (1, 3, 4):
        raise SystemExit(
            f"predict.py: error: the model takes {channels}-channel images; image files are "
            "read with 1 (grayscale), 3 (RGB) or 4 (RGBA, 4 bands) channels."
        )
    os.makedirs(args.output_dir, exist_ok=True)
    palette = colors.reshape(-1).tolist()
    tta = _common.inference_kwargs(args)
    kind = "binary, 1 sigmoid logit" if binary else f"{num_classes} classes"
    print(
        f"Model {model.name} ({kind}, {channels}-channel input); "
        f"{len(args.images)} image(s); {tta}."
    )
    written, failed = [], []
    for path in args.images:
        try:
            image = read_image(path, channels=channels)
        except DataError as e:
            print(f"predict.py: error: {e}", file=sys.stderr, flush=True)
            failed.append(path)
            continue
        mask = kseg.inference.predict(model, image[None], **tta)[0].astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(args.output_dir, stem + "_mask.png")
        overlay_path = os.path.join(args.output_dir, stem + "_overlay.png")
        png = Image.fromarray(mask, "P")
        png.putpalette(palette)
        png.save(mask_path)
        blended = overlay(display_rgb(image), mask, alpha=args.alpha, palette=colors)
        Image.fromarray(blended, "RGB").save(overlay_path)
        present = ", ".join(class_names[c] for c in np.unique(mask))
        print(f"{path} -> {mask_path}, {overlay_path} ({present})", flush=True)
        written.append((mask_path, overlay_path))
    print(f"Wrote {2 * len(written)} files to {args.output_dir} in {time.time() - start:.1f} s.")
    if failed:
        print(
            f"predict.py: error: {len(failed)} of {len(args.images)} images failed "
            "(reasons above).",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return written


if __name__ == "__main__":
    main()

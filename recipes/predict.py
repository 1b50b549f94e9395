"""Predicts segmentation masks for images with a checkpoint of the training recipe.

    python recipes/predict.py --checkpoint runs/.../best.keras photo.jpg more/ --output-dir out

Each input image `<name>.<ext>` (files, or every .jpg/.jpeg/.png/.bmp in a
folder) gives two files in `--output-dir`: `<name>_mask.png`, a palette PNG
whose pixel values are the class ids and whose colours are the palette the
model carries (the PASCAL VOC palette for a model without one), and
`<name>_overlay.png`, the image with the coloured mask blended over it.
Test-time options (`--crop-size`, `--scales`, `--flip`) are those of
`evaluate_voc.py`.
"""

import argparse
import os
import time

import _common

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict coloured masks and overlays for images or folders of images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--checkpoint", required=True, help=".keras file written by train_voc.py")
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


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_tensorflow()
    start = time.time()

    import numpy as np
    from PIL import Image

    import kseg.inference
    from kseg.data.palette import overlay
    from kseg.data.voc import read_image

    model = _common.load_model(args.checkpoint)
    num_classes = _common.num_classes_of(model, args.output_key)
    dataset = _common.dataset_of(model, num_classes)
    class_names, colors = dataset["class_names"], dataset["palette"]
    os.makedirs(args.output_dir, exist_ok=True)
    palette = colors.reshape(-1).tolist()
    tta = _common.inference_kwargs(args)
    print(f"Model {model.name} ({num_classes} classes); {len(args.images)} image(s); {tta}.")
    written = []
    for path in args.images:
        image = read_image(path)
        mask = kseg.inference.predict(model, image[None], **tta)[0].astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(args.output_dir, stem + "_mask.png")
        overlay_path = os.path.join(args.output_dir, stem + "_overlay.png")
        png = Image.fromarray(mask, "P")
        png.putpalette(palette)
        png.save(mask_path)
        blended = overlay(image, mask, alpha=args.alpha, palette=colors)
        Image.fromarray(blended, "RGB").save(overlay_path)
        present = ", ".join(class_names[c] for c in np.unique(mask))
        print(f"{path} -> {mask_path}, {overlay_path} ({present})", flush=True)
        written.append((mask_path, overlay_path))
    print(f"Wrote {2 * len(written)} files to {args.output_dir} in {time.time() - start:.1f} s.")
    return written


if __name__ == "__main__":
    main()

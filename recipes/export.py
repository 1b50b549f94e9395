"""Exports a checkpoint of the training recipe for inference: SavedModel, ONNX or LiteRT.

    python recipes/export.py --checkpoint runs/.../best.keras --format onnx --output model.onnx
    python recipes/export.py --checkpoint runs/.../best.keras --format saved_model --output model/
    python recipes/export.py --checkpoint runs/.../best.keras --format litert \\
        --output model.tflite --size 512 512

The exported graph takes a float32 batch of RGB images in [0, 255] (the model
normalises them inside), NHWC, of any height and width unless `--size H W`
fixes them (LiteRT needs a fixed size), and returns the logits at the input's
resolution (the `main` output; auxiliary heads are left out). A mixed-precision
checkpoint is exported in float32 with its own weights. Beside the export,
`<output>.json` holds the input and output description and the dataset's class
names, palette and ignore index (`kseg.export.export_model`).

Unless `--skip-check`, the export is loaded back with its own runtime (TensorFlow
for a SavedModel, onnxruntime for ONNX, the LiteRT interpreter) and run on one
random image; the largest difference from the Keras model is printed, and the
recipe fails when it exceeds `--tolerance`. Exports run on the TensorFlow
backend (`KERAS_BACKEND=tensorflow`, every format), which loads a checkpoint
trained on any backend, and on JAX (`saved_model` through jax2tf, `onnx`
through jax2onnx). ONNX needs `tf2onnx` (TensorFlow) or `jax2onnx` (JAX) and
its check `onnxruntime` (`pip install -e ".[export]"`).
"""

import argparse
import os

import _common

FORMATS = ("saved_model", "onnx", "litert")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Export a .keras checkpoint as a SavedModel, ONNX or LiteRT model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help=".keras file written by train.py or convert.py"
    )
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--output", required=True, help="a folder (saved_model) or a file (.onnx, .tflite)"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="fix the input height and width (default: free; LiteRT needs it)",
    )
    parser.add_argument(
        "--check-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=(97, 131),
        help="the size of the random image of the check, when --size is not given",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest difference from the Keras model the check accepts (logits)",
    )
    parser.add_argument("--skip-check", action="store_true", help="do not run the export")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size is not None and min(args.size) < 1:
        parser.error(f"argument --size: expected two positive ints. Received: {args.size}")
    if args.format == "litert" and args.size is None:
        parser.error("argument --size: LiteRT export needs a fixed input size, e.g. --size 512 512")
    if os.path.exists(args.output):
        parser.error(
            f"argument --output: {args.output} already exists; remove it or choose another path"
        )
    return args


def run_exported(fmt, path, image):
    """Runs the exported model on one float32 batch with the format's own runtime."""
    import numpy as np

    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # kept alive while its function runs
        return np.asarray(loaded.serve(tf.constant(image)))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: image})[0]
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def main(argv=None):
    """Exports the checkpoint and (unless --skip-check) compares the export with Keras."""
    args = parse_args(argv)
    _common.quiet_tensorflow()
    import keras
    import numpy as np

    import kseg

    if args.format not in kseg.export.BACKEND_FORMATS.get(keras.backend.backend(), ()):
        raise SystemExit(
            f"export.py: error: --format {args.format} does not export from this backend: run "
            f"KERAS_BACKEND=tensorflow python recipes/export.py ... (the checkpoint loads there "
            f"whatever backend trained it). Received: Keras backend {keras.backend.backend()!r}"
        )
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"export.py: error: argument --checkpoint: no file {args.checkpoint}")
    model = _common.load_checkpoint("export.py", args.checkpoint)
    parent = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(parent, exist_ok=True)
    size = None if args.size is None else tuple(args.size)
    described = kseg.export.export_model(model, args.output, format=args.format, size=size)
    print(f"Wrote {args.output} ({args.format}, from {keras.backend.backend()}) and {described}")
    if args.skip_check:
        return args.output
    exported = kseg.export.inference_model(model, size=size)
    height, width = size if size is not None else args.check_size
    if keras.config.image_data_format() == "channels_last":
        shape = (1, height, width, exported.inputs[0].shape[-1])
    else:
        shape = (1, exported.inputs[0].shape[1], height, width)
    image = np.random.default_rng(0).uniform(0, 255, shape)
    image = image.astype("float32")
    expected = keras.ops.convert_to_numpy(exported(image, training=False))
    got = run_exported(args.format, args.output, image)
    if got.shape != expected.shape:
        raise SystemExit(
            f"export.py: error: the export returned shape {got.shape}, Keras {expected.shape}"
        )
    difference = float(np.max(np.abs(got - expected)))
    print(f"Check on a {height}x{width} image: largest logit difference from Keras {difference:.2e}")
    if not difference <= args.tolerance:
        raise SystemExit(
            f"export.py: error: the export differs from the Keras model by {difference:.3g} "
            f"(--tolerance {args.tolerance})"
        )
    return args.output


if __name__ == "__main__":
    main()

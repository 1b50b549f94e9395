"""Training-step timing of a segmentation_models_pytorch model (the peer) in plain PyTorch.

Run by `train_step.py` in its own process; prints one `RESULT {json}` line, or
`RESULT {"error": "peer not installed ..."}` when segmentation_models_pytorch (or the
torchvision it imports) cannot be imported. `--arch` is the smp class (default
`DeepLabV3Plus`), `--encoder` its encoder (default `resnet50`), `--kwargs` a JSON object
of further constructor arguments (default `{"encoder_output_stride": 16}` for the
default DeepLabV3+). `encoder_weights=None`: nothing downloads. kseg itself is not
imported (its Keras would load TensorFlow into this process and into its peak memory):
torchvision's missing op schemas are defined by `kseg/convert/_torch_references.py`,
loaded as a file.
"""

import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from train_step import peak_rss_mb, summarize, time_steps  # noqa: E402


def _import_smp():
    path = os.path.join(os.path.dirname(HERE), "kseg", "convert", "_torch_references.py")
    spec = importlib.util.spec_from_file_location("_kseg_torch_references", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.import_torch_reference("segmentation_models_pytorch")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--arch", default="DeepLabV3Plus")
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--kwargs", default=None, help="JSON object of constructor arguments")
    args = parser.parse_args(argv)
    if args.kwargs is None:
        kwargs = {"encoder_output_stride": 16} if args.arch == "DeepLabV3Plus" else {}
    else:
        kwargs = json.loads(args.kwargs)

    try:
        import torch

        smp = _import_smp()
    except Exception as e:  # ImportError, or torchvision's operator registration failing
        print("RESULT " + json.dumps({"error": f"peer not installed ({type(e).__name__})"}))
        return 0

    torch.manual_seed(0)
    model = getattr(smp, args.arch)(
        args.encoder, encoder_weights=None, classes=args.num_classes, **kwargs
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    x = torch.rand(args.batch, 3, args.size, args.size) * 255.0
    y = torch.randint(0, args.num_classes, (args.batch, args.size, args.size))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    first, times, cpu = time_steps(step, args.warmup, args.steps, args.budget)
    result = summarize(times, cpu, args.batch)
    result.update(
        {
            "model": f"smp.{args.arch}",
            "backend": f"torch {torch.__version__} (peer)",
            "jit_compile": False,
            "data_format": "channels_first",
            "params": sum(p.numel() for p in model.parameters()),
            "build_s": 0.0,
            "first_step_s": first,
            "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(),
        }
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-step timing of segmentation_models_pytorch's DeepLabV3+ (the peer) in plain PyTorch.

Run by `train_step.py` in its own process; prints one `RESULT {json}` line, or
`RESULT {"error": "peer not installed ..."}` when segmentation_models_pytorch (or the
torchvision it imports) cannot be imported. `encoder_weights=None`: nothing downloads.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import peak_rss_mb, summarize, time_steps  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--num-classes", type=int, default=21)
    args = parser.parse_args(argv)

    try:
        import segmentation_models_pytorch as smp
        import torch
    except Exception as e:  # ImportError, or torchvision's operator registration failing
        print("RESULT " + json.dumps({"error": f"peer not installed ({type(e).__name__})"}))
        return 0

    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(
        "resnet50", encoder_output_stride=16, encoder_weights=None, classes=args.num_classes
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
            "model": "smp.DeepLabV3Plus",
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

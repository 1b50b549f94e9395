"""Where a torch training step's time and memory go: kseg on the torch backend beside smp.

    KERAS_BACKEND=torch python benchmarks/torch_step_profile.py kseg DeepLabV3Plus-separable
    python benchmarks/torch_step_profile.py smp DeepLabV3Plus resnet50 '{"encoder_output_stride": 16}'
    ... kseg DeepLabV3Plus-separable --keras-bn    # Keras' own BatchNorm computation

One process per model. It runs warm-up steps, then one step in phases (forward with
the loss, backward, optimizer), printing the resident set (current, from
/proc/self/statm) after each phase and the peak (`ru_maxrss`) at the end, then one
step under `torch.profiler` and its operator table (top operators by self CPU time,
with the memory each allocated). The kseg step is what Keras' torch trainer runs in
`train_on_batch` (forward, loss, `backward`, `optimizer.apply`), written out so that
the phases can be timed apart.
"""

import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def kseg_step(name, keras_bn, keras_conv, batch, size):
    import keras
    import numpy as np
    import torch
    from train_step import NUM_CLASSES, _build

    import kseg
    import kseg._backend

    if keras_bn:
        kseg._backend.use_fused_batch_norm = lambda model: 0
    if keras_conv:
        kseg._backend.use_direct_conv = lambda model: 0
    model = _build(name, size, "channels_last")
    loss_fn = kseg.losses.SegmentationCrossEntropy()
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    y = torch.tensor(rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int32"))
    variables = model.trainable_variables

    def forward():
        out = model(x, training=True)
        out = out["main"] if isinstance(out, dict) else out
        return loss_fn(y, out)

    def backward(loss):
        model.zero_grad()
        loss.backward()

    def update():
        optimizer.apply([v.value.grad for v in variables], variables)

    return forward, backward, update


def smp_step(arch, encoder, kwargs, batch, size):
    import torch
    from _peer_smp import _import_smp

    smp = _import_smp()
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder, encoder_weights=None, classes=21, **kwargs).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    x = torch.rand(batch, 3, size, size) * 255.0
    y = torch.randint(0, 21, (batch, size, size))

    def forward():
        return loss_fn(model(x), y)

    def backward(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    return forward, backward, optimizer.step


def main(argv):
    import torch

    batch, size = 4, 256
    if argv[0] == "kseg":
        forward, backward, update = kseg_step(
            argv[1], "--keras-bn" in argv, "--keras-conv" in argv, batch, size
        )
    else:
        kwargs = json.loads(argv[3]) if len(argv) > 3 else {}
        forward, backward, update = smp_step(argv[1], argv[2], kwargs, batch, size)
    phases = {"built": rss_mb()}
    for _ in range(2):
        backward(forward())
        update()
    phases["after 2 warm-up steps"] = rss_mb()
    times = {}
    t0 = time.perf_counter()
    loss = forward()
    times["forward"] = time.perf_counter() - t0
    phases["after forward"] = rss_mb()
    t0 = time.perf_counter()
    backward(loss)
    times["backward"] = time.perf_counter() - t0
    del loss
    phases["after backward"] = rss_mb()
    t0 = time.perf_counter()
    update()
    times["optimizer"] = time.perf_counter() - t0
    phases["after optimizer"] = rss_mb()
    print("RSS MB by phase:", json.dumps({k: round(v) for k, v in phases.items()}))
    print("peak RSS MB:", round(peak_mb()))
    print("seconds:", json.dumps({k: round(v, 3) for k, v in times.items()}))
    with torch.profiler.profile(profile_memory=True) as prof:
        backward(forward())
        update()
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

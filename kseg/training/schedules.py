"""The poly learning-rate schedule with linear warm-up used by DeepLab, PSPNet and SegFormer."""

import keras
from keras import ops

from kseg._common import check_choice, check_float, check_int

#: How the warm-up joins the poly decay (see `PolyDecay`).
WARMUP_MODES = ("multiply", "sequential")


@keras.saving.register_keras_serializable(package="kseg")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Poly learning-rate decay with an optional linear warm-up.

    The "poly" policy of DeepLab (Chen et al., "DeepLab: Semantic Image
    Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully
    Connected CRFs", TPAMI 2017, section 4) and PSPNet, with power 0.9. The
    warm-up joins it in one of two ways, with `T = decay_steps`, `W =
    warmup_steps`, `f = warmup_start_factor`, `initial` and `end` the rates:

    `warmup_mode="multiply"` (the default; mmcv's `PolyLrUpdaterHook` with
    linear warm-up, mmsegmentation 0.x): the warm-up multiplies the poly value,
    so the curve is continuous and `T` counts every step, warm-up included:

    ```
    poly(t) = (initial - end) * (1 - min(t, T) / T) ** power + end
    warmup(t) = f + (1 - f) * min(t / W, 1)        (1 when W = 0)
    lr(t) = poly(t) * warmup(t)
    ```

    `warmup_mode="sequential"` (mmengine, mmsegmentation 1.x: `LinearLR(start_factor=f,
    begin=0, end=W)` then `PolyLR(eta_min=end, power=power, begin=W, end=T)`, as
    SegFormer's configs compose them): the warm-up rises linearly to `initial`
    at its last step, then the poly decay starts from there and reaches `end`
    at the last step `T - 1` (mmengine's schedulers span `end - begin - 1`
    steps, `total_iters` in `mmengine/optim/scheduler/param_scheduler.py`):

    ```
    lr(t) = initial * (f + (1 - f) * t / (W - 1))                    for t < W
    lr(t) = (initial - end) * (1 - min(t - W, N) / N) ** power + end  for t >= W
    ```

    with `N = T - W - 1` (`W < T` is required). Edge cases follow mmengine too:
    with `W = 1` the one warm-up step is `f * initial` and the poly decay starts
    from that value instead of `initial`; with `N = 0` the one poly step keeps
    `initial`.

    In both modes, the rate stays at its last value after `decay_steps`
    (`end_learning_rate`, but in the edge cases above). The step `t` is the
    optimizer's `iterations`, 0 at the first update, as mmengine's
    iteration count. With per-variable learning-rate multipliers
    (`kseg.training.AdamW`, `SGD`) the whole rate is multiplied, `end`
    included, whereas mmengine's `eta_min` is the same for every parameter
    group: the two agree when `end_learning_rate` is 0 (mmsegmentation's
    configs).

    Args:
        initial_learning_rate: rate at step 0 without warm-up (e.g. 0.01 for
            SGD with batch 16 on VOC).
        decay_steps: total number of training steps `T` (at least 1).
        power: exponent of the decay. Defaults to 0.9.
        end_learning_rate: final rate. Defaults to 0.0.
        warmup_steps: length of the linear warm-up `W`. Defaults to 0 (none).
        warmup_start_factor: fraction `f` of the rate at step 0 of the
            warm-up, in [0, 1]. Defaults to 0.1 (mmcv's `warmup_ratio`).
        warmup_mode: "multiply" or "sequential" (see above). Defaults to
            "multiply".
        name: optional name.

    Example:

    >>> schedule = PolyDecay(0.01, decay_steps=30000, warmup_steps=500)
    >>> optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    >>> # SegFormer (mmsegmentation 1.x): 1500 steps from 1e-6 of the rate, then linear decay.
    >>> segformer = PolyDecay(6e-5, 160000, power=1.0, warmup_steps=1500,
    ...                       warmup_start_factor=1e-6, warmup_mode="sequential")
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        power=0.9,
        end_learning_rate=0.0,
        warmup_steps=0,
        warmup_start_factor=0.1,
        warmup_mode="multiply",
        name="PolyDecay",
    ):
        super().__init__()
        self.initial_learning_rate = check_float(
            "initial_learning_rate", initial_learning_rate, minimum=0.0
        )
        self.decay_steps = check_int("decay_steps", decay_steps, minimum=1)
        self.power = check_float("power", power, minimum=0.0)
        self.end_learning_rate = check_float("end_learning_rate", end_learning_rate, minimum=0.0)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.warmup_start_factor = check_float(
            "warmup_start_factor", warmup_start_factor, minimum=0.0, maximum=1.0
        )
        self.warmup_mode = check_choice("warmup_mode", warmup_mode, WARMUP_MODES)
        if self.warmup_steps > self.decay_steps:
            raise ValueError(
                "Expected `warmup_steps` <= `decay_steps`. "
                f"Received: warmup_steps={self.warmup_steps}, decay_steps={self.decay_steps}"
            )
        if self.warmup_mode == "sequential" and self.warmup_steps >= self.decay_steps:
            raise ValueError(
                "Expected `warmup_steps` < `decay_steps` with warmup_mode='sequential' (the "
                "poly decay begins after the warm-up). "
                f"Received: warmup_steps={self.warmup_steps}, decay_steps={self.decay_steps}"
            )
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.warmup_mode == "sequential":
            return self._sequential(step)
        progress = ops.minimum(step, float(self.decay_steps)) / float(self.decay_steps)
        lr = (self.initial_learning_rate - self.end_learning_rate) * ops.power(
            1.0 - progress, self.power
        ) + self.end_learning_rate
        if self.warmup_steps > 0:
            ramp = ops.minimum(step / float(self.warmup_steps), 1.0)
            lr = lr * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * ramp)
        return lr

    def _sequential(self, step):
        """mmengine's LinearLR over [0, W) then PolyLR over [W, T), in closed form."""
        warmup, total, start = self.warmup_steps, self.decay_steps, self.warmup_start_factor
        # The value the warm-up leaves at its last step, which PolyLR starts from.
        peak = self.initial_learning_rate * (start if warmup == 1 else 1.0)
        span = total - warmup - 1  # PolyLR's total_iters; 0: its one step keeps the rate
        elapsed = ops.clip(step - float(warmup), 0.0, float(span))
        # (N - k) / N rather than 1 - k / N: exact near the end in float32.
        length = float(max(span, 1))
        lr = (peak - self.end_learning_rate) * ops.power(
            (length - elapsed) / length, self.power
        ) + self.end_learning_rate
        if warmup > 0:
            ramp = ops.minimum(step / float(max(warmup - 1, 1)), 1.0)
            warm = self.initial_learning_rate * (start + (1.0 - start) * ramp)
            lr = ops.where(step < float(warmup), warm, lr)
        return lr

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "warmup_mode": self.warmup_mode,
            "name": self.name,
        }


#: Alias: the same schedule under a descriptive name.
PolyLearningRateSchedule = PolyDecay

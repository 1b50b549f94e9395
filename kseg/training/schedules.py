"""The poly learning-rate schedule with linear warm-up used by DeepLab and PSPNet."""

import keras
from keras import ops

from kseg._common import check_float, check_int


@keras.saving.register_keras_serializable(package="kseg")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Poly learning-rate decay with an optional linear warm-up.

    The "poly" policy of DeepLab (Chen et al., "DeepLab: Semantic Image
    Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully
    Connected CRFs", TPAMI 2017, section 4) and PSPNet, with power 0.9:

    ```
    poly(t) = (initial - end) * (1 - min(t, T) / T) ** power + end
    warmup(t) = f + (1 - f) * min(t / W, 1)        (1 when W = 0)
    lr(t) = poly(t) * warmup(t)
    ```

    with `T = decay_steps`, `W = warmup_steps`, `f = warmup_start_factor`.
    The warm-up multiplies the poly value, as mmcv's linear warm-up does, so
    the curve is continuous and `decay_steps` counts every training step,
    warm-up included. After `decay_steps` the rate stays at
    `end_learning_rate`.

    Args:
        initial_learning_rate: rate at step 0 without warm-up (e.g. 0.01 for
            SGD with batch 16 on VOC).
        decay_steps: total number of training steps `T` (at least 1).
        power: exponent of the decay. Defaults to 0.9.
        end_learning_rate: final rate. Defaults to 0.0.
        warmup_steps: length of the linear warm-up `W`. Defaults to 0 (none).
        warmup_start_factor: fraction `f` of the rate at step 0 of the
            warm-up, in [0, 1]. Defaults to 0.1 (mmcv's `warmup_ratio`).
        name: optional name.

    Example:

    >>> schedule = PolyDecay(0.01, decay_steps=30000, warmup_steps=500)
    >>> optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    """

    def __init__(
        self,
        initial_learning_rate,
        decay_steps,
        power=0.9,
        end_learning_rate=0.0,
        warmup_steps=0,
        warmup_start_factor=0.1,
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
        if self.warmup_steps > self.decay_steps:
            raise ValueError(
                "Expected `warmup_steps` <= `decay_steps`. "
                f"Received: warmup_steps={self.warmup_steps}, decay_steps={self.decay_steps}"
            )
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step, float(self.decay_steps)) / float(self.decay_steps)
        lr = (self.initial_learning_rate - self.end_learning_rate) * ops.power(
            1.0 - progress, self.power
        ) + self.end_learning_rate
        if self.warmup_steps > 0:
            ramp = ops.minimum(step / float(self.warmup_steps), 1.0)
            lr = lr * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * ramp)
        return lr

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "name": self.name,
        }


#: Alias: the same schedule under a descriptive name.
PolyLearningRateSchedule = PolyDecay

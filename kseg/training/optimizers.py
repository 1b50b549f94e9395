"""SGD with the coupled L2 weight decay of Caffe and PyTorch (the papers' optimizer)."""

import keras
from keras import ops

from kseg._common import check_float


@keras.saving.register_keras_serializable(package="kseg")
class SGD(keras.optimizers.SGD):
    """Stochastic gradient descent with momentum and coupled L2 weight decay.

    `keras.optimizers.SGD(weight_decay=wd)` decays the weights apart from the
    gradient (decoupled: `w -= lr * wd * w` after the update). Caffe and
    `torch.optim.SGD(weight_decay=wd)`, which the segmentation papers use,
    instead add `wd * w` to the gradient before momentum, so the decay is
    accumulated by the momentum buffer: at momentum 0.9 it acts about 10x
    more strongly than Keras' decoupled decay with the same `wd`. This class
    does the latter; with `l2=wd` and constant learning rate `lr` one step is

    ```
    g = gradient + l2 * w
    velocity = momentum * velocity - lr * g
    w = w + velocity                           (nesterov: w + momentum * velocity - lr * g)
    ```

    which is exactly `torch.optim.SGD(lr, momentum, weight_decay=l2,
    nesterov=nesterov)` (dampening 0). Like Caffe (and Keras), the learning
    rate multiplies the gradient before it enters the velocity, whereas
    torch multiplies the buffer after; the two agree while the rate is
    constant and differ slightly while a schedule changes it.

    The decay applies to every trainable variable (kernels, biases and
    BatchNormalization scales and offsets alike, as in torch), except those
    named in `l2_exclude`.

    Args:
        learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule`
            (e.g. `kseg.training.PolyDecay`) or a callable. Defaults to 0.01.
        momentum: float in [0, 1]. Defaults to 0.0.
        nesterov: whether to use Nesterov momentum. Defaults to False.
        l2: coefficient of the coupled L2 decay (Caffe's `weight_decay`,
            torch's `weight_decay`), >= 0. Defaults to 0.0.
        l2_exclude: variables that `l2` leaves alone, given by name or path:
            a variable is excluded when its `name` (e.g. `"bias"`, `"gamma"`,
            `"beta"`) or its `path` (e.g. `"fc6/bias"`) is in this sequence.
            Defaults to `()`: every trainable variable is decayed.
        weight_decay: Keras' decoupled decay (see above). Defaults to None;
            it cannot be combined with `l2`.
        **kwargs: the other arguments of `keras.optimizers.SGD` (`clipnorm`,
            `use_ema`, `name`, ...).

    The optimizer serialises (`get_config`), so `.keras` files and
    `keras.callbacks.BackupAndRestore` keep its state; like
    `kseg.training.PolyDecay`, it must be registered before a compiled
    `.keras` file is loaded: `import kseg.training` first (`import kseg`
    alone does not import it).

    Example:

    >>> optimizer = kseg.training.SGD(0.01, momentum=0.9, l2=1e-4)
    >>> model.compile(optimizer=optimizer, loss=...)
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        nesterov=False,
        l2=0.0,
        l2_exclude=(),
        weight_decay=None,
        **kwargs,
    ):
        l2 = check_float("l2", l2, 0.0, None)
        momentum = check_float("momentum", momentum, 0.0, 1.0)
        if isinstance(l2_exclude, str):
            l2_exclude = (l2_exclude,)
        try:
            l2_exclude = tuple(l2_exclude)
        except TypeError:
            raise TypeError(
                "Expected `l2_exclude` to be a sequence of variable names or paths. "
                f"Received: l2_exclude={l2_exclude!r}"
            ) from None
        if not all(isinstance(item, str) for item in l2_exclude):
            raise TypeError(
                "Expected `l2_exclude` to be a sequence of variable names or paths "
                f"(strings). Received: l2_exclude={l2_exclude!r}"
            )
        if l2 and weight_decay:
            raise ValueError(
                "Expected at most one of `l2` (coupled decay, added to the gradient as in "
                "Caffe and torch) and `weight_decay` (Keras' decoupled decay). "
                f"Received: l2={l2}, weight_decay={weight_decay}"
            )
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=bool(nesterov),
            weight_decay=weight_decay,
            **kwargs,
        )
        self.l2 = l2
        self.l2_exclude = l2_exclude

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Decided here, on the Keras variables: in `update_step` a backend may
        # hand over its native variable, whose name differs.
        self._l2_mask = [
            not (v.name in self.l2_exclude or v.path in self.l2_exclude) for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and self._l2_mask[self._get_variable_index(variable)]:
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2, variable.dtype), variable),
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2, "l2_exclude": list(self.l2_exclude)}

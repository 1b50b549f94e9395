"""SGD and AdamW with the semantics of torch.optim, per-variable learning-rate multipliers and
weight-decay exclusions (the papers' optimizers, as mmsegmentation configures them)."""

import collections.abc
import math

import keras
from keras import ops

from kseg._common import check_float


def _check_keys(name, keys):
    """`keys` (a string or a sequence of strings) as a tuple of non-empty strings."""
    if isinstance(keys, str):
        keys = (keys,)
    try:
        keys = tuple(keys)
    except TypeError:
        raise TypeError(
            f"Expected `{name}` to be a sequence of variable names or paths. "
            f"Received: {name}={keys!r}"
        ) from None
    if not all(isinstance(key, str) and key for key in keys):
        raise TypeError(
            f"Expected `{name}` to be a sequence of variable names or paths "
            f"(non-empty strings). Received: {name}={keys!r}"
        )
    return keys


def _check_multipliers(lr_multipliers):
    """`lr_multipliers` as a dict of non-empty strings to floats >= 0 (`{}` for None)."""
    if lr_multipliers is None:
        return {}
    if not isinstance(lr_multipliers, collections.abc.Mapping) or not all(
        isinstance(key, str) and key for key in lr_multipliers
    ):
        raise TypeError(
            "Expected `lr_multipliers` to be a dict of variable-path substrings (non-empty "
            f"strings) to numbers, e.g. {{'decode_head': 10.0}}. "
            f"Received: lr_multipliers={lr_multipliers!r}"
        )
    return {
        key: check_float(f"lr_multipliers[{key!r}]", value, minimum=0.0)
        for key, value in lr_multipliers.items()
    }


def variable_groups(variables, lr_multipliers=None, decay_exclude=()):
    """The learning-rate multiplier and weight-decay flag of each variable, by its path.

    The rule of mmengine's `DefaultOptimWrapperConstructor` (`paramwise_cfg`'s
    `custom_keys`, which mmsegmentation's configs use): a key applies to every
    variable whose `path` (e.g. `"decode_head_fuse/kernel"`) contains it as a
    substring. When several keys of `lr_multipliers` match one variable, the
    longest wins, and among keys of the same length the first in alphabetical
    order (mmengine sorts the keys so and takes the first match). A variable
    that no key matches keeps the rate (multiplier 1). A variable is left out
    of the weight decay when any key of `decay_exclude` matches it.

    The two are independent: mmengine's one matching key sets both `lr_mult`
    and `decay_mult` (each 1 when not given), so there a variable that matches
    `"head"` (lr 10x) and `"norm"` (no decay) takes the settings of one key
    only, whereas here it gets both.

    Args:
        variables: the `keras.Variable`s (those an optimizer is built on).
        lr_multipliers: a dict of path substrings to learning-rate multipliers
            (>= 0), or None.
        decay_exclude: path substrings of the variables to leave undecayed.

    Returns:
        A list with one `(multiplier, decayed)` pair per variable.

    Raises:
        ValueError: when a key matches none of the variables (a misspelt key
            would otherwise change nothing, silently).

    Example:

    >>> groups = variable_groups(model.trainable_variables, {"classifier": 10.0}, ("norm",))
    """
    lr_multipliers = _check_multipliers(lr_multipliers)
    decay_exclude = _check_keys("decay_exclude", decay_exclude)
    paths = [variable.path for variable in variables]
    for name, keys in (("lr_multipliers", lr_multipliers), ("decay_exclude", decay_exclude)):
        unmatched = [key for key in keys if not any(key in path for path in paths)]
        if unmatched:
            shown = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
            raise ValueError(
                f"Expected every key of `{name}` to be part of the path of a variable that "
                f"the optimizer updates ({len(paths)} variables: {shown}); a key that "
                f"matches none is likely misspelt. Received: {name}={keys!r} "
                f"with keys matching no variable: {unmatched}"
            )
    # Longest key first, then alphabetical (mmengine's `sorted(sorted(keys), key=len,
    # reverse=True)`): the first key that matches a path is the one that applies.
    ordered = sorted(sorted(lr_multipliers), key=len, reverse=True)
    groups = []
    for path in paths:
        key = next((key for key in ordered if key in path), None)
        multiplier = 1.0 if key is None else lr_multipliers[key]
        groups.append((multiplier, not any(key in path for key in decay_exclude)))
    return groups


class _VariableGroups:
    """Per-variable learning rates and weight decay, for kseg's optimizers.

    The weight decay is applied in `update_step` with the variable's own
    learning rate (torch's parameter groups), so Keras' own decoupled decay,
    which `apply` runs before the update with the base rate for every
    variable, is switched off (`_apply_weight_decay`). Masks and multipliers
    are decided in `build`, on the Keras variables: in `update_step` a
    backend may hand over its native variable, whose name differs.
    """

    def _set_groups(self, lr_multipliers, decay_exclude):
        self.lr_multipliers = _check_multipliers(lr_multipliers)
        self.decay_exclude = _check_keys("decay_exclude", decay_exclude)

    def _build_groups(self, variables, excluded=()):
        groups = variable_groups(variables, self.lr_multipliers, self.decay_exclude)
        self._lr_scales = [scale for scale, _ in groups]
        # `excluded` holds names or paths (SGD's `l2_exclude`); Keras'
        # `exclude_from_weight_decay` (variables, or patterns of names) is honoured too.
        self._decay_mask = [
            decayed and not (v.name in excluded or v.path in excluded) and self._use_weight_decay(v)
            for v, (_, decayed) in zip(variables, groups)
        ]

    def _apply_weight_decay(self, variables):
        # Replaced by `_decay` in `update_step`: see the class docstring.
        return

    def _variable_learning_rate(self, learning_rate, variable):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        scale = self._lr_scales[self._get_variable_index(variable)]
        return learning_rate if scale == 1.0 else ops.multiply(learning_rate, scale)

    def _decays(self, variable):
        return self._decay_mask[self._get_variable_index(variable)]

    def _decay(self, variable, learning_rate):
        """Decoupled decay `w *= 1 - lr * weight_decay`, as torch's AdamW (and Keras) do."""
        if self.weight_decay and self._decays(variable):
            factor = 1.0 - learning_rate * ops.cast(self.weight_decay, variable.dtype)
            self.assign(variable, ops.multiply(variable, factor))

    def _groups_config(self):
        return {
            "lr_multipliers": dict(self.lr_multipliers),
            "decay_exclude": list(self.decay_exclude),
        }


_GROUPS_ARGS = """lr_multipliers: a dict of variable-path substrings to learning-rate
            multipliers (>= 0), e.g. `{"decode_head": 10.0}`: a variable whose
            `path` contains a key is updated with `multiplier` times the
            (scheduled) rate, also in its decoupled weight decay; the longest
            matching key wins (mmengine's `custom_keys` rule; see
            `kseg.training.variable_groups`). Defaults to None (1 for all).
        decay_exclude: path substrings of the variables to leave undecayed,
            e.g. `("norm",)`: a variable whose `path` contains one of them is
            not decayed. Defaults to `()`. Keras' `exclude_from_weight_decay`
            (variables, or regular expressions searched in `variable.name`,
            the last part of the path only) excludes too."""


@keras.saving.register_keras_serializable(package="kseg")
class SGD(_VariableGroups, keras.optimizers.SGD):
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
    named in `l2_exclude` or matched by `decay_exclude`. With
    `lr_multipliers` and `decay_exclude` a step equals torch's with one
    parameter group per multiplier and exclusion (`lr * multiplier`,
    `weight_decay` 0 for the excluded).

    Args:
        learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule`
            (e.g. `kseg.training.PolyDecay`) or a callable. Defaults to 0.01.
        momentum: float in [0, 1]. Defaults to 0.0.
        nesterov: whether to use Nesterov momentum. Defaults to False.
        l2: coefficient of the coupled L2 decay (Caffe's `weight_decay`,
            torch's `weight_decay`), >= 0. Defaults to 0.0.
        l2_exclude: variables that the decay leaves alone, given by exact name
            or path: a variable is excluded when its `name` (e.g. `"bias"`,
            `"gamma"`, `"beta"`) or its `path` (e.g. `"fc6/bias"`) is in this
            sequence. Defaults to `()`.
        {groups}
        weight_decay: Keras' decoupled decay (see above), applied with each
            variable's own rate. Defaults to None; it cannot be combined with
            `l2`.
        **kwargs: the other arguments of `keras.optimizers.SGD` (`clipnorm`,
            `use_ema`, `name`, ...).

    The optimizer serialises (`get_config`), so `.keras` files and
    `keras.callbacks.BackupAndRestore` keep its state; like
    `kseg.training.PolyDecay`, it must be registered before a compiled
    `.keras` file is loaded: `import kseg.training` first (`import kseg`
    alone does not import it).

    Example:

    >>> optimizer = kseg.training.SGD(0.01, momentum=0.9, l2=1e-4)
    >>> heads = kseg.training.SGD(0.01, momentum=0.9, l2=1e-4, lr_multipliers={{"head": 10.0}})
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
        lr_multipliers=None,
        decay_exclude=(),
        **kwargs,
    ):
        l2 = check_float("l2", l2, 0.0, None)
        momentum = check_float("momentum", momentum, 0.0, 1.0)
        l2_exclude = _check_keys("l2_exclude", l2_exclude)
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
        self._set_groups(lr_multipliers, decay_exclude)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._build_groups(variables, excluded=self.l2_exclude)

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = self._variable_learning_rate(learning_rate, variable)
        if self.l2 and self._decays(variable):
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2, variable.dtype), variable),
            )
        self._decay(variable, learning_rate)  # Keras' decoupled `weight_decay`, if given
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {
            **super().get_config(),
            "l2": self.l2,
            "l2_exclude": list(self.l2_exclude),
            **self._groups_config(),
        }


@keras.saving.register_keras_serializable(package="kseg")
class AdamW(_VariableGroups, keras.optimizers.AdamW):
    """AdamW as `torch.optim.AdamW` computes it, with per-variable rates and decay.

    Adam with decoupled weight decay (Loshchilov and Hutter, "Decoupled Weight
    Decay Regularization", ICLR 2019, Algorithm 2, whose decay `eta_t * lambda`
    torch and Keras write `lr * weight_decay`). With learning rate `lr`
    (scheduled, times the variable's multiplier), at step `t = 1, 2, ...`:

    ```
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g ** 2        (amsgrad: v_max = max(v_max, v), used for v)
    w = w * (1 - lr * weight_decay)               (0 for the variables of `decay_exclude`)
    w = w - lr / (1 - beta_1 ** t) * m / (sqrt(v) / sqrt(1 - beta_2 ** t) + epsilon)
    ```

    which is `torch.optim.AdamW` with one
    parameter group per multiplier and exclusion: that group's `lr` is `lr *
    multiplier` and its `weight_decay` is 0 for the excluded, so the decay
    too uses the group's rate (`p *= 1 - lr_group * weight_decay_group`).
    This differs from `keras.optimizers.AdamW` in three ways: Keras adds
    `epsilon` to `sqrt(v)` before the bias correction of `v` ("epsilon hat",
    and its default is 1e-7), its decay uses the base rate for every
    variable, and its default `weight_decay` is 0.004; the defaults here are
    torch's (`epsilon` 1e-8, `weight_decay` 0.01).

    SegFormer (Xie et al., NeurIPS 2021) as mmsegmentation trains it:

    >>> optimizer = kseg.training.AdamW(
    ...     kseg.training.PolyDecay(6e-5, 160000, power=1.0, warmup_steps=1500,
    ...                             warmup_start_factor=1e-6, warmup_mode="sequential"),
    ...     weight_decay=0.01,
    ...     lr_multipliers={{"decode_head": 10.0, "classifier": 10.0}},
    ...     decay_exclude=("norm",),
    ... )

    Args:
        learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule`
            or a callable. Defaults to 0.001.
        weight_decay: decoupled decay coefficient, >= 0. Defaults to 0.01.
        beta_1, beta_2: the moments' decay rates. Default to 0.9 and 0.999.
        epsilon: added to the bias-corrected `sqrt(v)` (torch's `eps`).
            Defaults to 1e-8.
        amsgrad: whether to use the maximum of the past `v` (AMSGrad).
            Defaults to False.
        {groups}
        **kwargs: the other arguments of `keras.optimizers.AdamW`
            (`clipnorm`, `use_ema`, `name`, ...).

    Like `kseg.training.SGD`, it serialises and must be registered (`import
    kseg.training`) before a compiled `.keras` file is loaded.
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.01,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        amsgrad=False,
        lr_multipliers=None,
        decay_exclude=(),
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=check_float("weight_decay", weight_decay, minimum=0.0),
            beta_1=check_float("beta_1", beta_1, 0.0, 1.0),
            beta_2=check_float("beta_2", beta_2, 0.0, 1.0),
            epsilon=check_float("epsilon", epsilon, minimum=0.0),
            amsgrad=bool(amsgrad),
            **kwargs,
        )
        self._set_groups(lr_multipliers, decay_exclude)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._build_groups(variables)

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = self._variable_learning_rate(learning_rate, variable)
        gradient = ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        step = ops.cast(self.iterations + 1, variable.dtype)
        correction_1 = _bias_correction(self.beta_1, step)
        correction_2 = _bias_correction(self.beta_2, step)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1.0 - self.beta_2))
        if self.amsgrad:
            v_max = self._velocity_hats[index]
            self.assign(v_max, ops.maximum(v_max, v))
            v = v_max
        self._decay(variable, learning_rate)
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), self.epsilon)
        self.assign_sub(
            variable,
            ops.multiply(ops.divide(learning_rate, correction_1), ops.divide(m, denominator)),
        )

    def get_config(self):
        return {**super().get_config(), **self._groups_config()}


def _bias_correction(beta, step):
    """`1 - beta ** step`, accurate in float32 too.

    Computed as `-expm1(step * log(beta))` with `log(beta)` in double precision:
    `1 - power(beta, step)` in float32 loses about 1e-5 of 0.001 (beta 0.999 is
    0.99900001 in float32), which moved the weights 10x further from torch's
    (which computes the correction in Python floats) than rounding does.
    """
    if beta == 0.0:
        return ops.ones_like(step)
    return ops.negative(ops.expm1(ops.multiply(step, math.log(beta))))


for _optimizer in (SGD, AdamW):
    if _optimizer.__doc__ is not None:  # None under `python -OO`
        _optimizer.__doc__ = _optimizer.__doc__.format(groups=_GROUPS_ARGS)

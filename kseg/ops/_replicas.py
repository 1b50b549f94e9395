"""Cross-replica sums and gathers for losses and metrics under `tf.distribute`.

Backend-specific code (DESIGN.md): only TensorFlow runs one copy of a training step
per replica (`tf.distribute.MirroredStrategy`, `MultiWorkerMirroredStrategy`), each
seeing its slice of the global batch. JAX's `keras.distribution.DataParallel` runs
one SPMD program over the global batch and torch has no distribution in Keras 3.15,
so on those backends every function here is the identity.

Keras' convention on TensorFlow (`keras/src/losses/loss.py`,
`scale_loss_for_distribution`, and the trainer's `unscale_loss_for_distribution`):
in a step on `N` replicas each replica returns its loss divided by `N`; the
gradients are summed over the replicas, and the reported loss is multiplied back by
`N` and averaged. kseg's losses compute the loss of the global batch on every
replica from cross-replica sums (differentiable: the gradient of an all-reduce sum
is an all-reduce sum, `tf.distribute.ReplicaContext.all_reduce`) and divide it by
`num_replicas()`, so that the summed gradients and the reported value are those of
one device on the whole batch.
"""

import keras


def replica_context():
    """The TensorFlow replica context of a step on several replicas, or None.

    None on JAX and torch, outside `strategy.run` (cross-replica context), and
    under the default (one-device) strategy.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def num_replicas():
    """Number of replicas whose step runs in sync with this one (1 outside `tf.distribute`)."""
    context = replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def sum_over_replicas(values):
    """`values` (a tensor or a list / tuple of tensors) summed over the replicas.

    Differentiable. Every replica must call it the same number of times in the
    same order (it is a collective operation).
    """
    context = replica_context()
    if context is None:
        return values
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def gather_over_replicas(values):
    """The replicas' float tensors concatenated along axis 0, in replica order.

    `values` is a float tensor or a list of float tensors with the same leading size
    on this replica (replicas may hold different sizes, e.g. the last batch of an
    epoch). Differentiable: each replica's slice gets the sum of the gradients that
    all replicas give it. Built on an all-reduce sum of zero-padded copies, which
    costs `N` times a gather's traffic; `ReplicaContext.all_gather` aborted with a
    collective-type mismatch next to the loss's all-reduces (TensorFlow 2.21, CPU).
    """
    context = replica_context()
    if context is None:
        return values
    import tensorflow as tf

    single = not isinstance(values, (list, tuple))
    values = [values] if single else list(values)
    count = tf.shape(values[0])[0]
    replica = context.replica_id_in_sync_group
    one_hot = tf.one_hot(replica, context.num_replicas_in_sync, dtype=tf.float32)
    sizes = tf.cast(
        context.all_reduce(tf.distribute.ReduceOp.SUM, one_hot * tf.cast(count, "float32")), "int32"
    )
    start = tf.reduce_sum(sizes[:replica])
    after = tf.reduce_sum(sizes) - start - count
    padded = [tf.pad(v, [[start, after]] + [[0, 0]] * (len(v.shape) - 1)) for v in values]
    gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, padded)
    return gathered[0] if single else list(gathered)

"""Data-parallel training on several devices or hosts with the engines Keras 3.15 has.

- JAX: `keras.distribution.DataParallel` over all devices (of every host, after
  `keras.distribution.initialize`, when several hosts take part).
- TensorFlow: `tf.distribute.MirroredStrategy` over the local devices, or
  `tf.distribute.MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a cluster.
  The model must be built and compiled inside `plan.scope()`.
- torch: `torch.distributed`, one process per device, launched by `torchrun`
  (NCCL between GPUs, gloo between CPUs; several hosts through torchrun's
  rendezvous). Keras 3.15 has no distribution for torch; kseg's (`plan.prepare(model)`
  after `compile`) keeps `model.fit` and makes its train and test steps average the
  gradients over the processes and sum the metrics' states, so that every process
  holds the results of the global batch.

BatchNorm statistics: on JAX the step runs on the whole sharded batch, so
`BatchNormalization` already computes the statistics of the global batch; on
TensorFlow and torch each replica computes its own unless
`synchronize_batch_norm(model)` makes them all-reduce (the recipes' `--sync-bn`).

Library code (the training recipes use it, and so can users' scripts): it decides
the replicas and the per-device batch before anything is built. kseg's losses and
metrics are exact on several replicas (`kseg.losses`, `kseg.metrics.ConfusionMatrix`).
"""

import contextlib
import functools
import os

import keras

from kseg import _backend
from kseg.training import _keras_internals

#: Values of `choice` (the recipes' `--distribute`).
CHOICES = ("auto", "none", "local", "multihost")
#: The variables that `torchrun` sets in every process it starts.
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Gradients are averaged in buckets of about this many bytes (one all-reduce each).
_BUCKET_BYTES = 25 << 20


class DistributionPlan:
    """Where a training runs: the replicas and the scope to build the model in.

    Attributes:
        kind: `"none"` (one device), `"data_parallel"` (JAX), `"mirrored"` or
            `"multi_worker_mirrored"` (TensorFlow), `"torch_distributed"` (torch).
        num_replicas: number of replicas the global batch is split across.
        strategy: the `tf.distribute.Strategy` on TensorFlow, else None.
        distribution: the `keras.distribution.DataParallel` on JAX, else None.
        description: one line for the run's log.
        rank: this process's rank among the `torch.distributed` processes (0
            elsewhere): it reads shard `rank` of the data (`shard`).
        is_chief: whether this process writes the run's files (logs, checkpoints,
            backups): process 0 of a `torch.distributed` run, every process elsewhere.
    """

    def __init__(self, kind, num_replicas, description, strategy=None, distribution=None, rank=0):
        self.kind = kind
        self.num_replicas = int(num_replicas)
        self.description = description
        self.strategy = strategy
        self.distribution = distribution
        self.rank = int(rank)

    @property
    def is_chief(self):
        return self.rank == 0

    @property
    def shard(self):
        """`(index, count)` of this process's share of the data; `(0, 1)` but on torch.

        JAX and TensorFlow split each global batch across the devices themselves; each
        `torch.distributed` process reads its own share (`kseg.data.train_pipeline`'s
        `shard`).
        """
        if self.kind == "torch_distributed":
            return self.rank, self.num_replicas
        return 0, 1

    def prepare(self, model):
        """Readies a compiled `model` for `fit` and `evaluate` on this plan's replicas.

        torch (`torch.distributed`): copies process 0's weights to every process and
        makes the model's train and test steps run across the processes (see
        `distribute_torch_steps`). Elsewhere nothing: the model was built in `scope()`.
        Call it after `compile`, before `fit`.

        Returns:
            `model`.
        """
        if self.kind == "torch_distributed":
            distribute_torch_steps(model)
        return model

    def scope(self):
        """Context in which to build and compile the model (TensorFlow's strategy scope)."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def per_replica_batch(self, global_batch, name="--batch-size"):
        """The batch of one replica; raises `ValueError` when `global_batch` does not split.

        Args:
            global_batch: int, the batch of one step over all replicas.
            name: how the batch is called in the error message.
        """
        if global_batch % self.num_replicas:
            raise ValueError(
                f"{name} is the global batch, split evenly across the {self.num_replicas} "
                f"replicas: it must be a multiple of {self.num_replicas}. Received: "
                f"{name} {global_batch} on {self.num_replicas} replicas"
            )
        return global_batch // self.num_replicas


def _multihost_requested(backend):
    if backend == "tensorflow":
        return bool(os.environ.get("TF_CONFIG"))
    if backend == "jax":
        return bool(os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"))
    return False


def _torchrun_world():
    """The number of processes torchrun started, or None outside torchrun."""
    if not all(os.environ.get(name) for name in TORCHRUN_VARIABLES):
        return None
    return int(os.environ["WORLD_SIZE"])


def _accelerators(backend):
    """The local accelerators the backend sees (JAX: GPUs or TPUs; TensorFlow, torch: GPUs)."""
    if backend == "jax":
        import jax

        return [d for d in jax.local_devices() if d.platform != "cpu"]
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.list_logical_devices("GPU")
    if backend == "torch":
        import torch

        return list(range(torch.cuda.device_count()))
    return []


def device_kind(backend=None):
    """ "gpu" when the Keras backend sees a local GPU, otherwise "cpu".

    What the recipes choose `jit_compile` and mixed precision by. On TensorFlow it
    lists the logical devices, so call it after `plan_distribution`.

    Args:
        backend: a Keras backend name; defaults to `keras.backend.backend()`.
    """
    backend = backend or keras.backend.backend()
    accelerators = _accelerators(backend)
    if backend == "jax":
        return "gpu" if any(d.platform == "gpu" for d in accelerators) else "cpu"
    return "gpu" if accelerators else "cpu"


def plan_distribution(choice="auto"):
    """Sets up the distribution named by `choice` and returns its `DistributionPlan`.

    Call it before building the model (and, on TensorFlow, before anything touches
    the devices). Choices:
    - `"auto"`: several hosts when the launcher describes them (`TF_CONFIG` on
      TensorFlow, `KERAS_DISTRIBUTION_JOB_ADDRESSES` on JAX); otherwise every local
      accelerator when there is more than one; otherwise one device. On torch: the
      processes of `torchrun` when it started more than one, otherwise one device.
    - `"none"`: one device.
    - `"local"`: every local device of the default kind (the accelerators, or the
      CPU devices when there is none: the virtual CPUs of
      `XLA_FLAGS=--xla_force_host_platform_device_count=N` on JAX, or the logical
      CPUs of `tf.config.set_logical_device_configuration` on TensorFlow).
    - `"multihost"`: several hosts. JAX: `keras.distribution.initialize()` (reads
      `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and
      `KERAS_DISTRIBUTION_PROCESS_ID`), then data parallelism over the devices of all
      hosts. TensorFlow: `MultiWorkerMirroredStrategy` from `TF_CONFIG` (required).

    On torch, `"local"` and `"multihost"` both mean the processes that `torchrun`
    started (its `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`;
    `torchrun --nproc_per_node=N` on one host, with `--nnodes` and a rendezvous
    endpoint on several): it joins them in `torch.distributed.init_process_group`
    ("nccl" with GPUs, each process on `cuda:LOCAL_RANK`; "gloo" on CPUs). The
    model is then prepared with `plan.prepare(model)` after `compile`.

    On JAX the distribution is set globally (`keras.distribution.set_distribution`).

    Raises:
        ValueError: for an unknown `choice`, `"local"` or `"multihost"` on torch
            outside `torchrun` (`"none"` inside it with several processes), or
            `"multihost"` on TensorFlow without `TF_CONFIG`.
    """
    if choice not in CHOICES:
        raise ValueError(
            f"Expected `distribute` to be one of {', '.join(CHOICES)}. Received: {choice!r}"
        )
    backend = keras.backend.backend()
    if choice == "none":
        world = _torchrun_world() if backend == "torch" else None
        if world is not None and world > 1:
            raise ValueError(
                f"torchrun started {world} processes, which would each train alone and "
                "write the same files: pass distribute='local' (or 'auto', 'multihost') to "
                "train them together, or start one process. Received: distribute='none' "
                f"with WORLD_SIZE={world}"
            )
        return DistributionPlan("none", 1, "one device")
    if backend == "torch":
        return _torch_plan(choice)
    if backend not in ("jax", "tensorflow"):
        raise ValueError(
            f"Multi-device training is not available on the {backend} backend. Set "
            "KERAS_BACKEND to jax, tensorflow or torch, or train on one device "
            f"(--distribute none). Received: distribute={choice!r}"
        )
    if choice == "auto":
        if _multihost_requested(backend):
            choice = "multihost"
        elif len(_accelerators(backend)) > 1:
            choice = "local"
        else:
            return DistributionPlan("none", 1, "one device")
    if backend == "jax":
        return _jax_plan(choice)
    return _tensorflow_plan(choice)


def _jax_plan(choice):
    if choice == "multihost":
        keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    hosts = "" if choice == "local" else " on all hosts"
    return DistributionPlan(
        "data_parallel",
        len(devices),
        f"keras.distribution.DataParallel over {len(devices)} devices{hosts}",
        distribution=distribution,
    )


def _tensorflow_plan(choice):
    import tensorflow as tf

    if choice == "multihost":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "distribute='multihost' on TensorFlow needs the cluster in the TF_CONFIG "
                "environment variable (https://www.tensorflow.org/guide/distributed_training). "
                "Received: TF_CONFIG unset"
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        kind, where = "multi_worker_mirrored", "MultiWorkerMirroredStrategy"
    else:
        devices = _accelerators("tensorflow") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        kind, where = "mirrored", "MirroredStrategy"
    replicas = strategy.num_replicas_in_sync
    return DistributionPlan(
        kind, replicas, f"tf.distribute.{where} over {replicas} replicas", strategy=strategy
    )


def _torch_plan(choice):
    import torch

    world = _torchrun_world()
    if world is None:
        if choice == "auto":
            count = len(_accelerators("torch"))
            note = (
                f" ({count} GPUs visible: launch with torchrun --nproc_per_node={count} "
                "to train on all)"
            )
            return DistributionPlan("none", 1, "one device" + (note if count > 1 else ""))
        unset = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
        raise ValueError(
            f"distribute={choice!r} on the torch backend trains one process per device, "
            "started by torchrun (`torchrun --nproc_per_node=N recipes/train.py ...`; "
            "several hosts: `--nnodes`, `--rdzv-backend c10d --rdzv-endpoint HOST:PORT`), "
            f"which sets {', '.join(TORCHRUN_VARIABLES)}. Received: distribute={choice!r} "
            f"with {', '.join(unset)} unset"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        # Keras' torch backend puts tensors on "cuda", the current device.
        torch.cuda.set_device(local_rank)
    if world == 1:
        return DistributionPlan("none", 1, "one device (torchrun started one process)")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    hosts = max(world // max(local_world, 1), 1)
    where = f"{world} processes" + (f" on {hosts} hosts" if hosts > 1 else "")
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return DistributionPlan(
        "torch_distributed",
        world,
        f"torch.distributed ({dist.get_backend()}) over {where}; this is process "
        f"{dist.get_rank()} on {device}",
        rank=dist.get_rank(),
    )


def distribute_torch_steps(model, group=None):
    """Makes a compiled Keras model train and evaluate across `torch.distributed` processes.

    Keras 3.15 has no distribution for torch; this keeps `model.fit` and
    `model.evaluate` as they are and changes the model's own steps (the instance's
    `train_step` and `test_step`, around Keras' steps), so that `N` processes, each
    given its own share of a global batch, train as one device on the whole batch:

    - The step runs inside `kseg._backend.torch_replica_step`, where kseg's losses take
      their sums over the pixels of every process (and synchronised BatchNorm its
      moments): every process computes the loss of the global batch.
    - The gradients are averaged over the processes before the optimizer applies
      them, in a few flattened buckets (one all-reduce each; about 25 MB). The
      average is the gradient of the global loss (see `kseg._backend`), for kseg's
      losses, Keras' own mean losses (equal shares) and regularisation losses alike.
    - After the step, what each process added to a metric's variables (those with
      `aggregation="sum"`: the confusion matrix, the loss trackers' totals and
      counts) is summed over the processes, and every process holds the global
      state: each pixel counted once, and the same results on every process, from
      the metrics as from callbacks that read them. `"mean"` variables take the
      average, `"only_first_replica"` ones process 0's value.
    - Process 0's weights and optimizer state are copied to every process now.

    Every process must run the same steps (the same number of batches in `fit` and
    `evaluate`); give each its own shard of the data (`DistributionPlan.shard`).
    Without `synchronize_batch_norm`, BatchNorm normalises with the statistics of
    the process's own images and each process keeps its own moving statistics.

    Args:
        model: a compiled `keras.Model` (`jit_compile=False`).
        group: the `torch.distributed` process group; None: the default group.

    Returns:
        `model`.

    Raises:
        ValueError: on another backend than torch, before `torch.distributed` is
            initialised, for a model not compiled, or compiled with `jit_compile=True`.
    """
    backend = keras.backend.backend()
    if backend != "torch":
        raise ValueError(
            "distribute_torch_steps() is for the torch backend (JAX and TensorFlow "
            f"distribute with plan_distribution's scope). Received: backend {backend!r}"
        )
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError(
            "distribute_torch_steps() needs torch.distributed initialised: call "
            "kseg.training.plan_distribution() in every process started by torchrun "
            "first. Received: torch.distributed not initialised"
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "distribute_torch_steps() takes a compiled model: call it after "
            f"`model.compile(...)`. Received: model {model.name!r} not compiled"
        )
    if model.jit_compile:
        raise ValueError(
            "distribute_torch_steps() runs collectives inside the step, which torch.compile "
            "does not trace: compile the model with jit_compile=False. Received: "
            f"jit_compile={model.jit_compile!r}"
        )
    if getattr(model, "_kseg_distributed_steps", False):
        return model  # already done
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    # The weights (moving statistics included) and the optimizer's state; not the random
    # generators' seeds.
    _broadcast_variables(list(model.weights) + list(model.optimizer.variables), group)
    own_train_step, own_test_step = type(model).train_step, type(model).test_step
    optimizer = model.optimizer
    own_apply = optimizer.apply

    def apply(grads, trainable_variables=None):
        if _backend.torch_step_group() is not None:
            grads = average_gradients(grads, group)
        return own_apply(grads, trainable_variables)

    def across_processes(own_step):
        """`own_step` in this process, then every metric's update summed over the group."""

        def step(data):
            before = _metric_values(model)
            with _backend.torch_replica_step(group):
                own_step(model, data)
            _sum_metric_updates(model, before, group)
            return model.get_metrics_result()

        return step

    train_step, test_step = across_processes(own_train_step), across_processes(own_test_step)

    optimizer.apply = apply
    model.train_step = train_step
    model.test_step = test_step
    model._kseg_distributed_steps = True
    return model


def _broadcast_variables(variables, group):
    """Copies process 0's values of `variables` to every process (one broadcast per dtype)."""
    import torch.distributed as dist

    source = dist.get_global_rank(group, 0) if group is not None else 0
    values = [v.value.detach() for v in variables]
    for indices, flat in _buckets(values, None):
        dist.broadcast(flat, source, group=group)
        for index, value in zip(indices, _unflatten(flat, [values[i] for i in indices])):
            variables[index].assign(value)


def _buckets(tensors, limit):
    """`(indices, flat)` pairs: `tensors` (None skipped) grouped by dtype, and in groups
    of at most about `limit` bytes when it is given; `flat` holds the tensors at
    `indices` one after the other, flattened."""
    import torch

    by_dtype = {}
    for index, tensor in enumerate(tensors):
        if tensor is not None:
            by_dtype.setdefault(tensor.dtype, []).append(index)
    for indices in by_dtype.values():
        chunk, size = [], 0
        for index in indices:
            nbytes = tensors[index].numel() * tensors[index].element_size()
            if chunk and limit is not None and size + nbytes > limit:
                yield chunk, torch.cat([tensors[i].detach().reshape(-1) for i in chunk])
                chunk, size = [], 0
            chunk.append(index)
            size += nbytes
        yield chunk, torch.cat([tensors[i].detach().reshape(-1) for i in chunk])


def _unflatten(flat, like):
    """`flat` cut into tensors of the shapes of `like` (views)."""
    out, start = [], 0
    for tensor in like:
        size = tensor.numel()
        out.append(flat[start : start + size].view(tensor.shape))
        start += size
    return out


def average_gradients(grads, group=None, bucket_bytes=_BUCKET_BYTES):
    """`grads` (torch tensors, None kept) averaged over the processes of `group`.

    One all-reduce per bucket of about `bucket_bytes` (None: one per dtype); on gloo
    one flattened all-reduce is much faster than one per tensor (benchmarks/README.md,
    "Data-parallel training on torch").
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    averaged = list(grads)
    for indices, flat in _buckets(averaged, bucket_bytes):
        dist.all_reduce(flat, group=group)
        flat /= world
        for index, value in zip(indices, _unflatten(flat, [averaged[i] for i in indices])):
            averaged[index] = value
    return averaged


def _metric_values(model):
    """`{id(variable): a copy of its value}` of every metric variable of `model`."""
    return {id(v): v.value.detach().clone() for v in model.metrics_variables}


def _sum_metric_updates(model, before, group):
    """Sums over the processes what each added to the metrics since `before` (see
    `distribute_torch_steps`); every process then holds the global state."""
    import torch
    import torch.distributed as dist

    variables = [v for v in model.metrics_variables]
    summed, averaged, first = [], [], []
    for v in variables:
        aggregation = getattr(v, "aggregation", "none")
        if aggregation == "sum":
            summed.append(v)
        elif aggregation == "mean":
            averaged.append(v)
        elif aggregation == "only_first_replica":
            first.append(v)
    # A variable created during the step (Keras builds the compiled metrics at their
    # first update) started from zero, as every summed metric variable does.
    starts = [before.get(id(v)) for v in summed]
    starts = [torch.zeros_like(v.value) if s is None else s for v, s in zip(summed, starts)]
    deltas = [v.value.detach() - s for v, s in zip(summed, starts)]
    for indices, flat in _buckets(deltas, None):
        dist.all_reduce(flat, group=group)
        for index, value in zip(indices, _unflatten(flat, [deltas[i] for i in indices])):
            summed[index].assign(starts[index] + value)
    world = dist.get_world_size(group)
    values = [v.value.detach() for v in averaged]
    for indices, flat in _buckets(values, None):
        dist.all_reduce(flat, group=group)
        for index, value in zip(indices, _unflatten(flat, [values[i] for i in indices])):
            averaged[index].assign(value / world if value.is_floating_point() else value // world)
    _broadcast_variables(first, group)


def _config_unsynchronized(layer):
    config = type(layer).get_config(layer)
    config["synchronized"] = False
    return config


def _walk(layer):
    """`layer` and every layer it holds, however nested.

    Keras tracks the sub-layers of any layer (a kseg `ASPP`'s `ConvBNAct` branches, a
    backbone inside a builder's model, a BatchNorm inside those); `.layers` lists
    only a Model's own, so a walk of it misses the BatchNorm of kseg's layers.
    """
    return _keras_internals.nested_layers(layer)


def _synchronized_moments(layer, inputs, mask):
    """The batch moments of a synchronised BatchNorm on torch (over every process)."""
    rank = len(inputs.shape)
    axis = layer.axis % rank
    axes = [a for a in range(rank) if a != axis]
    return _backend.synchronized_moments(inputs, axes, mask)


def synchronize_batch_norm(model):
    """Makes every `BatchNormalization` of `model` use the statistics of the global batch.

    Each replica of a data-parallel step otherwise normalises with the mean and
    variance of its own share of the batch. TensorFlow (`tf.distribute`): Keras'
    `BatchNormalization(synchronized=True)` all-reduces them. torch
    (`torch.distributed`, `DistributionPlan.prepare`): the sums of the inputs, of
    their squares and the counts are all-reduced, differentiably, inside kseg's
    distributed step (outside it, and in one process, the layer computes its own
    moments); every process then also keeps the same moving statistics. Any
    `keras.layers.BatchNormalization` is changed, subclasses included: on torch the
    layer runs `keras.layers.BatchNormalization.call` (a subclass's faster path would
    skip the synchronisation) and its `synchronized` attribute is True. Nested
    models (a backbone inside a builder's model) are included. Call it before
    `compile`.

    Synchronisation belongs to the training run, not to the model: the layers'
    saved config keeps `synchronized=False`, so a checkpoint written during the
    run loads on every backend (Keras refuses `synchronized=True` outside
    TensorFlow). On JAX there is nothing to do: `keras.distribution.DataParallel`
    runs BatchNorm on the whole sharded batch, so its statistics are already the
    global batch's.

    Args:
        model: a `keras.Model`.

    Returns:
        The number of `BatchNormalization` layers changed.

    Raises:
        ValueError: on JAX (or another backend than TensorFlow and torch).
    """
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "torch"):
        reason = (
            "on JAX BatchNorm statistics are already those of the global batch"
            if backend == "jax"
            else f"the {backend} backend trains on one device"
        )
        raise ValueError(
            "synchronize_batch_norm() applies to TensorFlow's tf.distribute and to "
            f"torch.distributed only: {reason}. Received: backend {backend!r}"
        )
    changed = 0
    seen = set()
    for layer in _walk(model):
        if id(layer) in seen or not isinstance(layer, keras.layers.BatchNormalization):
            continue
        seen.add(id(layer))
        layer.synchronized = True
        layer.get_config = functools.partial(_config_unsynchronized, layer)
        if backend == "torch":
            layer.call = functools.partial(keras.layers.BatchNormalization.call, layer)
            _keras_internals.set_batch_norm_moments(
                layer, functools.partial(_synchronized_moments, layer)
            )
        changed += 1
    return changed

"""Data-parallel training on several devices or hosts with the engines Keras 3.15 has.

- JAX: `keras.distribution.DataParallel` over all devices (of every host, after
  `keras.distribution.initialize`, when several hosts take part).
- TensorFlow: `tf.distribute.MirroredStrategy` over the local devices, or
  `tf.distribute.MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a cluster.
  The model must be built and compiled inside `plan.scope()`.
- torch: none (Keras 3.15 has no distribution for torch); asking for one raises.

BatchNorm statistics: on JAX the step runs on the whole sharded batch, so
`BatchNormalization` already computes the statistics of the global batch; on
TensorFlow each replica computes its own unless `synchronize_batch_norm(model)`
makes them all-reduce (the recipes' `--sync-bn`).

Library code (the training recipes use it, and so can users' scripts): it decides
the replicas and the per-device batch before anything is built. kseg's losses and
metrics are exact on several replicas (`kseg.losses`, `kseg.metrics.ConfusionMatrix`).
"""

import contextlib
import functools
import os

import keras

from kseg.training import _keras_internals

#: Values of `choice` (the recipes' `--distribute`).
CHOICES = ("auto", "none", "local", "multihost")
_SCALING_BACKENDS = "JAX (keras.distribution.DataParallel) and TensorFlow (tf.distribute)"


class DistributionPlan:
    """Where a training runs: the replicas and the scope to build the model in.

    Attributes:
        kind: `"none"` (one device), `"data_parallel"` (JAX), `"mirrored"` or
            `"multi_worker_mirrored"` (TensorFlow).
        num_replicas: number of replicas the global batch is split across.
        strategy: the `tf.distribute.Strategy` on TensorFlow, else None.
        distribution: the `keras.distribution.DataParallel` on JAX, else None.
        description: one line for the run's log.
    """

    def __init__(self, kind, num_replicas, description, strategy=None, distribution=None):
        self.kind = kind
        self.num_replicas = int(num_replicas)
        self.description = description
        self.strategy = strategy
        self.distribution = distribution

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
      accelerator when there is more than one; otherwise one device.
    - `"none"`: one device.
    - `"local"`: every local device of the default kind (the accelerators, or the
      CPU devices when there is none: the virtual CPUs of
      `XLA_FLAGS=--xla_force_host_platform_device_count=N` on JAX, or the logical
      CPUs of `tf.config.set_logical_device_configuration` on TensorFlow).
    - `"multihost"`: several hosts. JAX: `keras.distribution.initialize()` (reads
      `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and
      `KERAS_DISTRIBUTION_PROCESS_ID`), then data parallelism over the devices of all
      hosts. TensorFlow: `MultiWorkerMirroredStrategy` from `TF_CONFIG` (required).

    On JAX the distribution is set globally (`keras.distribution.set_distribution`).

    Raises:
        ValueError: for an unknown `choice`, a choice that needs several devices on
            torch, or `"multihost"` on TensorFlow without `TF_CONFIG`.
    """
    if choice not in CHOICES:
        raise ValueError(
            f"Expected `distribute` to be one of {', '.join(CHOICES)}. Received: {choice!r}"
        )
    backend = keras.backend.backend()
    if choice == "none":
        return DistributionPlan("none", 1, "one device")
    if backend not in ("jax", "tensorflow"):
        if choice == "auto":
            count = len(_accelerators(backend))
            note = f" ({count} GPUs visible; Keras 3.15 has no distribution for it)"
            return DistributionPlan("none", 1, "one device" + (note if count > 1 else ""))
        raise ValueError(
            f"Multi-device training is not available on the {backend} backend: Keras 3.15 "
            f"scales out on {_SCALING_BACKENDS} only. Set KERAS_BACKEND=jax or tensorflow, "
            f"or train on one device (--distribute none). Received: distribute={choice!r}"
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


def synchronize_batch_norm(model):
    """Makes every `BatchNormalization` of `model` use the statistics of the global batch.

    TensorFlow only: under `tf.distribute` each replica otherwise normalises with
    the mean and variance of its own share of the batch (Keras'
    `BatchNormalization(synchronized=True)` all-reduces them). Nested models (a
    backbone inside a builder's model) are included. Call it before `compile`.

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
        ValueError: on a backend other than TensorFlow.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        reason = (
            "on JAX BatchNorm statistics are already those of the global batch"
            if backend == "jax"
            else f"the {backend} backend trains on one device"
        )
        raise ValueError(
            "synchronize_batch_norm() applies to TensorFlow's tf.distribute only: "
            f"{reason}. Received: backend {backend!r}"
        )
    changed = 0
    seen = set()
    for layer in _walk(model):
        if id(layer) in seen or not isinstance(layer, keras.layers.BatchNormalization):
            continue
        seen.add(id(layer))
        layer.synchronized = True
        layer.get_config = functools.partial(_config_unsynchronized, layer)
        changed += 1
    return changed

"""The small models and data the callback tests fit."""

import keras
import numpy as np

from kseg.training import PolyDecay

STEPS_PER_EPOCH = 6
EPOCHS = 3
NUM_CLASSES = 3


def _data():
    # Every batch is the same sample, so a resumed run, whose input restarts from its first
    # batch, must end with the weights of an uninterrupted run.
    x = np.tile(np.array([[0.3, -1.2, 0.7, 2.0]], np.float32), (STEPS_PER_EPOCH, 1))
    y = np.full((STEPS_PER_EPOCH, 1), 1.5, np.float32)
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    # Momentum and a poly schedule: both must continue across a resume.
    schedule = PolyDecay(0.05, decay_steps=EPOCHS * STEPS_PER_EPOCH)
    # Eager steps: these tests fit a dozen new models, and tracing each costs more than its steps.
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss="mse", run_eagerly=True
    )
    return model


def _fit(model, callbacks, epochs=EPOCHS):
    x, y = _data()
    return model.fit(
        x, y, batch_size=1, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0
    )


def _iterations(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]


def _image_data(n=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    masks = (images[..., 0] > 128).astype(np.int32) + (images[..., 1] > 170).astype(np.int32)
    return images, masks


def _image_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    outputs = keras.layers.Conv2D(NUM_CLASSES, 1)(x)
    return keras.Model(inputs, outputs)

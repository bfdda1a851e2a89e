"""Keras 3 on the backend named by KERAS_BACKEND (set before this module is imported):
`model.train_on_batch`, the step `fit` runs."""
from __future__ import annotations

import keras

from benchmarks.peers import require_classic_cells
from benchmarks.tasks import LEARNING_RATE, Task, layer_stack


def model(task: Task) -> keras.Model:
  shape = (240, 14) if task.data == "jena" else (500,)
  stack = [keras.Input(shape, dtype="float32" if task.data == "jena" else "int32")]
  stack += layer_stack(keras.layers, task)
  net = keras.Sequential(stack)
  net.compile(optimizer=keras.optimizers.RMSprop(LEARNING_RATE),
              loss="mae" if task.loss == "mae" else "binary_crossentropy")
  return net


def train_step(task: Task, x, y):
  require_classic_cells(task)
  keras.utils.set_random_seed(0)
  net = model(task)
  return lambda: float(net.train_on_batch(x, y))

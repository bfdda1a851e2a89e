"""Keras 3 on the backend named by KERAS_BACKEND (set before this module is imported):
`model.train_on_batch`, the step `fit` runs."""
from __future__ import annotations

import keras

from benchmarks.tasks import LEARNING_RATE, VOCAB, Task


def model(task: Task) -> keras.Model:
  layers = keras.layers
  shape = (240, 14) if task.data == "jena" else (500,)
  stack = [keras.Input(shape, dtype="float32" if task.data == "jena" else "int32")]
  if task.data == "imdb":
    stack.append(layers.Embedding(VOCAB, 32))
  for kind, units, options in task.recurrent:
    if kind == "bilstm":
      stack.append(layers.Bidirectional(layers.LSTM(units, **options)))
    else:
      stack.append({"gru": layers.GRU, "lstm": layers.LSTM}[kind](units, **options))
  stack.append(layers.Dense(1, activation="sigmoid" if task.loss == "bce" else None))
  net = keras.Sequential(stack)
  net.compile(optimizer=keras.optimizers.RMSprop(LEARNING_RATE),
              loss="mae" if task.loss == "mae" else "binary_crossentropy")
  return net


def train_step(task: Task, x, y):
  keras.utils.set_random_seed(0)
  net = model(task)
  return lambda: float(net.train_on_batch(x, y))

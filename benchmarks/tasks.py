"""The benchmark tasks: the lecture's models at the lecture's shapes, and their inputs.

Every framework trains the same model on the same numpy batch (`inputs(task)`), with
RMSprop(1e-3, rho=0.9, epsilon=1e-7) as Keras's defaults, and the task's loss.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

BATCH = 128
JENA_SHAPE = (240, 14)      # lookback 1440 / step 6, 14 weather features
IMDB_SHAPE = (500,)         # maxlen 500
VOCAB = 10_000
LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Task:
  """One model. `layers` is (kind, options) per recurrent layer, in order."""
  name: str
  data: str                  # "jena": <float32>[B, 240, 14] -> [B, 1]; "imdb": <int32>[B, 500] -> {0, 1}
  loss: str                  # "mae" | "bce"
  recurrent: tuple           # ((kind, units, options), ...), kind "gru" | "lstm" | "bilstm"
                             # | "min_gru" | "min_lstm"

  @property
  def minimal(self) -> bool:
    """minGRU / minLSTM (Feng et al. 2024): rnn_jax only."""
    return any(kind.startswith("min_") for kind, _, _ in self.recurrent)

  @property
  def dropout(self) -> bool:
    return any(o.get("dropout") or o.get("recurrent_dropout") for _, _, o in self.recurrent)


TASKS = {t.name: t for t in [
    Task("jena_gru", "jena", "mae", (("gru", 32, {}),)),
    Task("jena_gru_dropout", "jena", "mae",
         (("gru", 32, {"dropout": 0.2, "recurrent_dropout": 0.2}),)),
    Task("jena_stacked_gru", "jena", "mae",
         (("gru", 32, {"dropout": 0.1, "recurrent_dropout": 0.5, "return_sequences": True}),
          ("gru", 64, {"activation": "relu", "dropout": 0.1, "recurrent_dropout": 0.5}))),
    Task("imdb_lstm", "imdb", "bce", (("lstm", 32, {}),)),
    Task("imdb_bilstm", "imdb", "bce", (("bilstm", 32, {}),)),
    Task("jena_min_gru", "jena", "mae", (("min_gru", 32, {}),)),
    Task("imdb_min_lstm", "imdb", "bce", (("min_lstm", 32, {}),)),
]}


def layer_stack(layers, task: Task, implementation: Optional[str] = None) -> list:
  """The task's model as a list of layers from `layers`, a module with Keras's layer
  API (`keras.layers` or `rnn_jax.layers`): [Embedding] -> recurrent layers -> Dense(1).
  `implementation`: rnn_jax's unroll implementation (None: the layers' default)."""
  stack = [layers.Embedding(VOCAB, 32)] if task.data == "imdb" else []
  for kind, units, options in task.recurrent:
    if implementation is not None:
      options = {**options, "implementation": implementation}
    if kind == "bilstm":
      stack.append(layers.Bidirectional(layers.LSTM(units, **options)))
    else:
      name = {"gru": "GRU", "lstm": "LSTM", "min_gru": "MinGRU", "min_lstm": "MinLSTM"}[kind]
      stack.append(getattr(layers, name)(units, **options))  # Keras has no MinGRU
  stack.append(layers.Dense(1, activation="sigmoid" if task.loss == "bce" else None))
  return stack


def inputs(task: Task, seed: int = 0, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) for one training batch, the same in every framework."""
  rng = np.random.default_rng(seed)
  if task.data == "jena":
    x = rng.standard_normal((batch, *JENA_SHAPE), dtype=np.float32)
    y = rng.standard_normal((batch, 1), dtype=np.float32)
  else:
    x = rng.integers(1, VOCAB, size=(batch, *IMDB_SHAPE)).astype(np.int32)
    y = rng.integers(0, 2, size=(batch, 1)).astype(np.float32)
  return x, y


def flops_per_step(task: Task) -> float:
  """Multiply-adds x 2 of one training step's matmuls (forward, and twice that backward)."""
  time, features = (JENA_SHAPE if task.data == "jena" else (IMDB_SHAPE[0], 32))
  total = 0.0
  for kind, units, _ in task.recurrent:
    if kind.startswith("min_"):  # input projections only: (2 or 3 gates) x features
      gates = 2 if kind == "min_gru" else 3
      total += 2 * BATCH * time * gates * units * features
      features = units
      continue
    gates = 3 if kind == "gru" else 4
    directions = 2 if kind == "bilstm" else 1
    total += directions * 2 * BATCH * time * gates * units * (features + units)
    features = units * directions
  return 3 * total

"""The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015 and
Arjovsky et al. 2016): remember two marked numbers over a long sequence and add them.

Each sequence is <float32>[seq_len, 2]: channel 0 holds values drawn uniformly from
[0, 1], channel 1 is 0 except for exactly two 1s, one at a random step of the first half
and one in the second half. The target is the sum of the two marked values,
<float32>[1]. Predicting the mean, 1, scores an MSE of Var(u1 + u2) = 1/6 ~ 0.167.
"""
from __future__ import annotations

import numpy as np

from rnn_jax.data.batches import ArrayBatches

CONSTANT_PREDICTION_MSE = 1.0 / 6.0


def generate(num_examples: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(x <float32>[num_examples, seq_len, 2], y <float32>[num_examples, 1]) from `seed`."""
  if seq_len < 2:
    raise ValueError(f"the adding problem needs seq_len >= 2, got {seq_len}")
  rng = np.random.default_rng(seed)
  values = rng.uniform(0.0, 1.0, (num_examples, seq_len)).astype(np.float32)
  half = seq_len // 2
  first = rng.integers(0, half, num_examples)
  second = rng.integers(half, seq_len, num_examples)
  markers = np.zeros((num_examples, seq_len), np.float32)
  rows = np.arange(num_examples)
  markers[rows, first] = 1.0
  markers[rows, second] = 1.0
  x = np.stack([values, markers], axis=-1)
  y = (values[rows, first] + values[rows, second])[:, None]
  return x, y


def batches(*, seq_len: int, num_train: int, num_test: int, validation_split: float,
            batch_size: int, seed: int = 0) -> ArrayBatches:
  """Train+validation (split as Keras's `validation_split`) and test sets as `ArrayBatches`.

  The two sets come from independent streams of `seed`, so growing one leaves the other.
  """
  x, y = generate(num_train, seq_len, seed=2 * seed)
  x_test, y_test = generate(num_test, seq_len, seed=2 * seed + 1)
  return ArrayBatches.from_arrays(x, y, validation_split=validation_split, x_test=x_test,
                                  y_test=y_test, batch_size=batch_size)

"""The contract between data pipelines and the training loop.

A `Batches` yields numpy batches `(x, y, weight)`: x <any>[batch, ...], y
<float32>[batch, ...], weight <float32>[batch] (0 for padding rows, so that every batch
has the same shape and the train step compiles once). Training batches of an epoch depend
only on `(seed, epoch)`, so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Protocol

import numpy as np

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


class Batches(Protocol):
  batch_size: int
  steps_per_epoch: int
  val_steps: int
  test_steps: int  # 0: no test set

  def train(self, seed: int, epoch: int) -> Iterator[Batch]:
    """`steps_per_epoch` training batches, a function of (seed, epoch) alone."""

  def val(self) -> Iterator[Batch]:
    """`val_steps` validation batches, the same every call."""

  def test(self) -> Iterator[Batch]:
    """`test_steps` test batches, the same every call."""


def _padded(x: np.ndarray, y: np.ndarray, size: int) -> Batch:
  """(x, y) padded with zero rows to `size`, and weights marking the real rows."""
  n = len(x)
  weight = np.zeros((size,), np.float32)
  weight[:n] = 1.0
  if n < size:
    x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((size - n, *y.shape[1:]), y.dtype)])
  return x, y, weight


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float):
  """Keras's `validation_split`: the last `fraction` of the arrays, before any shuffling.

  Keras takes `split_at = int(n * (1 - fraction))` rows for training.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"--validation_split must be in [0, 1), got {fraction}")
  split_at = int(len(x) * (1.0 - fraction))
  return (x[:split_at], y[:split_at]), (x[split_at:], y[split_at:])


@dataclasses.dataclass
class ArrayBatches:
  """Batches over in-memory arrays, as Keras's `fit(x, y, batch_size, validation_split)`.

  Training rows are shuffled every epoch (a permutation drawn from (seed, epoch));
  validation and test walk their rows in order. The last partial batch is kept, padded
  with zero-weight rows, as Keras keeps it.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: Optional[np.ndarray] = None
  y_test: Optional[np.ndarray] = None
  batch_size: int = 32
  shuffle: bool = True
  max_steps_per_epoch: Optional[int] = None
  max_val_steps: Optional[int] = None

  def __post_init__(self):
    """A batch size that is not a positive integer, or inputs and targets of different
    lengths, are a `ValueError` here rather than a wrong batch later."""
    if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
        or self.batch_size < 1:
      raise ValueError(f"ArrayBatches: batch_size must be a positive integer, got "
                       f"{self.batch_size!r}")
    if (self.x_test is None) != (self.y_test is None):
      raise ValueError("ArrayBatches: give x_test and y_test together, or neither")
    for part in ("train", "val", "test"):
      x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
      if x is not None and len(x) != len(y):
        raise ValueError(f"ArrayBatches: x_{part} has {len(x)} rows and y_{part} {len(y)}")

  @classmethod
  def from_arrays(cls, x, y, *, validation_split: float, x_test=None, y_test=None, **kwargs):
    (x_train, y_train), (x_val, y_val) = split_validation(x, y, validation_split)
    return cls(x_train, y_train, x_val, y_val, x_test, y_test, **kwargs)

  @staticmethod
  def _steps(n: int, batch_size: int, cap: Optional[int]) -> int:
    steps = -(-n // batch_size)
    return steps if cap is None else min(steps, cap)

  @property
  def steps_per_epoch(self) -> int:
    return self._steps(len(self.x_train), self.batch_size, self.max_steps_per_epoch)

  @property
  def val_steps(self) -> int:
    return self._steps(len(self.x_val), self.batch_size, self.max_val_steps)

  @property
  def test_steps(self) -> int:
    return 0 if self.x_test is None else self._steps(len(self.x_test), self.batch_size, None)

  def train(self, seed: int, epoch: int) -> Iterator[Batch]:
    n = len(self.x_train)
    order = (np.random.default_rng([seed, epoch]).permutation(n) if self.shuffle
             else np.arange(n))
    for step in range(self.steps_per_epoch):
      rows = order[step * self.batch_size:(step + 1) * self.batch_size]
      yield _padded(self.x_train[rows], self.y_train[rows], self.batch_size)

  def _in_order(self, x, y, steps) -> Iterator[Batch]:
    for step in range(steps):
      sl = slice(step * self.batch_size, (step + 1) * self.batch_size)
      yield _padded(x[sl], y[sl], self.batch_size)

  def val(self) -> Iterator[Batch]:
    return self._in_order(self.x_val, self.y_val, self.val_steps)

  def test(self) -> Iterator[Batch]:
    if self.x_test is None:
      return iter(())
    return self._in_order(self.x_test, self.y_test, self.test_steps)

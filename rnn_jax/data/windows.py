"""Windows over a series, exactly as the lecture's `generator` (Chollet, DLwP 1st ed. §6.3).

A sample ending at row `r` is `data[r - lookback : r : step]` <float32>[time, features]
with `time = len(range(-lookback, 0, step))`; its target is `data[r + delay, target]`.
Three generators share one array:

  train  min_index 0,             max_index train_end       random rows
  val    min_index train_end + 1, max_index val_end         rows in order
  test   min_index val_end + 1,   max_index rows - delay - 1  rows in order

Random rows are drawn from [min_index + lookback, max_index) (`integers(lo, hi, size=
batch_size)` of a numpy Generator, the lecture's `np.random.randint`); rows in order start
at min_index + lookback and restart there when `i + batch_size >= max_index`. The lecture's
step counts: val_steps = (val_end - (train_end + 1) - lookback) // batch_size and
test_steps = (rows - (val_end + 1) - lookback) // batch_size. A batch is gathered with one
fancy index, `data[rows[:, None] + offsets]`, never a Python loop over samples.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np

from rnn_jax.data.batches import Batch, _padded
from rnn_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Bounds:
  """A generator's [min_index, max_index) as the lecture passes them."""
  min_index: int
  max_index: int


def generator_bounds(num_rows: int, train_end: int, val_end: int,
                     delay: int) -> tuple[Bounds, Bounds, Bounds]:
  """(train, val, test) bounds for a split at row indices `train_end`, `val_end`."""
  return (Bounds(0, train_end), Bounds(train_end + 1, val_end),
          Bounds(val_end + 1, num_rows - delay - 1))


def random_rows(rng: np.random.Generator, bounds: Bounds, lookback: int,
                batch_size: int) -> np.ndarray:
  """<int64>[batch_size] end rows, one draw of the lecture's `shuffle=True` branch."""
  return rng.integers(bounds.min_index + lookback, bounds.max_index, size=batch_size)


def ordered_rows(bounds: Bounds, lookback: int, batch_size: int,
                 steps: int) -> Iterator[np.ndarray]:
  """The end rows of `steps` consecutive batches of the lecture's `shuffle=False` branch."""
  start = bounds.min_index + lookback
  i = start
  for _ in range(steps):
    if i + batch_size >= bounds.max_index:
      i = start
    rows = np.arange(i, min(i + batch_size, bounds.max_index))
    i += len(rows)
    yield rows


def gather(data: np.ndarray, rows: np.ndarray, *, lookback: int, step: int, delay: int,
           target_index: int, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(samples <float32>[len(rows), time, features], targets <float32>[len(rows), 1]).

  `reverse` flips every window along time (the lecture's reversed-order GRU).
  """
  offsets = np.arange(-lookback, 0, step)
  samples = data[rows[:, None] + offsets[None, :]]
  if reverse:
    samples = samples[:, ::-1]
  targets = data[rows + delay, target_index][:, None]
  return samples.astype(np.float32, copy=False), targets.astype(np.float32, copy=False)


@dataclasses.dataclass(frozen=True)
class WindowBatches:
  """`Batches` (rnn_jax.data.batches) of windows over `data` <float32>[rows, features].

  Training batches are `steps_per_epoch` draws from `np.random.default_rng([seed, epoch])`;
  `val()` and `test()` are the first `val_steps` / `test_steps` batches of a fresh ordered
  generator. A batch shorter than `batch_size` (only when a part holds fewer rows than one
  batch) is padded with weight-0 rows.
  """
  data: np.ndarray
  target_index: int
  train_bounds: Bounds
  val_bounds: Bounds
  test_bounds: Bounds
  lookback: int = 1440
  step: int = 6
  delay: int = 144
  batch_size: int = 128
  steps_per_epoch: int = 500
  val_steps: int = 0
  test_steps: int = 0
  reverse: bool = False

  @classmethod
  def from_split(cls, data: np.ndarray, target_index: int, *, train_end: int, val_end: int,
                 lookback: int, step: int, delay: int, batch_size: int,
                 steps_per_epoch: int, val_steps: Optional[int] = None,
                 test_steps: Optional[int] = None, reverse: bool = False,
                 source: str = "the data") -> "WindowBatches":
    """Batches for a split at rows `train_end`, `val_end`, the lecture's step counts by default.

    Raises UserError when a part is too short for one window plus its target.
    """
    for name, value, low in (("--lookback", lookback, 1), ("--step", step, 1),
                             ("--delay", delay, 0), ("--batch_size", batch_size, 1),
                             ("--steps_per_epoch", steps_per_epoch, 1)):
      if value < low:
        raise UserError(f"{name}={value} must be at least {low}")
    num_rows = len(data)
    train, val, test = generator_bounds(num_rows, train_end, val_end, delay)
    need = lookback + delay + batch_size
    lecture_val_steps = (val.max_index - val.min_index - lookback) // batch_size
    lecture_test_steps = (num_rows - test.min_index - lookback) // batch_size
    problems = []
    if train.max_index - train.min_index <= lookback or train_end + delay >= num_rows:
      problems.append(f"training rows 0..{train_end - 1} hold no window")
    if lecture_val_steps < 1 or val_end - 1 + delay >= num_rows:
      problems.append(f"validation rows {val.min_index}..{val.max_index - 1} hold no batch")
    if problems:
      raise UserError(f"{source}: {num_rows} rows are too few for --lookback={lookback} "
                      f"--delay={delay} --batch_size={batch_size} (each part needs about "
                      f"{need} rows): {'; '.join(problems)}")
    has_test = test.max_index > test.min_index + lookback and lecture_test_steps >= 1
    return cls(data, target_index, train, val, test, lookback=lookback, step=step,
               delay=delay, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
               val_steps=lecture_val_steps if val_steps is None else val_steps,
               test_steps=(lecture_test_steps if test_steps is None else test_steps)
               if has_test else 0,
               reverse=reverse)

  @property
  def time_steps(self) -> int:
    return len(range(-self.lookback, 0, self.step))

  def batch(self, rows: np.ndarray) -> Batch:
    """(x, y, weight) for end rows `rows`, padded to `batch_size`."""
    x, y = gather(self.data, rows, lookback=self.lookback, step=self.step, delay=self.delay,
                  target_index=self.target_index, reverse=self.reverse)
    return _padded(x, y, self.batch_size)

  def train(self, seed: int, epoch: int) -> Iterator[Batch]:
    rng = np.random.default_rng([seed, epoch])
    for _ in range(self.steps_per_epoch):
      yield self.batch(random_rows(rng, self.train_bounds, self.lookback, self.batch_size))

  def val(self) -> Iterator[Batch]:
    for rows in ordered_rows(self.val_bounds, self.lookback, self.batch_size, self.val_steps):
      yield self.batch(rows)

  def test(self) -> Iterator[Batch]:
    for rows in ordered_rows(self.test_bounds, self.lookback, self.batch_size, self.test_steps):
      yield self.batch(rows)

  def rows(self, part: str) -> Iterator[np.ndarray]:
    """End rows of the "val" or "test" batches (to line predictions up with times)."""
    bounds, steps = {"val": (self.val_bounds, self.val_steps),
                     "test": (self.test_bounds, self.test_steps)}[part]
    return ordered_rows(bounds, self.lookback, self.batch_size, steps)

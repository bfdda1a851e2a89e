"""Windows over a series, exactly as Chollet's `generator` (Deep Learning with Python, 1st ed.).

A sample ending at row `r` is `data[r - lookback : r : step]` <float32>[time, features]
with `time = len(range(-lookback, 0, step))`; its target is `data[r + delay, target]`.
Three generators share one array:

  train  min_index 0,             max_index train_end       random rows
  val    min_index train_end + 1, max_index val_end         rows in order
  test   min_index val_end + 1,   max_index rows - delay - 1  rows in order

Random rows are drawn from [min_index + lookback, max_index) (`integers(lo, hi, size=
batch_size)` of a numpy Generator, the generator's `np.random.randint`); rows in order start
at min_index + lookback and restart there when `i + batch_size >= max_index`. Its step
counts: val_steps = (val_end - (train_end + 1) - lookback) // batch_size and
test_steps = (rows - (val_end + 1) - lookback) // batch_size.

Speed: a window's rows are `step` rows apart, so cutting it from `data` copies `time`
scattered rows of `features` values. `gather` instead reads a copy of the data laid out
phase-major (`WindowLayout`): rows r ≡ p (mod step) stored consecutively, so that every window
is one contiguous block of <float32>[time, features] and a batch is one fancy index over
`batch_size` blocks instead of `batch_size * time` scattered rows (`benchmarks.run
--sections=sampler` compares it with Chollet's generator; docs/performance.md has the
numbers). The layout is built on first use and shared by every sampler over the
same array until that array is freed; it is a snapshot, so `data` must not change after.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Iterator, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rnn_jax.data.batches import Batch, _padded
from rnn_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Bounds:
  """A generator's [min_index, max_index) as Chollet's §6.3 passes them."""
  min_index: int
  max_index: int


def generator_bounds(num_rows: int, train_end: int, val_end: int,
                     delay: int) -> tuple[Bounds, Bounds, Bounds]:
  """(train, val, test) bounds for a split at row indices `train_end`, `val_end`."""
  return (Bounds(0, train_end), Bounds(train_end + 1, val_end),
          Bounds(val_end + 1, num_rows - delay - 1))


def random_rows(rng: np.random.Generator, bounds: Bounds, lookback: int,
                batch_size: int) -> np.ndarray:
  """<int64>[batch_size] end rows, one draw of the generator's `shuffle=True` branch."""
  return rng.integers(bounds.min_index + lookback, bounds.max_index, size=batch_size)


def ordered_rows(bounds: Bounds, lookback: int, batch_size: int,
                 steps: int) -> Iterator[np.ndarray]:
  """The end rows of `steps` consecutive batches of the generator's `shuffle=False` branch."""
  start = bounds.min_index + lookback
  i = start
  for _ in range(steps):
    if i + batch_size >= bounds.max_index:
      i = start
    rows = np.arange(i, min(i + batch_size, bounds.max_index))
    i += len(rows)
    yield rows


@dataclasses.dataclass(frozen=True)
class WindowLayout:
  """Every window over one array as a contiguous block, in a phase-major copy of it.

  Row r of the source (`data`, or `data[::-1]` when `reverse`) is row
  `(r % step) * phase_rows + r // step` of the copy, so the rows s, s + step, ...,
  s + (time - 1) * step of the window starting at s are consecutive there: `blocks[i]`,
  i the image of s. A reversed window is the forward window of `data[::-1]` that starts
  at `num_rows - 1 - (s + (time - 1) * step)`.
  """
  blocks: np.ndarray  # <float32>[step * phase_rows - time + 1, time, features], a view
  phase_rows: int
  num_rows: int
  step: int
  reverse: bool

  @classmethod
  def of(cls, data: np.ndarray, *, time: int, step: int, reverse: bool) -> "WindowLayout":
    num_rows, features = data.shape
    source = data[::-1] if reverse else data
    phase_rows = -(-num_rows // step)
    phased = np.zeros((step, phase_rows, features), np.float32)
    for phase in range(step):
      rows = source[phase::step]
      phased[phase, :len(rows)] = rows
    flat = phased.reshape(step * phase_rows, features)
    blocks = sliding_window_view(flat, time, axis=0).transpose(0, 2, 1)
    return cls(blocks, phase_rows, num_rows, step, reverse)

  @property
  def time(self) -> int:
    return self.blocks.shape[1]

  def windows(self, starts: np.ndarray) -> np.ndarray:
    """<float32>[len(starts), time, features]: rows `starts + step * arange(time)` of `data`,
    reversed along time if `reverse`; a fresh C-contiguous array."""
    if self.reverse:
      starts = self.num_rows - 1 - (self.time - 1) * self.step - starts
    return self.blocks[(starts % self.step) * self.phase_rows + starts // self.step]


_LAYOUTS: dict = {}  # (id(data), time, step, reverse) -> WindowLayout, dropped with data


def layout(data: np.ndarray, *, time: int, step: int, reverse: bool) -> WindowLayout:
  """The `WindowLayout` of `data` <float>[rows, features], built once per live array."""
  key = (id(data), time, step, reverse)
  found = _LAYOUTS.get(key)
  if found is None:
    found = _LAYOUTS[key] = WindowLayout.of(data, time=time, step=step, reverse=reverse)
    weakref.finalize(data, _LAYOUTS.pop, key, None)
  return found


def gather(data: np.ndarray, rows: np.ndarray, *, lookback: int, step: int, delay: int,
           target_index: int, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(samples <float32>[len(rows), time, features], targets <float32>[len(rows), 1]).

  Sample j is `data[rows[j] - lookback : rows[j] : step]`, flipped along time when
  `reverse` (§6.3's reversed-order GRU); its target `data[rows[j] + delay, target_index]`.
  """
  time = len(range(-lookback, 0, step))
  samples = layout(data, time=time, step=step, reverse=reverse).windows(rows - lookback)
  targets = data[rows + delay, target_index][:, None]
  return samples, targets.astype(np.float32, copy=False)


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
    """Batches for a split at rows `train_end`, `val_end`; the generator's step counts by
    default.

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
    default_val_steps = (val.max_index - val.min_index - lookback) // batch_size
    default_test_steps = (num_rows - test.min_index - lookback) // batch_size
    problems = []
    if train.max_index - train.min_index <= lookback or train_end + delay >= num_rows:
      problems.append(f"training rows 0..{train_end - 1} hold no window")
    if default_val_steps < 1 or val_end - 1 + delay >= num_rows:
      problems.append(f"validation rows {val.min_index}..{val.max_index - 1} hold no batch")
    if problems:
      raise UserError(f"{source}: {num_rows} rows are too few for --lookback={lookback} "
                      f"--delay={delay} --batch_size={batch_size} (each part needs about "
                      f"{need} rows): {'; '.join(problems)}")
    has_test = test.max_index > test.min_index + lookback and default_test_steps >= 1
    return cls(data, target_index, train, val, test, lookback=lookback, step=step,
               delay=delay, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
               val_steps=default_val_steps if val_steps is None else val_steps,
               test_steps=(default_test_steps if test_steps is None else test_steps)
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

"""What a run shows while it trains: a bar per epoch, the compile time, one line per epoch.

`Monitor` is the one object `fit` talks to. Per step it moves a tqdm bar (steps, steps/s,
ETA, the running loss; only on a terminal) and, every `log_every_steps` steps, snapshots
the epoch's loss totals on the device and reads them back without waiting for them
(`StepLoss`). Per epoch it prints one line (also what logs get when stdout is not a
terminal) and hands the metrics to `logs.RunLogs` (TensorBoard, metrics.csv).

The first train step of a session compiles the step: its time is reported once
("compiled the train step in N s") and left out of steps/s and of the ETA.
"""
from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import distributed
from rnn_jax.train import logs as logs_lib
from rnn_jax.train import results as results_lib


def say(line: str) -> None:
  """A line on stdout from the primary process (the experiments' progress channel)."""
  if distributed.is_primary():
    print(line, flush=True)


def _host(array) -> np.ndarray:
  """A device array's value on the host: every replica's (its first local copy when the
  array spans several processes, where every process holds every replica)."""
  return np.asarray(array if array.is_fully_addressable else array.addressable_data(0))


class StepLoss:
  """The training loss every `every` steps, read from the device asynchronously.

  Each snapshot is a new small array <float32>[2, ...] (the loss sum and the weight so far
  in this epoch) whose copy to the host starts at once; `ready()` returns the snapshots
  that have arrived, so the host never blocks on the device between epochs.
  """

  def __init__(self, every: int):
    self.every = max(int(every), 0)
    self._pending: list = []  # (step within the epoch, array), oldest first
    self._previous = 0.0  # the previous snapshot's sums, or none yet in this epoch
    # A computation, not a pass-through: jit would forward an input buffer unchanged, and
    # the next (donating) train step would then delete it.
    self._snapshot = jax.jit(lambda totals: jnp.stack([totals["loss"], totals["count"]]))

  def start_epoch(self) -> None:
    self._pending.clear()
    self._previous = 0.0

  def compile(self, totals) -> None:
    """Compiles the snapshot now, so that its compile time is not counted as a step's."""
    if self.every:
      self._snapshot(totals)

  def after_step(self, step: int, totals) -> None:
    if self.every and step % self.every == 0:
      snapshot = self._snapshot(totals)
      snapshot.copy_to_host_async()
      self._pending.append((step, snapshot))

  def ready(self, wait: bool = False) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(step, running mean loss, mean loss since the previous snapshot)] of the snapshots
    that have arrived (all of them with `wait`); each loss <float>[] or <[num_seeds]>."""
    out = []
    while self._pending and (wait or self._pending[0][1].is_ready()):
      step, snapshot = self._pending.pop(0)
      value = _host(snapshot).astype(np.float64)
      delta = value - self._previous
      self._previous = value
      out.append((step, value[0] / np.maximum(value[1], 1e-12),
                  delta[0] / np.maximum(delta[1], 1e-12)))
    return out


class Monitor:
  """Progress bar, compile time, epoch lines, ETA, and the run's logs (see module doc)."""

  def __init__(self, workdir: Path, *, epochs: int, steps_per_epoch: int, seeds: Sequence[int],
               log_every_steps: int = 50, fresh: bool = True, show_bar: Optional[bool] = None,
               resumed=None):
    self.epochs, self.steps_per_epoch, self.seeds = epochs, steps_per_epoch, list(seeds)
    self.primary = distributed.is_primary()
    self.show_bar = (self.primary and sys.stdout.isatty()) if show_bar is None else show_bar
    self.step_loss = StepLoss(log_every_steps)
    # resumed: (epochs done, global step, histories) of the checkpoint (logs.RunLogs).
    self.logs = (logs_lib.RunLogs(workdir, self.seeds, fresh=fresh, resumed=resumed)
                 if self.primary else None)
    if self.logs is not None:  # flush the event files however the run ends
      atexit.register(self.logs.close_quietly)
    self.compile_seconds: Optional[float] = None
    self._epoch_seconds: list[float] = []
    self._bar = None
    self._epoch = 0
    self._mark = 0.0
    self._compiled_in_epoch = 0.0

  def start_epoch(self, epoch: int, first_step: int) -> None:
    self._epoch, self._first_step = epoch, first_step
    self._compiled_in_epoch = 0.0
    self.step_loss.start_epoch()
    self._mark = self._start = time.time()
    if self.compile_seconds is not None:
      self._open_bar(first_step)

  def step(self, step: int, totals) -> None:
    """After dispatching train step `step` (1-based within the epoch)."""
    if self.compile_seconds is None:  # the session's first call traced and compiled
      self.step_loss.compile(totals)
      self.compile_seconds = self._compiled_in_epoch = time.time() - self._mark
      say(f"compiled the train step in {self.compile_seconds:.1f} s")
      self._open_bar(step)
    elif self._bar is not None:
      self._bar.update(1)
    self.step_loss.after_step(step, totals)
    self._show(self.step_loss.ready())

  def end_steps(self, step: int) -> tuple[int, float]:
    """(steps, seconds) of this epoch's training so far, without the compiling step."""
    self._show(self.step_loss.ready(wait=True))
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    steps = step - self._first_step - (1 if self._compiled_in_epoch else 0)
    return steps, time.time() - self._start - self._compiled_in_epoch

  def end_epoch(self, rows: Sequence[Mapping[str, float]], histories: Sequence[list],
                seconds: float) -> None:
    """After the epoch's validation: the epoch line, TensorBoard scalars and metrics.csv.

    rows: each replica's history row of this epoch; histories: each replica's history."""
    self._epoch_seconds.append(seconds - self._compiled_in_epoch)
    eta = (self.epochs - self._epoch) * float(np.mean(self._epoch_seconds))
    say(results_lib.progress_line(results_lib.mean_rows(rows), self.epochs, eta,
                                  len(self.seeds)))
    if self.logs is not None:
      self.logs.epoch(self._epoch, rows, histories)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self.logs is not None:
      self.logs.close()

  def _open_bar(self, done: int) -> None:
    if not self.show_bar:
      return
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    self._bar = tqdm(total=self.steps_per_epoch, initial=done, unit="step", leave=False,
                     desc=f"Epoch {self._epoch}/{self.epochs}", file=sys.stdout,
                     dynamic_ncols=True)

  def _show(self, losses) -> None:
    for step, running, recent in losses:
      if self.logs is not None:
        self.logs.step_loss((self._epoch - 1) * self.steps_per_epoch + step, recent)
      if self._bar is not None:
        self._bar.set_postfix_str(f"loss: {float(np.mean(running)):.4g}", refresh=False)

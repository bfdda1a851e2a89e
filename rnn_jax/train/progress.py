"""What a run shows while it trains: a bar per epoch, the compile time, one line per epoch.

`ProgressBar` is the `fit` callback that shows them. Per step it moves a tqdm bar (steps,
steps/s, ETA, the running loss; only on a terminal); per epoch it prints one line (also
what logs get when stdout is not a terminal). `StepLoss` snapshots the epoch's loss totals
on the device every N steps and reads them back without waiting for them (the bar's
running loss, and `logs.MetricLogs`'s step losses).

The first train step of a session compiles the step: `Clock` times it, the bar reports it
once ("compiled the train step in N s"), and it is left out of steps/s and of the ETA.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import distributed
from rnn_jax.train import results as results_lib
from rnn_jax.train.callbacks import Callback
from rnn_jax.train.results import say


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


class Clock:
  """The time an epoch trains, without the step that compiled the train step (the
  session's first); `fit`'s loop calls `compiled` after that step."""

  def __init__(self):
    self.compile_seconds: Optional[float] = None  # the session's first step, once known
    self.compiled_in_epoch = 0.0  # of this epoch's seconds, those spent compiling
    self._start = 0.0
    self._first_step = 0

  def start_epoch(self, first_step: int) -> None:
    """Before the epoch's first step (`first_step` steps of it done before: a resume)."""
    self._start, self._first_step = time.time(), first_step
    self.compiled_in_epoch = 0.0

  def compiled(self) -> None:
    """After the session's first train step: it traced and compiled the step."""
    self.compile_seconds = self.compiled_in_epoch = time.time() - self._start

  def end_steps(self, step: int) -> tuple[int, float]:
    """(steps, seconds) of this epoch's training in this session, up to step `step`,
    without the compiling step."""
    steps = step - self._first_step - (1 if self.compiled_in_epoch else 0)
    return steps, time.time() - self._start - self.compiled_in_epoch


class ProgressBar(Callback):
  """The bar of each epoch on a terminal (steps, steps/s, ETA, the running loss every
  `log_every_steps` steps), the compile time once, and one line per epoch (progress_line).

  show_bar: None shows the bar when stdout is a terminal (primary process only)."""

  def __init__(self, show_bar: Optional[bool] = None):
    self.show_bar = show_bar
    self._show = False
    self._bar = None
    self._step_loss = StepLoss(0)
    self._epoch_seconds: list[float] = []  # this session's, without compiling
    self._said_compile = False

  def on_run_start(self, run) -> None:
    self._epoch_seconds, self._said_compile = [], False
    self._show = ((distributed.is_primary() and sys.stdout.isatty())
                  if self.show_bar is None else self.show_bar)
    # With several processes every one takes the snapshots (of arrays that span them).
    every = run.options.log_every_steps if self._show or jax.process_count() > 1 else 0
    self._step_loss = StepLoss(every)
    self._step_loss.compile(run.state.totals)  # now, not in a step's time

  def on_epoch_start(self, run) -> None:
    self._step_loss.start_epoch()
    if self._said_compile:
      self._open_bar(run, run.step)

  def on_step(self, run, step: int, totals) -> None:
    if not self._said_compile:  # the session's first step: the clock timed its compiling
      self._said_compile = True
      say(f"compiled the train step in {run.clock.compile_seconds:.1f} s")
      self._open_bar(run, step)
    elif self._bar is not None:
      self._bar.update(1)
    self._step_loss.after_step(step, totals)
    for _, running, _ in self._step_loss.ready():
      if self._bar is not None:
        self._bar.set_postfix_str(f"loss: {float(np.mean(running)):.4g}", refresh=False)

  def on_steps_end(self, run) -> None:
    self._close_bar()

  def on_epoch_end(self, run) -> None:
    seconds = run.rows[0]["seconds"]
    self._epoch_seconds.append(seconds - run.clock.compiled_in_epoch)
    eta = (run.options.epochs - run.epoch) * float(np.mean(self._epoch_seconds))
    say(results_lib.progress_line(results_lib.mean_rows(run.rows), run.options.epochs, eta,
                                  len(run.seeds)))

  def on_stop(self, run) -> None:
    self._close_bar()

  def on_run_end(self, run) -> None:
    self._close_bar()

  def _open_bar(self, run, done: int) -> None:
    if not self._show:
      return
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    self._bar = tqdm(total=run.steps_per_epoch, initial=done, unit="step", leave=False,
                     desc=f"Epoch {run.epoch}/{run.options.epochs}", file=sys.stdout,
                     dynamic_ncols=True)

  def _close_bar(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

"""`fit`'s callbacks: what a run does at each point of its loop, besides training.

`fit` calls every callback's hooks in list order (a base `Callback`'s do nothing), each
with the `loop.Run` (the options, the `TrainState`, the best params, each replica's
history, the checkpoint's meta, `run.stop(reason)`):

  on_run_start(run)          the state is fresh; `Resume` may restore a checkpoint's
  on_epoch_start(run)        run.epoch is starting, at run.step (> 0 when resumed mid-epoch)
  on_step(run, step, totals) after dispatching step `step` (1-based) of run.epoch
  on_steps_end(run)          the epoch's last step dispatched, before its validation and
                             checkpoints: what the steps leave (step logs) is written here
  on_epoch_end(run)          the epoch trained and validated: run.rows, run.improved
  on_stop(run)               the run ends before its last epoch: run.stop_reason (then
                             on_run_end), or Ctrl-C (run.interrupted; then `Interrupted`)
  on_run_end(run)            run.results is results.json's content, for the last words

The loop looks for a stop (`run.stop(reason)`, Ctrl-C) before the first epoch, after
every step and after every epoch; `fit` says what each does. An error (`Diverged`, a
full disk, Ctrl-C's `Interrupted`) ends the run with no further hook.

`totals` are the epoch's running sums on the device (<float32>[] or <[num_seeds]> each:
"loss", every metric, "count", "steps", ...); the next step takes them (they are
donated), so a hook computes what it needs from them at once: `float(totals["loss"])`
waits for the device, a jitted function of them does not (`progress.StepLoss`).

The built-ins, in the order of `fit.default_callbacks()`:

  Resume          with --resume: the newest good checkpoint's state, best params, history
  NanGuard        a NaN or infinite loss stops the run with `Diverged` (nothing saved)
  Checkpoints     checkpoints/latest after every epoch and on Ctrl-C; checkpoints/best
  progress.ProgressBar   the bar, the compile time, one line per epoch
  logs.MetricLogs        TensorBoard event files and metrics.csv
  EarlyStopping   stops when the validation loss has not improved for `patience` epochs
  WriteResults    history.png, results.json and the run's last line
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from rnn_jax import distributed
from rnn_jax.io import checkpoints
from rnn_jax.analysis import plots
from rnn_jax.train import results as results_lib
from rnn_jax.train import rundir
from rnn_jax.train.results import say
from rnn_jax.train.step import TrainState


class Callback:
  """A hook for each point of a `fit` run, each doing nothing: override those you need
  (see the module docstring for when each is called; the built-ins below are examples).

  Every process of a multi-process run calls the hooks; `distributed.is_primary()` tells
  the one that writes files. A stop must be decided alike on every process."""

  def on_run_start(self, run) -> None:
    """Before the first epoch (after the fresh state is made)."""

  def on_epoch_start(self, run) -> None:
    """Before the epoch's first step."""

  def on_step(self, run, step: int, totals: dict) -> None:
    """After dispatching a train step; keep it cheap (it runs every step)."""

  def on_steps_end(self, run) -> None:
    """After the epoch's last train step, before its validation and checkpoints."""

  def on_epoch_end(self, run) -> None:
    """After the epoch's training and validation."""

  def on_stop(self, run) -> None:
    """When the run ends before its last epoch: run.stop_reason, or Ctrl-C."""

  def on_run_end(self, run) -> None:
    """After testing the best params; run.results is results.json's content."""


class Callbacks:
  """Calls each hook of a list of callbacks in order (on_step: only those that have one)."""

  def __init__(self, callbacks: Sequence[Callback]):
    self.callbacks = list(callbacks)
    for callback in self.callbacks:
      if not isinstance(callback, Callback):
        raise TypeError(f"fit: callbacks must be rnn_jax.train.Callback instances, got "
                        f"{type(callback).__name__}")
    self._steps = [c.on_step for c in self.callbacks if type(c).on_step is not Callback.on_step]

  def on_run_start(self, run) -> None:
    for callback in self.callbacks:
      callback.on_run_start(run)

  def on_epoch_start(self, run) -> None:
    for callback in self.callbacks:
      callback.on_epoch_start(run)

  def on_step(self, run, step: int, totals: dict) -> None:
    for on_step in self._steps:
      on_step(run, step, totals)

  def on_steps_end(self, run) -> None:
    for callback in self.callbacks:
      callback.on_steps_end(run)

  def on_epoch_end(self, run) -> None:
    for callback in self.callbacks:
      callback.on_epoch_end(run)

  def on_stop(self, run) -> None:
    for callback in self.callbacks:
      callback.on_stop(run)

  def on_run_end(self, run) -> None:
    for callback in self.callbacks:
      callback.on_run_end(run)


class Resume(Callback):
  """With `options.resume`: the newest good checkpoint in <workdir>/checkpoints/latest
  (its state, best params and meta: history, epoch, step), refused if it was trained
  with other flags; without one the run starts fresh (and says so)."""

  def on_run_start(self, run) -> None:
    if not run.options.resume:
      return
    latest = run.workdir / "checkpoints" / "latest"
    target = {"params": run.state.params, "opt_state": run.state.opt_state,
              "best_params": run.best_params, "totals": run.state.totals}
    restored = checkpoints.restore(latest, target)
    if restored is None:
      say(f"--resume: no checkpoint in {latest}; starting fresh")
      return
    name, saved, meta = restored
    rundir.check_same_config(meta["config"], run.meta["config"], run.workdir)
    # The flags that may change on a resume are recorded where they changed.
    session_flags = run.meta["session_flags"]
    before = meta.get("session_flags", {})
    changed = {k: v for k, v in session_flags.items() if before.get(k, v) != v}
    meta["resumed"] = [*meta.get("resumed", []),
                       {"epoch": meta["epoch"], "step": meta["step"], "changed": changed}]
    meta["session_flags"] = session_flags
    run.restore(TrainState(saved["params"], saved["opt_state"], saved["totals"],
                           run.state.seeds), saved["best_params"], meta)
    say(f"--resume: continuing from checkpoint {latest / name}")


class NanGuard(Callback):
  """A loss that is not finite (training, then validation) raises `Diverged`, naming the
  epoch, the first such step and the replica, before the epoch's checkpoints."""

  def on_epoch_end(self, run) -> None:
    where = run.workdir / "checkpoints"
    for r, row in enumerate(run.rows):
      if not math.isfinite(row["loss"]):
        first = int(np.reshape(run.totals["first_nonfinite"], [-1])[r]) + 1
        raise rundir.Diverged(
            f"the loss is {row['loss']}{_of_seed(run.seeds, r)} in epoch {run.epoch} (first at "
            f"step {first} of {run.steps_per_epoch}); stopped, keeping the checkpoint of epoch "
            f"{run.epoch - 1} in {where}")
    for r, row in enumerate(run.rows):
      if "val_loss" in row and not math.isfinite(row["val_loss"]):
        raise rundir.Diverged(
            f"the validation loss is {row['val_loss']}{_of_seed(run.seeds, r)} after epoch "
            f"{run.epoch}; stopped, keeping the checkpoint of epoch {run.epoch - 1} in {where}")


class Checkpoints(Callback):
  """<workdir>/checkpoints/latest after every epoch (the newest `keep` kept) and when
  Ctrl-C stops a run mid-epoch (what --resume continues from); checkpoints/best whenever
  a replica's validation loss improved (the best params of every replica)."""

  def __init__(self, keep: int = 2):
    self.keep = keep

  def on_epoch_end(self, run) -> None:
    if any(run.improved):
      rundir.save(run.workdir / "checkpoints" / "best", f"epoch{run.epoch:06d}",
                  {"params": run.best_params},
                  {"epoch": run.epoch, "best_epochs": [rep["best_epoch"] for rep in run.replicas],
                   "val": [rep["best_val"] for rep in run.replicas]}, keep=1)
    self.save_latest(run)

  def on_stop(self, run) -> None:
    if run.interrupted and run.in_epoch:
      self.save_latest(run)

  def save_latest(self, run) -> None:
    """The state after run.epochs_done epochs and run.step steps of the next (0 between
    epochs), with the history and the times in the meta."""
    step = run.step if run.in_epoch else 0
    run.meta.update(epoch=run.epochs_done, step=step, replicas=run.replicas,
                    epoch_seconds=run.epoch_seconds() if run.in_epoch else 0.0,
                    seconds=run.seconds())
    state = {"params": run.state.params, "opt_state": run.state.opt_state,
             "best_params": run.best_params, "totals": run.state.totals}
    rundir.save(run.workdir / "checkpoints" / "latest",
                f"epoch{run.epochs_done:06d}-step{step:06d}", state, run.meta, keep=self.keep)


class EarlyStopping(Callback):
  """Stops the run after an epoch when no replica's validation loss (training loss without
  validation data) has improved for `patience` epochs (default the options'
  early_stopping_patience; none: never); results.json's "early_stopping" records it.
  The best epoch's params are those a run keeps in any case."""

  def __init__(self, patience: Optional[int] = None):
    self.patience = patience
    self.stopped_epoch: Optional[int] = None
    self._patience = patience

  def on_run_start(self, run) -> None:
    self._patience = (run.options.early_stopping_patience if self.patience is None
                      else self.patience)
    self.stopped_epoch = None
    if run.epochs_done and self._stops(run, run.epochs_done):  # resumed after it stopped
      self.stopped_epoch = run.epochs_done
      run.stop(f"early stopping after epoch {run.epochs_done}", record=False)

  def on_epoch_end(self, run) -> None:
    if self._stops(run, run.epoch):
      self.stopped_epoch = run.epoch
      say(f"early stopping after epoch {run.epoch}: no lower validation loss for "
          f"{self._patience} epochs; restoring epoch {_best_epochs(run.replicas)}")
      run.stop(f"early stopping after epoch {run.epoch}", record=False)

  def on_run_end(self, run) -> None:
    if self._patience:
      run.results["early_stopping"] = {"patience": self._patience,
                                       "stopped_epoch": self.stopped_epoch,
                                       "restored_epoch": _best_epochs(run.replicas)}

  def _stops(self, run, epoch: int) -> bool:
    return bool(self._patience) and epoch < run.options.epochs and all(
        epoch - replica["best_epoch"] >= self._patience for replica in run.replicas)


class WriteResults(Callback):
  """<workdir>/history.png and results.json (the primary process), then the run's last
  line: the best epoch, its validation and test metrics."""

  def on_run_end(self, run) -> None:
    results, num_seeds = run.results, len(run.seeds)
    if distributed.is_primary():
      plots.history(results["history"], run.workdir / "history.png",
                    title=run.options.model_name + (f", mean of {num_seeds} seeds"
                                                    if num_seeds > 1 else ""),
                    loss=run.loss_name, best_epochs=results["best_epoch"])
      results_lib.write_results(run.workdir, results)
    test, best = results["test"], ",".join(map(str, results["best_epoch"]))
    say(f"best epoch {best}: val {results_lib.format_metrics(results['val'])}"
        + (f"; test {results_lib.format_metrics(test)}" if test else "")
        + (f" (mean of {num_seeds} seeds)" if num_seeds > 1 else "")
        + f"; wrote {run.workdir}")


def _best_epochs(replicas) -> list:
  """The epochs whose parameters are kept, one per replica (a list, as "best_epoch")."""
  return [replica["best_epoch"] for replica in replicas]


def _of_seed(seeds: Sequence[int], r: int) -> str:
  return f" (replica {r}, seed {seeds[r]})" if len(seeds) > 1 else ""

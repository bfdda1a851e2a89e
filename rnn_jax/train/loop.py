"""`Run`: one `fit` run as its loop and its callbacks see it, and the loop's own work at an
epoch's start and end (validation, history, the best params) and at the run's end (the
test with the best params, results.json's content)."""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.train import metrics as metrics_lib
from rnn_jax.errors import UserError
from rnn_jax.train import provenance, rundir
from rnn_jax.train import results as results_lib
from rnn_jax.train.checks import checked
from rnn_jax.train.options import RESUMABLE_FLAGS, TrainOptions
from rnn_jax.train.placement import Placement, put
from rnn_jax.train.progress import Clock
from rnn_jax.train.step import TrainState, new_totals, run_eval


def train_batches(batches, seeds: Sequence[int], epoch: int):
  """The epoch's batches: replica r's from `batches.train(seeds[r], epoch)`, stacked
  <[num_seeds, batch, ...]> (as they are for a single seed)."""
  if len(seeds) == 1:
    return batches.train(seeds[0], epoch)
  return (tuple(np.stack(parts) for parts in zip(*step))
          for step in zip(*(batches.train(seed, epoch) for seed in seeds)))


class Run:
  """What a `fit` run's callbacks read and may change.

  Fixed: options (`TrainOptions`), workdir, placement, seeds (replica r's is seed + r),
  batches, steps_per_epoch, val_steps, loss_name, metric_names.
  Progress: epoch (the one training, or the last trained), step (steps of it done; 0
  once it ended), epochs_done, clock (`progress.Clock`: compile and training times).
  State: state (the `TrainState`; its totals are the epoch's running sums on the device),
  best_params (each replica's from its best epoch), replicas (each one's "history",
  "best_epoch", "best_loss", "best_val"), meta (the latest checkpoint's JSON part).
  At an epoch's end: rows (each replica's history row of it), improved (whether each
  one's validation loss improved), totals (the epoch's sums on the host).
  At the run's end: results (results.json's content).
  `stop(reason)` ends the run (see `fit`); `interrupted` says Ctrl-C asked to stop.
  """

  def __init__(self, *, options: TrainOptions, workdir: Path, placement: Placement, batches,
               loss, metrics: Sequence, target_unit, steps_per_epoch: int, val_steps: int,
               state: TrainState, eval_step, sigint: rundir.StopOnSigint):
    self.options, self.workdir, self.placement, self.batches = (options, workdir, placement,
                                                                batches)
    self.seeds = [options.seed + r for r in range(options.num_seeds)]
    self.steps_per_epoch, self.val_steps = steps_per_epoch, val_steps
    self.loss_name = metrics_lib.name_of(loss)
    self.metric_names = [metrics_lib.name_of(m) for m in metrics]
    self._loss, self._metrics, self._target_unit = loss, metrics, target_unit
    self._eval_step, self._sigint = eval_step, sigint
    num_seeds = len(self.seeds)
    # Replica r's params if improved[r], else its best ones (one replica: a fresh copy).
    self._keep_best = jax.jit(
        lambda improved, new, old: jax.tree.map(
            lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
            if num_seeds > 1 else jnp.copy(n), new, old), out_shardings=placement.per_replica)
    everyone = put(np.ones([num_seeds], bool), placement.per_replica)
    self.state = state
    self.best_params = self._keep_best(everyone, state.params, state.params)  # own buffers
    session_flags = {k: v for k, v in options.flags.items()
                     if k in RESUMABLE_FLAGS and k not in ("resume", "overwrite", "workdir")}
    self.meta = {"epoch": 0, "step": 0, "seconds": 0.0, "epoch_seconds": 0.0,
                 "config": rundir.config_of(options.flags), "started": provenance.now(),
                 "session_flags": session_flags, "resumed": [],
                 "replicas": [{"history": [], "best_epoch": None, "best_loss": None,
                               "best_val": None} for _ in self.seeds]}
    self.replicas = self.meta["replicas"]
    self.epoch = self.epochs_done = self.step = 0
    self.clock = Clock()
    self.rows: list = []
    self.improved: list = []
    self.totals: dict = {}
    self.results: Optional[dict] = None
    self.stop_reason: Optional[str] = None
    self._record_stop = True
    self.epoch_value = None
    self._seconds_before = self._epoch_seconds_before = 0.0
    self._session_start = self._epoch_start = time.time()

  def restore(self, state: TrainState, best_params, meta: dict) -> None:
    """Continues from a checkpoint: its state, best params and meta (history, epochs done
    and steps of the next, times)."""
    self.state, self.best_params, self.meta = state, best_params, meta
    self.replicas = meta["replicas"]
    self.epoch = self.epochs_done = meta["epoch"]
    self.step = meta["step"]
    self._seconds_before, self._epoch_seconds_before = meta["seconds"], meta["epoch_seconds"]

  # ------------------------------------------------------------------------- stopping

  def stop(self, reason: str, record: bool = True) -> None:
    """Asks the loop to end the run after this step or epoch (see `fit`); results.json's
    "stopped" records `reason` unless not `record` (a callback that records it itself)."""
    if self.stop_reason is None:
      self.stop_reason, self._record_stop = reason, record

  @property
  def interrupted(self) -> bool:
    """Whether Ctrl-C asked the run to stop (it saves a checkpoint and ends unfinished)."""
    return self._sigint.requested

  @property
  def stopping(self) -> bool:
    """Whether a callback or Ctrl-C asked the run to stop."""
    return self.stop_reason is not None or self._sigint.requested

  @property
  def in_epoch(self) -> bool:
    """Whether an epoch is started and not ended (a stop now leaves it unfinished)."""
    return self.epoch > self.epochs_done

  @property
  def global_step(self) -> int:
    return self.epochs_done * self.steps_per_epoch + self.step

  def interruption(self) -> rundir.Interrupted:
    """The error a run stopped by Ctrl-C ends with."""
    what = (f"interrupted in epoch {self.epoch} at step {self.step}" if self.in_epoch
            else f"interrupted after epoch {self.epochs_done}")
    return rundir.Interrupted(rundir.resume_hint(self.workdir, what))

  # ---------------------------------------------------------------------------- times

  def seconds(self) -> float:
    """The run's seconds so far, the earlier sessions' included."""
    return self._seconds_before + time.time() - self._session_start

  def epoch_seconds(self) -> float:
    """The current epoch's seconds so far, an earlier session's part of it included."""
    return self._epoch_seconds_before + time.time() - self._epoch_start

  # ---------------------------------------------------------------------------- epochs

  def start_epoch(self):
    """Starts the next epoch; returns its batches from run.step on (checked as they come)."""
    self.epoch = self.epochs_done + 1
    self._epoch_start = time.time()
    self.clock.start_epoch(self.step)
    self.epoch_value = put(np.int32(self.epoch), self.placement.replicated)
    batches = checked(train_batches(self.batches, self.seeds, self.epoch),
                      f"epoch {self.epoch}'s training", self.placement,
                      stacked=len(self.seeds) > 1)
    return itertools.islice(batches, self.step, self.steps_per_epoch)

  def end_epoch(self) -> None:
    """After the epoch's last step: its metrics (the one wait for the device in an epoch),
    validation, each replica's history row and best params, fresh totals."""
    if self.step < self.steps_per_epoch:
      raise UserError(f"the training data ended after {self.step} of {self.steps_per_epoch} "
                      f"batches in epoch {self.epoch}")
    num_seeds, names = len(self.seeds), ("loss", *self.metric_names)
    totals = jax.device_get(self.state.totals)
    timed_steps, train_seconds = self.clock.end_steps(self.step)
    rows = metrics_lib.replica_means(totals, names, num_seeds)
    for row, gradients in zip(rows, metrics_lib.step_means(totals, num_seeds)):
      row.update(gradients)
    if self.val_steps:
      vals = run_eval(self._eval_step, self.state.params, self.batches.val(), self._loss,
                      self._metrics, self.placement, self.val_steps)
      for row, val in zip(rows, vals):
        row.update({f"val_{k}": v for k, v in val.items()})
    else:  # no validation data: judge by training
      vals = [{k: row[k] for k in names} for row in rows]
    seconds = self.epoch_seconds()
    improved = []
    for replica, row, val in zip(self.replicas, rows, vals):
      row.update(seconds=seconds, steps_per_s=timed_steps / max(train_seconds, 1e-9))
      replica["history"].append({"epoch": self.epoch,
                                 **metrics_lib.with_units(row, self._target_unit)})
      improved.append(replica["best_loss"] is None or val["loss"] < replica["best_loss"])
      if improved[-1]:
        replica.update(best_epoch=self.epoch, best_loss=val["loss"],
                       best_val=metrics_lib.with_units(val, self._target_unit))
    if any(improved):
      self.best_params = self._keep_best(put(np.asarray(improved), self.placement.per_replica),
                                         self.state.params, self.best_params)
    self.state = self.state._replace(totals=new_totals(self.placement, self._loss,
                                                       self._metrics))
    self.rows = [replica["history"][-1] for replica in self.replicas]
    self.improved, self.totals = improved, totals
    self.epochs_done, self.step, self._epoch_seconds_before = self.epoch, 0, 0.0

  # ------------------------------------------------------------------------------ end

  def finish(self, extra_results: dict) -> dict:
    """Tests the best params and sets `results` (results.json's content, for on_run_end)."""
    tests: list[Any] = [None] * len(self.seeds)
    if self.batches.test_steps:
      tests = [metrics_lib.with_units(test, self._target_unit) for test in run_eval(
          self._eval_step, self.best_params, self.batches.test(), self._loss, self._metrics,
          self.placement)]
    stopped = self.stop_reason is not None and self._record_stop and (
        self.epochs_done < self.options.epochs)
    self.results = {
        "experiment": self.options.experiment,
        "model": self.options.model_name,
        "flags": dict(self.options.flags),
        **results_lib.replica_results(self.replicas, tests, self.seeds),
        "seconds": self.seconds(),
        "compile_seconds": self.clock.compile_seconds,
        **({"resumed": self.meta["resumed"]} if self.meta.get("resumed") else {}),
        **extra_results,
        "provenance": provenance.environment(self.meta.get("started")),
        **({"stopped": {"reason": self.stop_reason, "epochs": self.epochs_done,
                        "steps": self.global_step}} if stopped else {}),
    }
    return self.results

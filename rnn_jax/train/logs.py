"""A run's metric logs: TensorBoard event files and metrics.csv.

  <run>/tensorboard/          every metric per epoch ("epoch/<name>", step = the epoch) and
                              the training loss every --log_every_steps steps ("step/loss",
                              step = the global step); with --num_seeds > 1, one folder per
                              replica (tensorboard/seed_<seed>/)
  <run>/metrics.csv           the history, one row per epoch (and replica)

Open them with `tensorboard --logdir runs/` (pip install tensorboard), or read metrics.csv
with any spreadsheet. Written by the primary process only.
"""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rnn_jax import checkpoints


class RunLogs:
  """TensorBoard writers (one per replica) and metrics.csv of one run directory."""

  def __init__(self, workdir: Path, seeds: Sequence[int], *, fresh: bool):
    self.workdir, self.seeds = Path(workdir), list(seeds)
    self.root = self.workdir / "tensorboard"
    if fresh:  # a new run: no events or rows of an earlier one that never finished
      shutil.rmtree(self.root, ignore_errors=True)
      (self.workdir / "metrics.csv").unlink(missing_ok=True)
    # Opened now: importing tensorboardX takes a second or two, not to be timed as steps.
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    dirs = ([self.root] if len(self.seeds) == 1
            else [self.root / f"seed_{seed}" for seed in self.seeds])
    self._writers = [SummaryWriter(logdir=str(d)) for d in dirs]

  def step_loss(self, global_step: int, loss) -> None:
    """The mean training loss of the steps since the last report: <[]> or <[num_seeds]>."""
    for writer, value in zip(self._writers, np.reshape(loss, [-1])):
      writer.add_scalar("step/loss", float(value), global_step)

  def epoch(self, epoch: int, rows: Sequence[Mapping[str, float]],
            histories: Sequence[Sequence[Mapping[str, float]]]) -> None:
    """This epoch's row of each replica to TensorBoard; every replica's history to CSV."""
    for writer, row in zip(self._writers, rows):
      for name, value in row.items():
        if name != "epoch":
          writer.add_scalar(f"epoch/{name}", float(value), epoch)
      writer.flush()
    self.write_csv(histories)

  def write_csv(self, histories: Sequence[Sequence[Mapping[str, float]]]) -> None:
    columns = (["seed"] if len(self.seeds) > 1 else []) + list(histories[0][0])
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for seed, history in zip(self.seeds, histories):
      for row in history:
        writer.writerow({**row, "seed": seed} if len(self.seeds) > 1 else row)
    checkpoints.write_atomic(self.workdir / "metrics.csv", out.getvalue())

  def close(self) -> None:
    for writer in self._writers:
      writer.close()
    self._writers = []  # closed for good: later scalars go nowhere

"""A run's metric logs: TensorBoard event files and metrics.csv.

  <run>/tensorboard/          every metric per epoch ("epoch/<name>", step = the epoch) and
                              the training loss every --log_every_steps steps ("step/loss",
                              step = the global step); with --num_seeds > 1, one folder per
                              replica (tensorboard/seed_<seed>/)
  <run>/metrics.csv           the history, one row per epoch (and replica)

Open them with `tensorboard --logdir runs/` (pip install tensorboard), or read metrics.csv
with any spreadsheet. Written by the primary process only.

Every write goes through `rnn_jax.io.files`: a full disk or a read-only directory is one
`UserError` line, never a traceback from a writer thread (the event files are written
here, synchronously, in TensorBoard's format: TFRecord framing of `Event` protos).

A resumed run (`resumed=`) keeps exactly what its checkpoint holds: metrics.csv is
rewritten from the checkpoint's history, and the event files are rewritten into one
that holds each epoch's scalars once (those of epochs up to the checkpoint's, missing
ones filled in from its history) and the step losses up to its step; scalars logged
after the checkpoint by the interrupted session are dropped, since the resumed session
logs them again.

`MetricLogs` is the `fit` callback that writes them.
"""
from __future__ import annotations

import csv
import io
import os
import socket
import struct
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from rnn_jax import distributed
from rnn_jax.io import files
from rnn_jax.train.callbacks import Callback
from rnn_jax.train.progress import StepLoss

_EPOCH, _STEP = "epoch/", "step/"


def _masked_crc(data: bytes) -> int:
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel
  return masked_crc32c(data)


def _record(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data
          + struct.pack("<I", _masked_crc(data)))


def read_events(path: Path) -> list:
  """The `Event` protos of an event file, up to its first damaged or cut-off record."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  try:
    data = Path(path).read_bytes()
  except OSError:
    return []
  at, out = 0, []
  while at + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    end = at + 12 + length + 4
    if end > len(data):
      break
    body = data[at + 12:at + 12 + length]
    if struct.unpack("<I", data[end - 4:end])[0] != _masked_crc(body):
      break
    try:
      out.append(event_pb2.Event.FromString(body))
    except Exception:  # pylint: disable=broad-except
      break
    at = end
  return out


def _scalar_event(tag: str, value: float, step: int, wall_time: Optional[float] = None):
  from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
  summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                 simple_value=float(value))])
  return event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time,
                         step=int(step), summary=summary)


class EventFile:
  """One TensorBoard event file, written synchronously through `rnn_jax.io.files`."""

  def __init__(self, directory: Path, events: Sequence = ()):
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    files.make_dirs(directory)
    self.path = Path(directory) / (f"events.out.tfevents.{int(time.time())}."
                                   f"{socket.gethostname()}")
    head = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
    # The first records (an earlier session's kept scalars) appear whole or not at all.
    files.write_atomic(self.path, b"".join(_record(e.SerializeToString())
                                           for e in [head, *events]))
    with files.writing(self.path):
      self._file = open(self.path, "ab")  # pylint: disable=consider-using-with

  def add(self, event) -> None:
    if self._file is None:
      return
    with files.writing(self.path):  # to the OS at once: a SIGKILL loses none of it
      self._file.write(_record(event.SerializeToString()))
      self._file.flush()

  def flush(self) -> None:
    if self._file is None:
      return
    with files.writing(self.path):
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is None:
      return
    file, self._file = self._file, None
    with files.writing(self.path):
      try:
        file.flush()
      finally:
        file.close()


def _kept_events(directory: Path, epoch: int, global_step: int,
                 history: Sequence[Mapping[str, float]]) -> list:
  """The scalars of `directory`'s event files that the checkpoint (`epoch` done, at
  `global_step`) covers, each (tag, step) once; epochs of `history` missing from them added."""
  kept = {}
  for path in sorted(directory.glob("events.out.tfevents.*")):
    for event in read_events(path):
      for value in event.summary.value:
        limit = epoch if value.tag.startswith(_EPOCH) else global_step
        if event.step <= limit and (value.tag, event.step) not in kept:
          kept[(value.tag, event.step)] = _scalar_event(value.tag, value.simple_value,
                                                        event.step, event.wall_time)
  for row in history:
    if row["epoch"] > epoch:
      continue
    for name, value in row.items():
      if name != "epoch" and (_EPOCH + name, row["epoch"]) not in kept:
        kept[(_EPOCH + name, row["epoch"])] = _scalar_event(_EPOCH + name, value, row["epoch"])
  return sorted(kept.values(), key=lambda e: (e.wall_time, e.step))


class RunLogs:
  """TensorBoard event files (one per replica) and metrics.csv of one run directory.

  `resumed`: (epochs done, global step, each replica's history) of the checkpoint a
  resumed run continues from; None for a new run, which starts both logs afresh."""

  def __init__(self, workdir: Path, seeds: Sequence[int], *, fresh: bool,
               resumed: Optional[tuple[int, int, Sequence[Sequence[Mapping]]]] = None):
    self.workdir, self.seeds = Path(workdir), list(seeds)
    self.root = self.workdir / "tensorboard"
    dirs = ([self.root] if len(self.seeds) == 1
            else [self.root / f"seed_{seed}" for seed in self.seeds])
    if fresh or resumed is None:  # a new run: no events or rows of an earlier one
      files.remove_tree(self.root)
      files.remove_file(self.workdir / "metrics.csv")
      self._writers = [EventFile(d) for d in dirs]
      return
    epoch, global_step, histories = resumed
    self._writers = []
    for directory, history in zip(dirs, histories):
      old = sorted(directory.glob("events.out.tfevents.*"))
      writer = EventFile(directory, _kept_events(directory, epoch, global_step, history))
      self._writers.append(writer)
      for path in old:
        if path != writer.path:
          files.remove_file(path)
    if histories and histories[0]:
      self.write_csv(histories)
    else:
      files.remove_file(self.workdir / "metrics.csv")

  def step_loss(self, global_step: int, loss) -> None:
    """The mean training loss of the steps since the last report: <[]> or <[num_seeds]>."""
    for writer, value in zip(self._writers, np.reshape(loss, [-1])):
      writer.add(_scalar_event(_STEP + "loss", float(value), global_step))

  def epoch(self, epoch: int, rows: Sequence[Mapping[str, float]],
            histories: Sequence[Sequence[Mapping[str, float]]]) -> None:
    """This epoch's row of each replica to TensorBoard; every replica's history to CSV."""
    for writer, row in zip(self._writers, rows):
      for name, value in row.items():
        if name != "epoch":
          writer.add(_scalar_event(_EPOCH + name, float(value), epoch))
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
    files.write_atomic(self.workdir / "metrics.csv", out.getvalue())

  def close(self) -> None:
    writers, self._writers = self._writers, []  # closed for good: later scalars go nowhere
    for writer in writers:
      writer.close()

  def close_quietly(self) -> None:
    """`close` after a failed write: that error was reported already."""
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


class MetricLogs(Callback):
  """`RunLogs` of a `fit` run: each epoch's metrics, and the training loss every
  `log_every_steps` steps (`progress.StepLoss`: read back without waiting)."""

  def __init__(self):
    self.logs: Optional[RunLogs] = None
    self._step_loss = StepLoss(0)

  def on_run_start(self, run) -> None:
    # Every process takes the snapshots (of arrays that may span processes); one writes.
    self._step_loss = StepLoss(run.options.log_every_steps)
    self._step_loss.compile(run.state.totals)  # now, not in a step's time
    if not distributed.is_primary():
      return
    histories = [replica["history"] for replica in run.replicas]
    self.logs = RunLogs(run.workdir, run.seeds, fresh=run.epochs_done == run.step == 0,
                        resumed=(run.epochs_done,
                                 run.epochs_done * run.steps_per_epoch + run.step, histories))

  def on_epoch_start(self, run) -> None:
    self._step_loss.start_epoch()

  def on_step(self, run, step: int, totals) -> None:
    self._step_loss.after_step(step, totals)
    self._write_step_losses(run, self._step_loss.ready())

  def on_steps_end(self, run) -> None:
    # Before the epoch's checkpoint: a run killed after it has logged every step it saved.
    self._write_step_losses(run, self._step_loss.ready(wait=True))

  def on_epoch_end(self, run) -> None:
    if self.logs is not None:
      self.logs.epoch(run.epoch, run.rows, [replica["history"] for replica in run.replicas])

  def on_run_end(self, run) -> None:
    if self.logs is not None:
      self.logs.close()

  def _write_step_losses(self, run, losses) -> None:
    for step, _, recent in losses:
      if self.logs is not None:
        self.logs.step_loss((run.epoch - 1) * run.steps_per_epoch + step, recent)

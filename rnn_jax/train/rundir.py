"""A run's directory: its lock, the rules for reusing it, checkpoint writes and signals."""
from __future__ import annotations

import fcntl
import signal
import sys
from pathlib import Path
from typing import Any, Mapping

from rnn_jax import distributed
from rnn_jax.io import checkpoints, files
from rnn_jax.errors import UserError
from rnn_jax.train.options import RESUMABLE_FLAGS


class Diverged(UserError):
  """The loss became NaN or infinite."""


class Interrupted(UserError):
  """SIGINT: the run stopped after saving a checkpoint."""


class StopOnSigint:
  """While active, the first SIGINT only sets `requested` (the loop saves and stops);
  a second one interrupts as usual."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    self.requested = True
    signal.signal(signal.SIGINT, self._previous)
    print("\nSIGINT: stopping after saving a checkpoint (Ctrl-C again to abort)",
          file=sys.stderr, flush=True)

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGINT, self._handler)
    except ValueError:  # not the main thread: leave SIGINT alone
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def lock(workdir: Path):
  """An exclusive lock on the workdir for this process's lifetime (freed even by SIGKILL)."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir: cannot create {workdir}: {files.cause(e)}") from None
  with files.writing(workdir / ".lock"):
    lock_file = open(workdir / ".lock", "a")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock_file.close()
    raise UserError(f"another run is using {workdir} (it holds {workdir / '.lock'})") from None
  return lock_file


def prepare(workdir: Path, *, resume: bool, overwrite: bool) -> None:
  """Refuses to touch a finished or interrupted run unless --overwrite / --resume."""
  ckpt_dir = workdir / "checkpoints"
  if overwrite:
    if distributed.is_primary():  # results first: the run is unfinished from then on
      for name in ("results.json", "history.png", "history.svg", "metrics.csv"):
        files.remove_file(workdir / name)
      files.remove_tree(workdir / "tensorboard")
      files.remove_tree(ckpt_dir)
  elif (workdir / "results.json").exists():
    raise UserError(f"{workdir} already holds a finished run ({workdir / 'results.json'}); "
                    "pass --overwrite to replace it or choose another --workdir")
  elif not resume and checkpoints.committed(ckpt_dir / "latest"):
    raise UserError(f"{workdir} holds an unfinished run ({ckpt_dir}); pass --resume to "
                    "continue it or --overwrite to start over")


def save(directory: Path, name: str, state, meta, *, keep: int) -> None:
  """A checkpoint; a write error is a one-line `UserError` (checkpoints.save) and the
  previous checkpoint stays."""
  checkpoints.save(directory, name, state, meta, keep=keep)


def config_of(flag_values: Mapping[str, Any]) -> dict:
  """The flags a run must keep when resumed: all but `RESUMABLE_FLAGS`."""
  return {k: v for k, v in flag_values.items() if k not in RESUMABLE_FLAGS}


def flag_text(name: str, value: Any) -> str:
  """`--name=value` as one would type it."""
  if isinstance(value, (list, tuple)):
    value = ",".join(map(str, value))
  elif value is None:
    return f"--{name} unset"
  elif isinstance(value, bool):
    return f"--{name}" if value else f"--no{name}"
  return f"--{name}={value}"


def check_same_config(saved: Mapping[str, Any], current: Mapping[str, Any], workdir: Path,
                      what: str = "was trained") -> None:
  """One line naming every flag whose value differs from the saved run's, both values,
  and the two ways on."""
  changed = [name for name in sorted(set(saved) | set(current))
             if saved.get(name) != current.get(name)]
  if not changed:
    return
  differences = ", ".join(
      f"{flag_text(name, saved.get(name))} (now {flag_text(name, current.get(name))})"
      for name in changed)
  old = " ".join(flag_text(name, saved.get(name)) for name in changed)
  raise UserError(f"--resume: {workdir} {what} with other flags: {differences}; resume with "
                  f"{old}, or pass --overwrite to start over")


def check_resume(workdir: Path, config: Mapping[str, Any], epochs: int) -> None:
  """Before any array is read: the latest checkpoint's configuration (its JSON part) must
  be `config`, and --epochs at least the epochs it has trained. Quiet when there is none."""
  found = checkpoints.read_meta(workdir / "checkpoints" / "latest", report=lambda line: None)
  if found is None:
    return
  _, meta = found
  check_same_config(meta.get("config", {}), config, workdir)
  if epochs < meta["epoch"]:
    raise UserError(f"--resume: {workdir} has trained {meta['epoch']} epochs already, more "
                    f"than --epochs={epochs}; resume with --epochs={meta['epoch']} or more, or "
                    "pass --overwrite to start over")


def resume_hint(workdir: Path, what: str) -> str:
  return (f"{what}; checkpoint saved in {workdir / 'checkpoints'}, run again with --resume "
          "to continue")

"""Crash-safe checkpoints: orbax-checkpoint directories with a commit marker.

A checkpoint `<directory>/<name>/` holds a pytree of arrays ("state") and a JSON dict
("meta"), written by orbax (which writes into a temporary directory and renames it).
It counts only once its marker `<name>.sha256` exists, written atomically afterwards,
holding the SHA-256 of every file in it. So a run killed at any moment leaves either a
committed checkpoint or debris that is ignored and cleaned up, and a checkpoint whose
files were later truncated or altered is detected by its checksum (or by orbax failing
to read it) and skipped in favour of the previous good one. A checkpoint whose bytes are
intact but whose structure differs from what the caller expects (another model, other
flags) is not corrupt: `restore` raises `Mismatch` and leaves every file as it is.
`read_meta` reads the JSON part alone, without any array, to compare configurations first.

A write that fails (no space, read-only, name too long; orbax reports some of these as
`ValueError: RESOURCE_EXHAUSTED`, some from its writer threads) is one `UserError` line,
with no traceback logged by those threads; the half-written checkpoint is removed and the
previous one stays.

With several processes (rnn_jax.distributed) every process calls `save` and `restore`:
orbax writes each process's shards and coordinates the commit; process 0 alone removes
debris, writes the marker and prunes. This assumes a directory every process sees (one
machine, or a shared file system).
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import orbax.checkpoint as ocp

from rnn_jax import distributed
from rnn_jax.io import files
from rnn_jax.errors import UserError

MARKER = ".sha256"
_WRITER_JOIN_SECONDS = 30.0  # the longest a failed save waits for orbax's writer threads
_TMP_MARKER = ".orbax-checkpoint-tmp"


def _checksum(path: Path) -> str:
  digest = hashlib.sha256()
  for file in sorted(p for p in path.rglob("*") if p.is_file()):
    digest.update(str(file.relative_to(path)).encode() + b"\0")
    digest.update(file.read_bytes())
  return digest.hexdigest()


class Mismatch(UserError):
  """An intact checkpoint whose structure is not the one asked for."""


def write_atomic(path: os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temporary file and `os.replace` (`files`)."""
  files.write_atomic(path, text)


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


@contextlib.contextmanager
def _quiet():
  """orbax logs every save at INFO through absl: keep the terminal for training progress."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(max(level, logging.WARNING))
  try:
    yield
  finally:
    logger.setLevel(level)


def _orbax_save(path: Path, state: Any, meta: dict) -> Optional[str]:
  """Writes the checkpoint with orbax; returns None, or the cause of a write error (a full
  disk) in a few words, after the save's own reports of it are silenced
  (`files.quiet_write_error_reports`). orbax returns from a failed save while its writer
  threads still run and while its futures, which asyncio reports when collected, are
  still held: the threads are waited for and the futures collected while the filters
  stand. Any other error is raised as it is."""
  with files.quiet_write_error_reports():
    started = set(threading.enumerate())
    try:
      _checkpointer().save(path.absolute(), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
      return None
    except Exception as error:  # pylint: disable=broad-except
      if not files.is_write_error(error):
        raise
      cause = files.cause(error)
    # Out of the except block: the error and the frames it held are let go.
    writers = list(set(threading.enumerate()) - started)
    while writers:  # popped: a finished thread holds its error, and so orbax's futures
      writers.pop().join(timeout=_WRITER_JOIN_SECONDS)
    gc.collect()
    return cause


def committed(directory: os.PathLike) -> list[str]:
  """Names of the committed checkpoints in `directory`, oldest first (names sort by age)."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(p.name[:-len(MARKER)] for p in directory.glob("*" + MARKER)
                if (directory / p.name[:-len(MARKER)]).is_dir())


def _remove(path: Path) -> None:
  if path.is_dir():
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists():
    path.unlink()


def save(directory: os.PathLike, name: str, state: Any, meta: dict, *,
         keep: int = 2, before_commit: Optional[Callable[[], None]] = None) -> Path:
  """Saves `state` (a pytree of arrays) and `meta` (JSON) as `<directory>/<name>`.

  Then deletes all but the newest `keep` committed checkpoints and any uncommitted
  debris. `before_commit` runs between writing the files and the commit marker (a hook
  for tests that kill the process there).
  """
  directory = Path(directory)
  path = directory / name
  debris = lambda: [path, *directory.glob(name + _TMP_MARKER + "*")]
  if distributed.is_primary():
    files.make_dirs(directory)
    _remove(directory / (name + MARKER))
    _remove(path)  # debris of an interrupted save of the same name
  distributed.barrier(f"checkpoint-save-{path}")
  with files.writing(path), _quiet():
    try:
      cause = _orbax_save(path, state, meta)
    except Exception:
      cause = None
      if distributed.is_primary():
        for leftover in debris():
          _remove(leftover)
      raise
  if cause is not None:
    if distributed.is_primary():
      for leftover in debris():
        _remove(leftover)
    raise UserError(f"cannot write {path}: {cause}")
  if not distributed.is_primary():
    return path
  if before_commit is not None:
    before_commit()
  try:
    write_atomic(directory / (name + MARKER), _checksum(path) + "\n")
  except UserError:
    _remove(path)
    raise
  keep_names = set(committed(directory)[-keep:])
  for entry in directory.iterdir():
    base = entry.name[:-len(MARKER)] if entry.name.endswith(MARKER) else entry.name
    if base not in keep_names:
      _remove(entry)
  return path


def _report(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _reason(e: BaseException) -> str:
  return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _intact(directory: Path, name: str) -> None:
  """Raises OSError or ValueError unless the checkpoint's files match its marker."""
  expected = (directory / (name + MARKER)).read_text().strip()
  if _checksum(directory / name) != expected:
    raise ValueError("checksum mismatch")


def read_meta(directory: os.PathLike, report: Callable[[str], None] = _report):
  """The newest intact checkpoint's `(name, meta)` (its JSON part; no array is read), or
  None. Corrupt ones are reported in one line each and skipped, as `restore` does."""
  directory = Path(directory)
  for name in reversed(committed(directory)):
    try:
      _intact(directory, name)
      return name, json.loads((directory / name / "meta" / "metadata").read_text())
    except (OSError, ValueError) as e:
      report(f"warning: checkpoint {directory / name} is corrupt ({_reason(e)}); "
             "trying the previous one")
  return None


def restore(directory: os.PathLike, target: Any, report: Callable[[str], None] = _report):
  """The newest good checkpoint in `directory` as `(name, state, meta)`, or None.

  `target` is a pytree like the saved state (arrays or jax.ShapeDtypeStruct with
  shardings) that tells orbax the structure and placement. A corrupt checkpoint (failed
  checksum, unreadable or missing files) is reported in one line through `report` and the
  previous one is tried. An intact checkpoint that orbax cannot fit to `target` (another
  tree structure, shape or dtype) raises `Mismatch`: it is not corrupt, and nothing is
  removed.
  """
  directory = Path(directory)
  for name in reversed(committed(directory)):
    path = directory / name
    try:
      _intact(directory, name)
    except (OSError, ValueError) as e:
      report(f"warning: checkpoint {path} is corrupt ({_reason(e)}); trying the previous one")
      continue
    try:
      with _quiet():
        restored = _checkpointer().restore(path.absolute(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except OSError as e:
      report(f"warning: checkpoint {path} is unreadable ({_reason(e)}); trying the previous one")
      continue
    except Exception as e:  # pylint: disable=broad-except
      raise Mismatch(f"checkpoint {path} is intact but does not fit this model "
                     f"({_reason(e)}); it is kept: resume with the flags it was written "
                     "with, or pass --overwrite to start over") from None
    return name, restored["state"], restored["meta"]
  return None


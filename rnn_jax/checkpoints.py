"""Crash-safe checkpoints: orbax-checkpoint directories with a commit marker.

A checkpoint `<directory>/<name>/` holds a pytree of arrays ("state") and a JSON dict
("meta"), written by orbax (which writes into a temporary directory and renames it).
It counts only once its marker `<name>.sha256` exists, written atomically afterwards,
holding the SHA-256 of every file in it. So a run killed at any moment leaves either a
committed checkpoint or debris that is ignored and cleaned up, and a checkpoint whose
files were later truncated or altered is detected by its checksum (or by orbax failing
to read it) and skipped in favour of the previous good one.

With several processes (rnn_jax.distributed) every process calls `save` and `restore`:
orbax writes each process's shards and coordinates the commit; process 0 alone removes
debris, writes the marker and prunes. This assumes a directory every process sees (one
machine, or a shared file system).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import orbax.checkpoint as ocp

from rnn_jax import distributed

MARKER = ".sha256"
_TMP_MARKER = ".orbax-checkpoint-tmp"


def _checksum(path: Path) -> str:
  digest = hashlib.sha256()
  for file in sorted(p for p in path.rglob("*") if p.is_file()):
    digest.update(str(file.relative_to(path)).encode() + b"\0")
    digest.update(file.read_bytes())
  return digest.hexdigest()


def write_atomic(path: os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temporary file and `os.replace`."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


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
  if distributed.is_primary():
    directory.mkdir(parents=True, exist_ok=True)
    _remove(directory / (name + MARKER))
    _remove(path)  # debris of an interrupted save of the same name
  distributed.barrier(f"checkpoint-save-{path}")
  with _quiet():
    _checkpointer().save(path.absolute(), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
  if not distributed.is_primary():
    return path
  if before_commit is not None:
    before_commit()
  write_atomic(directory / (name + MARKER), _checksum(path) + "\n")
  keep_names = set(committed(directory)[-keep:])
  for entry in directory.iterdir():
    base = entry.name[:-len(MARKER)] if entry.name.endswith(MARKER) else entry.name
    if base not in keep_names:
      _remove(entry)
  return path


def restore(directory: os.PathLike, target: Any,
            report: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)):
  """The newest good checkpoint in `directory` as `(name, state, meta)`, or None.

  `target` is a pytree like the saved state (arrays or jax.ShapeDtypeStruct with
  shardings) that tells orbax the structure and placement. A corrupt checkpoint is
  reported in one line through `report` and the previous one is tried.
  """
  directory = Path(directory)
  for name in reversed(committed(directory)):
    path = directory / name
    try:
      expected = (directory / (name + MARKER)).read_text().strip()
      if _checksum(path) != expected:
        raise ValueError("checksum mismatch")
      with _quiet():
        restored = _checkpointer().restore(path.absolute(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
      return name, restored["state"], restored["meta"]
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      report(f"warning: checkpoint {path} is corrupt ({reason}); trying the previous one")
  return None


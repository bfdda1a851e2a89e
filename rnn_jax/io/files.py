"""Every write of a run (checkpoints, results.json, plots, summary.md, the lock, caches)
goes through here: a failed write is one `UserError` line naming the path and the cause
(no space left, read-only, name too long), and leaves no temporary file behind.

  with files.writing(path):        # OSError and orbax's write errors -> UserError
    ...
  files.write_atomic(path, text)   # temporary file + os.replace, the user's umask
  files.save_figure(fig, path)     # a matplotlib figure, the same way
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Union

from rnn_jax.errors import UserError

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "is a directory",
}
# What tensorstore (under orbax) says instead of an errno.
_STATUS_CAUSES = (
    ("RESOURCE_EXHAUSTED", "no space left on device"),
    ("No space left", "no space left on device"),
    ("Read-only file system", "read-only file system"),
    ("PERMISSION_DENIED", "permission denied"),
    ("File name too long", "file name too long"),
)


def cause(error: BaseException) -> str:
  """A write error's cause in a few words."""
  if isinstance(error, OSError) and error.errno in _CAUSES:
    return _CAUSES[error.errno]
  text = str(error)
  for marker, words in _STATUS_CAUSES:
    if marker in text:
      return words
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  return (text.strip().splitlines() or [type(error).__name__])[0][:200]


# Errnos that say the disk refused a write (not that a network or a reader failed).
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG,
               errno.EACCES, errno.EPERM)


def is_disk_error(error: BaseException) -> bool:
  """An OSError of a refused write (full, read-only, too long, not permitted)."""
  return isinstance(error, OSError) and error.errno in DISK_ERRNOS


def private_temp(path: os.PathLike, suffix: str = ".part"):
  """(fd, name) of a new temporary file beside `path` with the user's umask (mkstemp's
  0600 would keep a shared cache private); a failure is a `UserError` line."""
  import tempfile  # pylint: disable=import-outside-toplevel
  path = Path(path)
  with writing(path):
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, umask_mode())
  return fd, name


def is_write_error(error: BaseException) -> bool:
  """OSError, or an orbax/tensorstore error that carries an I/O status."""
  if isinstance(error, OSError):
    return True
  text = str(error)
  return isinstance(error, (ValueError, RuntimeError)) and any(
      marker in text for marker, _ in _STATUS_CAUSES)


class WriteErrorRecords(logging.Filter):
  """Drops a log record that reports a write error with its traceback (orbax's writer
  threads, through absl; asyncio, for their futures): the write raises it as one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return error is None or not is_write_error(error)


def install_write_error_filters() -> Callable[[], None]:
  """Drops the reports of a failed write that would print tracebacks beside its one
  `UserError` line: `WriteErrorRecords` on the absl and asyncio loggers, and the "Event
  loop is closed" errors that tensorstore's pending writes report through
  `sys.unraisablehook` once a failed orbax save has closed its event loop. Any other
  record or unraisable error goes on as before. Returns the function that removes them."""
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  record_filter = WriteErrorRecords()
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous_hook(unraisable)

  def remove():
    for logger in loggers:
      logger.removeFilter(record_filter)
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous_hook
  for logger in loggers:
    logger.addFilter(record_filter)
  sys.unraisablehook = hook
  return remove


@contextlib.contextmanager
def quiet_write_error_reports():
  """`install_write_error_filters` for the duration of the block."""
  remove = install_write_error_filters()
  try:
    yield
  finally:
    remove()


@contextlib.contextmanager
def writing(path: os.PathLike, *, cleanup: Iterable[os.PathLike] = ()):
  """Turns a write error inside the block into `UserError("cannot write PATH: CAUSE")`,
  after removing `cleanup` (the block's temporary files or directories)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not is_write_error(e):
      raise
    for leftover in cleanup:
      remove(Path(leftover))
    raise UserError(f"cannot write {path}: {cause(e)}") from None


def remove(path: Path) -> None:
  """Removes a file or directory tree if it is there; never raises."""
  import shutil  # pylint: disable=import-outside-toplevel
  try:
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink(missing_ok=True)
  except OSError:
    pass


def remove_file(path: os.PathLike) -> None:
  """Removes a file if it is there; a failure is a `UserError` line."""
  with writing(path):
    Path(path).unlink(missing_ok=True)


def remove_tree(path: os.PathLike) -> None:
  """Removes a directory tree (or a file) if it is there; a failure is a `UserError` line."""
  import shutil  # pylint: disable=import-outside-toplevel
  path = Path(path)
  with writing(path):
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    else:
      path.unlink(missing_ok=True)


def umask_mode(mode: int = 0o666) -> int:
  """`mode` less the process's umask: what `open(..., "w")` would give a new file."""
  mask = os.umask(0)
  os.umask(mask)
  return mode & ~mask


def tmp_path(path: os.PathLike) -> Path:
  """The temporary name a write of `path` uses (in the same directory, hidden)."""
  path = Path(path)
  return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def write_atomic(path: os.PathLike, data: Union[str, bytes]) -> Path:
  """Writes `data` to `path` through a temporary file and `os.replace`; a failed write
  is a `UserError` and leaves neither a temporary file nor a changed `path`."""
  path = Path(path)
  tmp = tmp_path(path)
  with writing(path, cleanup=[tmp]):
    with open(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return path


def make_dirs(path: os.PathLike) -> Path:
  """`mkdir -p`, with a failure as a `UserError`."""
  path = Path(path)
  with writing(path):
    path.mkdir(parents=True, exist_ok=True)
  return path


def save_figure(fig, path: os.PathLike, *, close: bool = True, **kwargs) -> Path:
  """`fig.savefig` (any format: PNG, SVG, PDF, by the suffix) through a temporary file and
  `os.replace`; closes the figure unless `close=False`."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  path = Path(path)
  tmp = tmp_path(path)
  try:
    with writing(path, cleanup=[tmp]):
      fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or None, **kwargs)
      os.replace(tmp, path)
  finally:
    if close:
      plt.close(fig)
  return path

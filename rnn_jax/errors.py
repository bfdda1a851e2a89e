"""Errors a user can fix: one line naming the file, line, column or flag; no traceback.

Raise `UserError("path/to/file.csv line 12, column 'T (degC)': not a number: 'abc'")`
anywhere; `run(main)` (the experiments' entry point, in place of `absl.app.run`) prints
`error: <message>` on stderr and exits with status 2, and so it does for the other
anticipated errors, the library's `ValueError` and `TypeError` (a bad value or argument)
and `OSError` (a file: `FILE: cause`); only another exception, a bug, is a traceback.
Ctrl-C (SIGINT) before training, or a second one during it, prints one `error:
interrupted` line and exits with status 130 (during training the first one saves a
checkpoint and stops: `rnn_jax.train`).
"""
from __future__ import annotations

import signal
import sys
from typing import Callable


class UserError(Exception):
  """A problem with the user's input, flags or files; the message is shown as is."""


def _guarded(main: Callable) -> Callable:
  def wrapper(argv):
    try:
      # Ctrl-C as KeyboardInterrupt from here on, so that every `finally` cleans up (an
      # experiments package's handler may have exited at once while importing).
      _interrupts_as_exceptions()
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
    except (ValueError, TypeError, OSError) as e:  # anticipated: the user's value or file
      print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
      sys.exit(2)
    except KeyboardInterrupt:
      print("error: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
      sys.exit(130)
  return wrapper


def one_line(error: BaseException) -> str:
  """An anticipated error as one line: an OSError as `FILE: cause`, any other as its
  message with the line breaks folded (its type's name when it has none)."""
  if isinstance(error, OSError) and error.strerror:
    from rnn_jax.io import files  # pylint: disable=import-outside-toplevel
    cause = files.cause(error)
    cause = cause[:1].lower() + cause[1:]
    return f"{error.filename}: {cause}" if error.filename else cause
  return " ".join(str(error).split()) or type(error).__name__


def _interrupts_as_exceptions() -> None:
  try:
    if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):
      signal.signal(signal.SIGINT, signal.default_int_handler)
  except ValueError:  # not the main thread: leave SIGINT alone
    pass


def run(main: Callable) -> None:
  """`absl.app.run(main)`, with `UserError`, `ValueError`, `TypeError` and `OSError`
  turned into a one-line message and exit 2.

  absl itself reports bad flag values (unknown enum, failed validator) in one line and
  exits 1.
  """
  # absl only here: the data modules raise UserError without needing absl installed.
  from absl import app, logging  # pylint: disable=import-outside-toplevel
  from rnn_jax.io import files  # pylint: disable=import-outside-toplevel
  # For the command's whole process: a failed checkpoint write is one `error:` line, and
  # orbax's threads and futures may report it again as late as the process's exit.
  files.install_write_error_filters()
  # Keep the terminal to the experiment's own lines: JAX's INFO logs (e.g. "Unable to
  # initialize backend 'tpu'") show only with --verbosity=0 or more.
  logging.set_verbosity(logging.WARNING)
  app.run(_guarded(main))

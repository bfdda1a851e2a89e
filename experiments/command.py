"""The command line of every experiment and benchmark: `run(main)` in place of
`absl.app.run(main)`.

`UserError` (rnn_jax.errors) and the library's other anticipated errors, `ValueError` and
`TypeError` (a bad value or argument) and `OSError` (a file: `FILE: cause`), print one
`error: <message>` line on stderr and exit with status 2; only another exception, a bug,
is a traceback. Ctrl-C (SIGINT) before training, or a second one during it, prints one
`error: interrupted` line and exits with status 130 (during training the first one saves a
checkpoint and stops: `rnn_jax.train.fit`).
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

from absl import app, logging

from rnn_jax.errors import UserError, one_line
from rnn_jax.io import files


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
  # For the command's whole process: a failed checkpoint write is one `error:` line, and
  # orbax's threads and futures may report it again as late as the process's exit.
  files.install_write_error_filters()
  # Keep the terminal to the experiment's own lines: JAX's INFO logs (e.g. "Unable to
  # initialize backend 'tpu'") show only with --verbosity=0 or more.
  logging.set_verbosity(logging.WARNING)
  app.run(_guarded(main))

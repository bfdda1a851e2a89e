"""Experiments: thin, declarative modules (flags, models, data) over `rnn_jax.train.fit`.

Run one with `./run.sh NAME --flags` or `python -m experiments.NAME --flags`.
"""

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_while_starting(signum, frame):  # pylint: disable=unused-argument
  """Ctrl-C while the experiment's imports load (before `command.run` takes over): the same
  one line and exit status 130 as later, before training."""
  _sys.stderr.write("error: interrupted (Ctrl-C)\n")
  _sys.stderr.flush()
  _os._exit(130)  # pylint: disable=protected-access


# Only for a command line (python -m experiments.NAME), not a test process importing us.
if ("pytest" not in _sys.modules
    and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler):
  _signal.signal(_signal.SIGINT, _interrupted_while_starting)

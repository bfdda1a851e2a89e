"""Errors a user can fix: one line naming the file, line, column or flag; no traceback.

Raise `UserError("path/to/file.csv line 12, column 'T (degC)': not a number: 'abc'")`
anywhere; a command line (`experiments.command.run`) prints it as one `error:` line and
exits with status 2, as it does for the library's `ValueError`, `TypeError` and
`OSError` (`one_line`).
"""
from __future__ import annotations



class UserError(Exception):
  """A problem with the user's input, flags or files; the message is shown as is."""


def one_line(error: BaseException) -> str:
  """An anticipated error as one line: an OSError as `FILE: cause`, any other as its
  message with the line breaks folded (its type's name when it has none)."""
  if isinstance(error, OSError) and error.strerror:
    from rnn_jax.io import files  # pylint: disable=import-outside-toplevel
    cause = files.cause(error)
    cause = cause[:1].lower() + cause[1:]
    return f"{error.filename}: {cause}" if error.filename else cause
  return " ".join(str(error).split()) or type(error).__name__

"""Fault injection for the tests that kill a training run: runs an experiment module as
`python -m` would, sending the process a signal (KILL, INT, ...) at a named point:

  python -m tests.kill_at <point> <SIGNAL> experiments.adding_problem --flag=value ...

  step:<epoch>:<step>    after dispatching that train step (both 1-based)
  latest:<epoch>:<step>  inside the write of that latest checkpoint, before its commit
  best:<epoch>           inside the write of that best checkpoint, before its commit
  epoch:<epoch>          after that epoch's checkpoints (before its line and logs)
  results                before writing results.json
  tokenize               before IMDB's reviews are tokenized (after saying so)

The points of the loop are a `KillAt` callback that `rnn_jax.train.fit` (as the
experiments call it) gets beside its built-ins; those inside a checkpoint write are the
`before_commit` of `rnn_jax.io.checkpoints.save`. The library knows nothing of them.
"""
import importlib.util
import os
import re
import runpy
import signal
import sys


def _kill(signum: int) -> None:
  os.kill(os.getpid(), signum)


def _checkpoint_point(directory, name: str) -> str:
  """The point of a checkpoint write: latest:<epoch>:<step> or best:<epoch>."""
  found = re.fullmatch(r"epoch(\d+)(?:-step(\d+))?", name)
  if found is None:
    return ""
  numbers = [str(int(n)) for n in found.groups() if n is not None]
  return ":".join([os.path.basename(os.fspath(directory)), *numbers])


def install(point: str, signum: int) -> None:
  """Wraps `rnn_jax.train.fit`, `rnn_jax.io.checkpoints.save` and IMDB's tokenizer so that
  the process gets `signum` at `point`."""
  from rnn_jax import train  # pylint: disable=import-outside-toplevel
  from rnn_jax.io import checkpoints
  from rnn_jax.data import imdb  # pylint: disable=import-outside-toplevel

  class KillAt(train.Callback):
    """The signal at a step, after an epoch's checkpoints, or before results.json."""

    def on_step(self, run, step, totals):
      if point == f"step:{run.epoch}:{step}":
        _kill(signum)

    def on_epoch_end(self, run):
      if point == f"epoch:{run.epoch}":
        _kill(signum)

    def on_run_end(self, run):
      if point == "results":
        _kill(signum)

  fit = train.fit

  def fit_killed(*args, callbacks=(), defaults=True, **kwargs):
    hooks = [*(train.default_callbacks() if defaults else ()), *callbacks]
    if point.startswith("step:"):  # after the step's own hooks, where the loop looks for Ctrl-C
      at = len(hooks)
    else:  # right after the checkpoints: before the epoch's line and logs, and results.json
      at = next(i for i, c in enumerate(hooks) if isinstance(c, train.Checkpoints)) + 1
    return fit(*args, callbacks=[*hooks[:at], KillAt(), *hooks[at:]], defaults=False,
               **kwargs)

  save = checkpoints.save

  def save_killed(directory, name, *args, before_commit=None, **kwargs):
    def before():
      if before_commit is not None:
        before_commit()
      if point == _checkpoint_point(directory, name):
        _kill(signum)
    return save(directory, name, *args, before_commit=before, **kwargs)

  rank_archive = imdb.rank_archive

  def rank_archive_killed(*args, **kwargs):
    if point == "tokenize":
      _kill(signum)
    return rank_archive(*args, **kwargs)

  train.fit, checkpoints.save, imdb.rank_archive = fit_killed, save_killed, rank_archive_killed


def main(argv) -> None:
  point, signal_name, module, *flags = argv[1:]
  install(point, getattr(signal, "SIG" + signal_name))
  sys.argv = [importlib.util.find_spec(module).origin, *flags]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main(sys.argv)

"""`rnn-jax NAME --flags`: runs experiments/NAME.py of the checkout you are in.

The experiments and benchmarks are not installed with the package; they live in the
project's checkout, next to the data notes and the tests. So `rnn-jax` looks for the
checkout in the current directory and its parents (a directory with
`experiments/__init__.py` and a pyproject.toml naming rnn_jax), and runs
`python -m experiments.NAME --flags` with that checkout first on the path (its rnn_jax
too), in the current directory (so relative --workdir and --data_path mean what they say).

  rnn-jax adding_problem --model=gru          # = python -m experiments.adding_problem ...
  rnn-jax bench --tasks=jena_gru              # = python -m benchmarks.run ...
  rnn-jax --help                              # the experiments of this checkout
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Optional, Sequence

USAGE = "usage: rnn-jax NAME [--flags]   (NAME: {names}, or bench)"


def find_checkout(start: Optional[pathlib.Path] = None) -> Optional[pathlib.Path]:
  """The nearest directory at or above `start` (default: the current one) that holds the
  rnn_jax project's experiments, or None."""
  here = (start or pathlib.Path.cwd()).resolve()
  for directory in (here, *here.parents):
    project = directory / "pyproject.toml"
    if ((directory / "experiments" / "__init__.py").is_file() and project.is_file()
        and 'name = "rnn_jax"' in project.read_text(errors="replace")):
      return directory
  return None


def experiment_names(checkout: pathlib.Path) -> list[str]:
  return sorted(p.stem for p in (checkout / "experiments").glob("*.py")
                if not p.stem.startswith("_"))


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  checkout = find_checkout()
  if checkout is None:
    print(f"error: rnn-jax runs the experiments of an rnn_jax checkout, and "
          f"{pathlib.Path.cwd()} is not inside one; cd into the project's clone "
          "(git clone ... && cd rnn_jax), or use the library from Python", file=sys.stderr)
    return 2
  names = experiment_names(checkout)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE.format(names=", ".join(names)))
    return 0 if argv else 2
  name, flags = argv[0], argv[1:]
  if name == "bench":
    module = "benchmarks.run"
  elif name in names:
    module = f"experiments.{name}"
  else:
    print(f"error: no experiment {name!r} in {checkout / 'experiments'}; choose from "
          f"{', '.join(names)}, or bench", file=sys.stderr)
    return 2
  path = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
  os.execve(sys.executable, [sys.executable, "-m", module, *flags],
            {**os.environ, "PYTHONPATH": path})
  return 0  # not reached: the experiment replaces this process


if __name__ == "__main__":
  sys.exit(main())

"""What `pip install rnn_jax` gives: the cells on JAX alone, only the rnn_jax package, an
`rnn-jax` command for the checkout's experiments."""
import os
import pathlib
import subprocess
import sys
import venv

import pytest

from rnn_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "orbax", "flax", "absl", "optax", "tensorboardX", "tqdm",
         "platformdirs")


def _python(*args, cwd=REPO, python=sys.executable, **kwargs):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("PYTHONPATH", None)
  return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=600, env=env, **kwargs)


def test_importing_the_cells_imports_nothing_heavy():
  code = ("import sys, rnn_jax, rnn_jax.cells, rnn_jax.layers, rnn_jax.recurrent\n"
          f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
  done = _python("-c", code)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "[]"


def test_cli_finds_the_checkout_from_a_subdirectory(tmp_path):
  assert cli.find_checkout(REPO / "rnn_jax" / "cells") == REPO
  assert cli.find_checkout(tmp_path) is None
  assert {"adding_problem", "imdb_sentiment", "jena_forecast", "summarize"} <= set(
      cli.experiment_names(REPO))


def test_cli_outside_a_checkout_is_one_clear_line(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["adding_problem"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: rnn-jax runs the experiments of an rnn_jax checkout")
  assert str(tmp_path) in err and err.count("\n") == 1


def test_cli_names_an_unknown_experiment(capsys, monkeypatch):
  monkeypatch.chdir(REPO / "docs")
  assert cli.main(["cnn"]) == 2
  assert "no experiment 'cnn'" in capsys.readouterr().err


@pytest.mark.e2e
def test_cli_runs_the_experiment_of_the_checkout(tmp_path):
  launcher = f"import sys; sys.path.insert(0, {str(REPO)!r}); from rnn_jax import cli; cli.main()"
  done = _python("-c", launcher, "adding_problem", "--help", cwd=REPO / "docs")
  assert "--seq_len" in done.stdout and "--epochs" in done.stdout, done.stderr


@pytest.mark.slow
def test_a_bare_install_runs_the_plain_jax_example(tmp_path):
  """`pip install .` (no extras) in a fresh virtual environment: only rnn_jax is
  installed, its cells import and the guide's plain-JAX example runs, without pandas,
  matplotlib or orbax; `rnn-jax` outside a checkout says what to do. Needs PyPI (jax)."""
  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=True)
  python = str(env_dir / "bin" / "python")
  done = _python("-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 str(REPO), python=python, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  page = (REPO / "docs" / "guide" / "cells.md").read_text()
  example = page.split("## A GRU under `scan`, `vmap` and `grad`", 1)[1].split("```python\n", 1)[1]
  example = example.split("```", 1)[0]
  check = (
      "import importlib.util\n"
      f"missing = [m for m in {HEAVY!r} if importlib.util.find_spec(m) is None]\n"
      "print('missing', sorted(missing))\n"
      "print('experiments', importlib.util.find_spec('experiments'),"
      " importlib.util.find_spec('benchmarks'))\n" + example)
  done = _python("-c", check, python=python, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"missing {sorted(HEAVY)}" in done.stdout  # none of them was installed
  assert "experiments None None" in done.stdout       # no generic top-level packages
  assert "{'kernel': (3, 24), 'recurrent_kernel': (8, 24), 'bias': (2, 24)}" in done.stdout
  assert "loss " in done.stdout
  cli_done = subprocess.run([str(env_dir / "bin" / "rnn-jax"), "adding_problem"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert cli_done.returncode == 2 and "not inside one" in cli_done.stderr
  typed = _python("-c", "import rnn_jax, pathlib; print((pathlib.Path(rnn_jax.__file__)"
                  ".parent / 'py.typed').is_file())", python=python, cwd=tmp_path)
  assert typed.stdout.strip() == "True"

"""Same flags and seed: the same numbers, across processes and across device counts."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import training_runs as runs

pytestmark = pytest.mark.e2e  # subprocess runs of the experiments: see pyproject.toml


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_two_processes_and_four_devices_agree(tmp_path):
  first, second, four = tmp_path / "first", tmp_path / "second", tmp_path / "four"
  for workdir, flags, env in [
      (first, [], {}), (second, [], {}),
      (four, ["--num_devices=4"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})]:
    done = runs.run(workdir, *flags, **env)
    assert done.returncode == 0, done.stderr
  reference = runs.comparable(runs.results(first))
  assert runs.comparable(runs.results(second)) == reference

  sharded = runs.comparable(runs.results(four))
  assert runs.results(four)["flags"]["num_devices"] == 4
  assert len(sharded["history"]) == len(reference["history"]) == 3
  for row_4, row_1 in zip(sharded["history"], reference["history"]):
    assert row_4.keys() == row_1.keys()
    for key in row_1:
      assert math.isclose(row_4[key], row_1[key], rel_tol=1e-5), (key, row_4[key], row_1[key])
  assert sharded["best_epoch"] == reference["best_epoch"]
  assert sharded["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=1e-5)


def _csv(path, rows=240):
  """Hourly rows of a noisy daily cycle: enough for tiny windows."""
  rng = np.random.default_rng(0)
  hours = np.arange(rows)
  temperature = np.sin(2 * np.pi * hours / 24) + 0.1 * rng.normal(size=rows)
  lines = ["time,p,T"] + [f"{np.datetime64('2020-01-01T00') + h},{rng.normal():.4f},{t:.4f}"
                          for h, t in zip(hours, temperature)]
  path.write_text("\n".join(lines) + "\n")
  return path


def _experiment_runs(tmp_path):
  """module -> (flags, results.json below the workdir) of a short run with dropout."""
  from test_imdb import REVIEWS, make_archive
  many = {key: [f"{text} take {i}" for i in range(4) for text in texts]
          for key, texts in REVIEWS.items()}
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz", many)
  return {
      "experiments.jena_forecast": (
          [f"--data_path={_csv(tmp_path / 'hourly.csv')}", "--target=T", "--time_column=time",
           "--model=gru_dropout", "--lookback=12", "--step=3", "--delay=2", "--batch_size=8",
           "--units=4", "--epochs=2", "--steps_per_epoch=3", "--validation_steps=2",
           "--train_end=120", "--val_end=180"], "gru_dropout/results.json"),
      "experiments.imdb_sentiment": (
          [f"--data_path={archive}", "--model=lstm", "--recurrent_dropout=0.2", "--dropout=0.1",
           "--maxlen=12", "--max_features=40", "--units=4", "--embedding_dim=4",
           "--batch_size=8", "--epochs=2"], "lstm/results.json"),
  }


@pytest.mark.slow  # four experiment processes: ~30 s (the two-process test stays)
@pytest.mark.parametrize("module", ["experiments.jena_forecast", "experiments.imdb_sentiment"])
def test_each_experiment_repeats_itself_across_processes(tmp_path, module):
  """The same flags and seed: identical results.json but for the wall-clock timings."""
  flags, results_file = _experiment_runs(tmp_path)[module]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "RNN_JAX_DATA_CACHE": str(tmp_path / "cache")}
  processes = [subprocess.Popen([sys.executable, "-m", module, *flags,
                                 f"--workdir={tmp_path / name}"], cwd=runs.REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name in ("first", "second")]
  for process in processes:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
  first, second = (json.loads((tmp_path / name / results_file).read_text())
                   for name in ("first", "second"))
  assert len(first["history"]) == 2 and first["test"] is not None
  assert runs.comparable(first) == runs.comparable(second)
  assert first["history"][0]["loss"] != first["history"][1]["loss"]  # it did train

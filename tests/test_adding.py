"""The adding problem: the data's definition, and (slow) the experiment's claim."""
import json
import subprocess
import sys

import numpy as np
import pytest

from rnn_jax.data import adding
import training_runs as runs


def test_sequences_have_two_markers_one_per_half_and_target_their_sum():
  x, y = adding.generate(500, 11, seed=3)
  assert x.shape == (500, 11, 2) and y.shape == (500, 1)
  assert x.dtype == y.dtype == np.float32
  values, markers = x[..., 0], x[..., 1]
  assert ((0 <= values) & (values < 1)).all()
  assert set(np.unique(markers)) == {0.0, 1.0}
  np.testing.assert_array_equal(markers[:, :5].sum(axis=1), 1)  # first half: steps 0..4
  np.testing.assert_array_equal(markers[:, 5:].sum(axis=1), 1)
  np.testing.assert_allclose(y[:, 0], (values * markers).sum(axis=1), rtol=1e-6)
  # Every position of each half is used.
  assert set(np.argmax(markers[:, :5], axis=1)) == set(range(5))
  assert set(5 + np.argmax(markers[:, 5:], axis=1)) == set(range(5, 11))


def test_seeded_and_the_mean_scores_one_sixth():
  a, b, c = (adding.generate(20000, 8, seed=s) for s in (0, 0, 1))
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  assert np.mean((a[1] - 1.0) ** 2) == pytest.approx(adding.CONSTANT_PREDICTION_MSE, rel=0.03)


def test_batches_split_train_validation_test():
  data = adding.batches(seq_len=6, num_train=100, num_test=30, validation_split=0.2,
                        batch_size=16)
  assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (80, 20, 30)
  assert (data.steps_per_epoch, data.val_steps, data.test_steps) == (5, 2, 2)
  assert not np.array_equal(data.x_test[:20], data.x_val)


def test_unknown_model_is_a_one_line_error(tmp_path):
  bad = runs.run(tmp_path, "--model=gru,transformer")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      "error: --model: unknown ['transformer']; choose from ['simple_rnn', 'lstm', 'gru', 'min_gru', 'min_lstm']"]


@pytest.mark.slow
def test_default_experiment_separates_simple_rnn_from_lstm_and_gru(tmp_path):
  """The README's first command: LSTM and GRU solve it, SimpleRNN does no better than the mean."""
  done = subprocess.run([sys.executable, "-m", "experiments.adding_problem",
                         f"--workdir={tmp_path}"], cwd=runs.REPO, capture_output=True,
                        text=True, timeout=1800)
  assert done.returncode == 0, done.stderr
  test_mse = {m: json.loads((tmp_path / m / "results.json").read_text())["test"]["loss"]
              for m in ("simple_rnn", "lstm", "gru")}
  assert test_mse["lstm"] < 0.01 and test_mse["gru"] < 0.01, test_mse
  assert test_mse["simple_rnn"] > 0.1, test_mse
  assert "| model | test MSE | best epoch | seconds |" in done.stdout
  assert (tmp_path / "comparison.png").stat().st_size > 0

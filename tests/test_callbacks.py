"""`fit`'s callbacks: a user's own beside the built-ins (a log every N steps, a stop on a
condition, mid-epoch or after an epoch), and the built-ins dropped or replaced."""
import json
import math

import pytest

from helpers import sum_batches
from rnn_jax import layers, train
from rnn_jax.errors import UserError

MODEL = layers.Sequential([layers.GRU(4), layers.Dense(1)])


def _options(workdir, **kwargs):
  defaults = dict(experiment="test", model_name="gru", workdir=str(workdir), epochs=3,
                  optimizer="adam", learning_rate=1e-2, flags={"seed": 0})
  return train.TrainOptions(**{**defaults, **kwargs})


def _data():
  return sum_batches(96, 40, 16)  # 5 training steps per epoch


class LossEvery(train.Callback):
  """Every `every` steps of the run, the epoch's running training loss (read from the
  device totals: this callback waits for the device); stops once `stop_after` steps ran."""

  def __init__(self, every: int, stop_after: int):
    self.every, self.stop_after = every, stop_after
    self.logged, self.calls = [], []

  def on_step(self, run, step, totals):
    if run.global_step % self.every == 0:
      self.logged.append((run.epoch, step, float(totals["loss"] / totals["count"])))
    if run.global_step >= self.stop_after:
      run.stop(f"{run.global_step} steps")

  def on_epoch_end(self, run):
    self.calls.append(("epoch_end", run.epoch))

  def on_stop(self, run):
    self.calls.append(("stop", run.epoch, run.step))

  def on_run_end(self, run):
    self.calls.append(("run_end", run.results["stopped"]))


def test_a_user_callback_logs_every_n_steps_and_stops_mid_epoch(tmp_path):
  """Logged at steps 2, 4, 6 and 8 of the run; stopped after step 3 of epoch 2, which is
  dropped: the history, the best epoch and the latest checkpoint are epoch 1's."""
  callback = LossEvery(every=2, stop_after=8)
  result = train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path),
                     callbacks=[callback])
  assert [(epoch, step) for epoch, step, _ in callback.logged] == [(1, 2), (1, 4), (2, 1),
                                                                   (2, 3)]
  assert all(math.isfinite(loss) and loss > 0 for _, _, loss in callback.logged)
  stopped = {"reason": "8 steps", "epochs": 1, "steps": 8}
  assert callback.calls == [("epoch_end", 1), ("stop", 2, 3), ("run_end", stopped)]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results == result.results and results["stopped"] == stopped
  assert [row["epoch"] for row in results["history"]] == [1] and results["best_epoch"] == [1]
  assert results["val"]["loss"] == results["history"][0]["val_loss"]
  assert results["test"]["loss"] > 0  # of the best (epoch 1's) params
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").glob("*.sha256")) == [
      "epoch000001-step000000.sha256"]
  with pytest.raises(UserError, match="finished run"):  # stopped is finished: not resumed
    train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, resume=True))


def test_a_stop_at_an_epoch_end_keeps_that_epoch_and_built_ins_can_be_dropped(tmp_path,
                                                                              capsys):
  """A stop requested at the last step of epoch 2 ends the run after epoch 2; without
  the built-in ProgressBar there is no epoch line, and the rest still runs."""
  callbacks = [c for c in train.default_callbacks() if not isinstance(c, train.ProgressBar)]
  result = train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path),
                     callbacks=[*callbacks, LossEvery(every=5, stop_after=10)], defaults=False)
  assert [row["epoch"] for row in result.results["history"]] == [1, 2]
  assert result.results["stopped"] == {"reason": "10 steps", "epochs": 2, "steps": 10}
  out = capsys.readouterr().out
  assert "Epoch 1/3" not in out and "best epoch" in out
  assert (tmp_path / "results.json").exists() and (tmp_path / "metrics.csv").exists()
  assert "early_stopping" not in result.results  # no patience: no record
  with pytest.raises(TypeError, match="Callback instances"):
    train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path / "bad"),
              callbacks=[lambda run: None])
  assert not (tmp_path / "bad").exists()


def test_a_stop_in_the_first_epoch_of_several_seeds_reports_no_epoch(tmp_path):
  """Stopped before any epoch ended: no history or best epoch; the test is of the
  initial params, which are the ones kept."""
  result = train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, num_seeds=2),
                     callbacks=[LossEvery(every=100, stop_after=2)])
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["history"] == [] and results["best_epoch"] == [None, None]
  assert results["val"] is None and results["test"]["loss"] > 0
  assert results["stopped"] == {"reason": "2 steps", "epochs": 0, "steps": 2}
  assert [r["history"] for r in results["replicas"]] == [[], []]
  assert result.params is not None

"""The training loop: Keras's optimizers and losses, results.json, workdir rules, NaN stop."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train_flags
from helpers import sum_batches
from rnn_jax import layers, train
from rnn_jax.train import metrics, optim
from rnn_jax.errors import UserError


def _options(workdir, **kwargs):
  defaults = dict(experiment="test", model_name="gru", workdir=str(workdir), epochs=3,
                  optimizer="adam", learning_rate=1e-2, flags={"seed": 0})
  return train.TrainOptions(**{**defaults, **kwargs})


def _data(n=96, batch_size=16, seed=0):
  return sum_batches(n, 40, batch_size, seed)


MODEL = layers.Sequential([layers.GRU(4), layers.Dense(1)])


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_optimizers_follow_keras(name):
  import keras
  keras_optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}[name]()
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(3, 4)).astype(np.float32)
  grads = [rng.normal(size=(3, 4)).astype(np.float32) * 10**-k for k in range(5)]
  variable = keras.Variable(w0)
  ours = optim.make(name, 1e-3)
  params, state = jnp.asarray(w0), None
  state = ours.init(params)
  for g in grads:
    keras_optimizer.apply_gradients([(jnp.asarray(g), variable)])
    updates, state = ours.update(jnp.asarray(g), state, params)
    params = params + updates
  np.testing.assert_allclose(params, np.asarray(variable.value), rtol=1e-5, atol=1e-7)


def test_clip_norm_clips_the_global_norm():
  grads = {"a": jnp.full((2,), 3.0), "b": jnp.full((2,), 4.0)}  # global norm sqrt(50)
  clip = optim.make("rmsprop", 1.0, clip_norm=1.0)
  plain = optim.make("rmsprop", 1.0)
  small = jax.tree.map(lambda g: g / math.sqrt(50.0), grads)
  u_clip, _ = clip.update(grads, clip.init(grads))
  u_plain, _ = plain.update(small, plain.init(grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u_clip, u_plain)


def test_losses_and_metrics_follow_keras():
  import keras
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(6, 1)).astype(np.float32)
  y = (rng.uniform(size=(6, 1)) > 0.5).astype(np.float32)
  keras_losses = {
      "mae": keras.losses.MeanAbsoluteError(reduction=None),
      "mse": keras.losses.MeanSquaredError(reduction=None),
      "bce_logits": keras.losses.BinaryCrossentropy(from_logits=True, reduction=None),
  }
  for name, keras_loss in keras_losses.items():
    np.testing.assert_allclose(metrics.per_example(name, jnp.asarray(pred), jnp.asarray(y)),
                               keras_loss(y, pred), rtol=1e-6, atol=1e-7)
  accuracy = keras.metrics.BinaryAccuracy(threshold=0.5)
  accuracy.update_state(y, jax.nn.sigmoid(pred))
  ours = metrics.per_example("accuracy", jnp.asarray(pred), jnp.asarray(y[:, 0])).mean()
  np.testing.assert_allclose(ours, float(accuracy.result()), rtol=1e-6)


def test_evaluate_averages_over_real_rows_only():
  batches = [(np.array([1.0, 2.0, 0.0], np.float32), np.zeros(3, np.float32),
              np.array([1.0, 1.0, 0.0], np.float32)),
             (np.array([4.0, 9.0, 9.0], np.float32), np.zeros(3, np.float32),
              np.array([1.0, 0.0, 0.0], np.float32))]
  values = train.evaluate(lambda params, x: x * params, jnp.float32(1.0), batches, loss="mse",
                          metrics=("mae",), target_unit=("degC", 10.0))
  assert values == pytest.approx({"loss": (1 + 4 + 16) / 3, "mae": 7 / 3, "mae_degC": 70 / 3})


def test_fit_writes_results_checkpoints_and_plot(tmp_path, capsys):
  result = train.fit(MODEL, _data(), loss="mse", metrics=("mae",), options=_options(tmp_path),
                     target_unit=("degC", 2.0), extra_results={"note": "hello"})
  results = json.loads((tmp_path / "results.json").read_text())
  assert results == result.results
  assert {"experiment", "model", "flags", "history", "best_epoch", "val", "test", "seconds",
          "note"} <= set(results)
  history = results["history"]
  assert [h["epoch"] for h in history] == [1, 2, 3]
  assert {"loss", "mae", "val_loss", "val_mae", "mae_degC", "val_mae_degC", "seconds",
          "steps_per_s"} <= set(history[0])
  assert history[-1]["loss"] < history[0]["loss"]
  assert history[0]["mae_degC"] == pytest.approx(2 * history[0]["mae"])
  val_losses = [h["val_loss"] for h in history]
  assert results["best_epoch"] == [1 + int(np.argmin(val_losses))]
  assert results["val"]["loss"] == min(val_losses)
  # The test metrics are those of the returned (best) params.
  test = train.evaluate(lambda p, x: MODEL.apply(p, x), result.params, _data().test(),
                        loss="mse", metrics=("mae",))
  assert results["test"]["loss"] == pytest.approx(test["loss"], rel=1e-6)
  assert (tmp_path / "history.png").stat().st_size > 0
  assert (tmp_path / "checkpoints" / "best").is_dir()
  assert "Epoch 3/3" in capsys.readouterr().out

  # A finished run is refused and left untouched ...
  before = (tmp_path / "results.json").read_bytes()
  with pytest.raises(UserError, match="finished run"):
    train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path))
  with pytest.raises(UserError, match="finished run"):
    train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, resume=True))
  assert (tmp_path / "results.json").read_bytes() == before
  # ... unless --overwrite; and the same flags give the same history.
  again = train.fit(MODEL, _data(), loss="mse", metrics=("mae",), target_unit=("degC", 2.0),
                    options=_options(tmp_path, overwrite=True)).results
  strip = lambda h: [{k: v for k, v in row.items() if k not in ("seconds", "steps_per_s")}
                     for row in h]
  assert strip(again["history"]) == strip(history)


def test_unfinished_run_needs_resume_or_overwrite(tmp_path, capsys):
  train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, epochs=1))
  (tmp_path / "results.json").unlink()  # as if killed before the end
  with pytest.raises(UserError, match="unfinished run.*--resume"):
    train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, epochs=2))
  train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, epochs=2, resume=True))
  assert "continuing from checkpoint" in capsys.readouterr().out
  results = json.loads((tmp_path / "results.json").read_text())
  assert [h["epoch"] for h in results["history"]] == [1, 2]


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
  train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, epochs=1, resume=True))
  assert "no checkpoint" in capsys.readouterr().out
  assert (tmp_path / "results.json").exists()


class _PoisonedBatches:
  """Good data, except a NaN target in epoch 2, step 3 (1-based)."""

  def __init__(self):
    self.inner = _data()
    self.batch_size, self.val_steps, self.test_steps = 16, self.inner.val_steps, 0
    self.steps_per_epoch = self.inner.steps_per_epoch

  def train(self, seed, epoch):
    for step, (x, y, w) in enumerate(self.inner.train(seed, epoch), start=1):
      if (epoch, step) == (2, 3):
        y = np.full_like(y, np.nan)
      yield x, y, w

  def val(self):
    return self.inner.val()

  def test(self):
    return iter(())


def test_nan_loss_stops_naming_epoch_and_step(tmp_path):
  with pytest.raises(train.Diverged, match=r"epoch 2 \(first at step 3 of 5\)"):
    train.fit(MODEL, _PoisonedBatches(), loss="mse", options=_options(tmp_path))
  assert not (tmp_path / "results.json").exists()
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").glob("*.sha256")) == [
      "epoch000001-step000000.sha256"]


@pytest.mark.parametrize("flag, value, message", [
    ("epochs", 0, "--epochs must be a positive integer, got 0"),
    ("batch_size", -4, "--batch_size must be a positive integer"),
    ("steps_per_epoch", 0, "--steps_per_epoch must be a positive integer"),
    ("validation_steps", -1, "--validation_steps must be a positive integer"),
    ("num_devices", 0, "--num_devices must be a positive integer"),
    ("validation_split", 1.0, "--validation_split must be in [0, 1)"),
    ("learning_rate", 0.0, "--learning_rate must be positive"),
    ("clip_norm", -1.0, "--clip_norm must be positive"),
])
def test_bad_flag_values_are_named(flag, value, message):
  values = dict(epochs=1, batch_size=8, steps_per_epoch=None, validation_steps=None,
                num_devices=None, validation_split=0.2, learning_rate=1e-3, clip_norm=None)
  with pytest.raises(UserError) as error:
    train_flags.check_values({**values, flag: value})
  assert str(error.value).startswith(message)


def test_steps_and_devices_checked_against_the_data(tmp_path):
  with pytest.raises(UserError, match="--steps_per_epoch=99 but the data has only 5"):
    train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, steps_per_epoch=99))
  with pytest.raises(UserError, match=r"--num_devices=64 but only \d+ local device"):
    train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, num_devices=64))


def test_history_holds_the_gradient_norm_and_how_often_clipping_fired(tmp_path):
  """Per epoch: the mean global gradient norm before clipping, and the fraction of steps
  that --clip_norm changed (all of them for a tiny norm, none for a huge one)."""
  runs = {}
  for name, clip in [("tiny", 1e-6), ("huge", 1e6), ("none", None)]:
    runs[name] = train.fit(MODEL, _data(), loss="mse", options=_options(
        tmp_path / name, epochs=2, clip_norm=clip)).results["history"]
  for name, history in runs.items():
    assert all(row["grad_norm"] > 0 and math.isfinite(row["grad_norm"]) for row in history)
  assert [row["clip_fraction"] for row in runs["tiny"]] == [1.0, 1.0]
  assert [row["clip_fraction"] for row in runs["huge"]] == [0.0, 0.0]
  assert [row["clip_fraction"] for row in runs["none"]] == [0.0, 0.0]
  # The norm is taken before clipping: the first epoch starts from the same params.
  assert runs["tiny"][0]["grad_norm"] != runs["huge"][1]["grad_norm"]
  saved = json.loads((tmp_path / "none" / "results.json").read_text())
  assert "grad_norm" in saved["history"][0]


def test_keep_freed_memory_raises_glibc_thresholds(monkeypatch):
  """`fit` lets glibc keep freed memory (docs/performance.md, "the allocator"): the mmap
  threshold and top pad are set through mallopt on Linux, and nothing is done elsewhere."""
  import platform

  from rnn_jax.train import runtime
  if platform.libc_ver()[0] == "glibc":
    assert train.keep_freed_memory()  # the real call succeeds
  calls = []

  class FakeLibc:
    def mallopt(self, param, value):
      calls.append((param, value))
      return 1

  monkeypatch.setattr(runtime.sys, "platform", "linux")
  monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: FakeLibc())
  assert runtime.keep_freed_memory()
  assert calls == [(-3, 256 << 20), (-2, 64 << 20)]  # M_MMAP_THRESHOLD, M_TOP_PAD
  monkeypatch.setattr(runtime.sys, "platform", "darwin")
  calls.clear()
  assert not runtime.keep_freed_memory() and not calls


def test_fit_changes_no_process_wide_allocator_setting(tmp_path, monkeypatch):
  """`fit` never calls glibc's mallopt (`train.keep_freed_memory` is the caller's choice),
  and records which backend computes each recurrent layer."""
  import ctypes
  calls = []
  real_cdll = ctypes.CDLL

  class Recording(real_cdll):
    def __getattr__(self, name):
      if name == "mallopt":
        calls.append(name)
      return super().__getattr__(name)

  monkeypatch.setattr(ctypes, "CDLL", Recording)
  assert train.keep_freed_memory() in (True, False) and calls == ["mallopt"]  # it is seen
  calls.clear()
  model = layers.Sequential([layers.GRU(4, dropout=0.1), layers.Dense(1)])
  result = train.fit(model, _data(), loss="mse", options=_options(tmp_path / "run", epochs=1))
  assert calls == []
  backend = "per_gate" if jax.default_backend() == "cpu" else "fused"
  assert result.results["config"]["backends"] == [
      {"layer": "model.layers[0]", "cell": "gru", "implementation": "auto", "backend": backend}]
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["config"]["backends"] == result.results["config"]["backends"]

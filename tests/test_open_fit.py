"""An open `fit`: optax optimizers, loss and metric functions, schedules, early stopping,
mixed precision; and the layer stack as data (rnn_jax.io.serialize)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import activations, cells, layers, precision, train
from rnn_jax.train import metrics, optim
from rnn_jax.io import serialize
from rnn_jax.data.batches import ArrayBatches


def _options(workdir, **kwargs):
  defaults = dict(experiment="test", model_name="gru", workdir=str(workdir), epochs=3,
                  optimizer="adam", learning_rate=1e-2, flags={"seed": 0})
  return train.TrainOptions(**{**defaults, **kwargs})


def _data(n=96, batch_size=16, seed=0, val_sign=1.0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(n, 5, 2)).astype(np.float32)
  y = x[:, :, 0].sum(axis=1, keepdims=True)
  split = 3 * n // 4
  return ArrayBatches(x[:split], y[:split], x[split:], val_sign * y[split:], x[:40], y[:40],
                      batch_size=batch_size)


MODEL = layers.Sequential([layers.GRU(4), layers.Dense(1)])


# --- the stack as data -------------------------------------------------------------------

STACKS = [
    layers.Sequential([layers.Embedding(30, 4, mask_zero=True),
                       layers.Bidirectional(layers.LSTM(4, return_sequences=True,
                                                        recurrent_dropout=0.2), merge_mode="sum"),
                       layers.GRU(3, activation="relu", reset_after=False, go_backwards=True),
                       layers.Dropout(0.1), layers.Dense(2, activation=jax.nn.sigmoid)]),
    layers.Sequential([layers.SimpleRNN(3, activation="leaky_relu", return_sequences=True),
                       layers.MGU(3, reset_gate=False, implementation="scan",
                                  return_sequences=True),
                       layers.MinGRU(3, return_sequences=True), layers.MinLSTM(2),
                       layers.Maxout(2, pieces=3)]),
    layers.Sequential([layers.Flatten(), layers.Dense(4, activation="relu"), layers.Dense(1)]),
    layers.Sequential([layers.LSTM(3, implementation="parallel", method="quasi_elk",
                                   return_sequences=True),
                       layers.GRU(2, implementation="recompute")]),
]


@pytest.mark.parametrize("model", STACKS)
def test_config_round_trip_rebuilds_the_same_model(model):
  config = serialize.to_config(model)
  assert json.loads(json.dumps(config)) == config
  rebuilt = serialize.from_config(config)
  assert serialize.to_config(rebuilt) == config
  x = (np.random.default_rng(0).integers(0, 30, (3, 6)) if isinstance(model.layers[0],
                                                                       layers.Embedding)
       else np.random.default_rng(0).normal(size=(3, 6, 2)).astype(np.float32))
  params = model.init(jax.random.key(0), x)
  np.testing.assert_array_equal(model.apply(params, x), rebuilt.apply(params, x))
  import dataclasses
  for layer, again in zip(model.layers, rebuilt.layers):  # implementation=, method=, ...
    assert type(again) is type(layer)
    for field in dataclasses.fields(layer):
      if field.name not in ("cell", "layer", "backward_layer", "activation"):
        assert getattr(again, field.name) == getattr(layer, field.name), field.name


def test_cell_settings_are_recorded_by_name():
  config = serialize.to_config(layers.GRU(5, recurrent_activation="hard_sigmoid",
                                          reset_after=False))
  assert config["cell"] == {"cell": "gru", "activation": "tanh",
                            "recurrent_activation": "hard_sigmoid", "use_bias": True,
                            "reset_after": False}
  # An activation given as a function is written by its name.
  config = serialize.to_config(layers.LSTM(2, activation=activations.get("relu")))
  assert config["cell"]["activation"] == "relu"


def test_an_unregistered_cell_or_activation_is_named():
  import types
  own = types.SimpleNamespace(init=None, initial_carry=None, step=None)
  with pytest.raises(serialize.NotSerializable, match=r"model.layers\[0\].cell: "
                                                      "SimpleNamespace is not a registered"):
    serialize.to_config(layers.Sequential([layers.RNN(own, 3)]))
  with pytest.raises(serialize.NotSerializable, match="has no name"):
    serialize.to_config(layers.Dense(3, activation=lambda x: 2 * x))


def test_results_config_and_model_json_agree(tmp_path):
  """#16's provenance (results.json's config) and #15's model.json: one architecture."""
  train.fit(MODEL, _data(), loss="mse", options=_options(tmp_path, epochs=1,
                                                         compute_dtype="bfloat16"))
  results = json.loads((tmp_path / "results.json").read_text())
  record = json.loads((tmp_path / "model.json").read_text())
  assert results["config"]["architecture"] == record["model"] == serialize.to_config(MODEL)
  assert results["config"]["compute_dtype"] == record["compute_dtype"] == "bfloat16"


def test_a_user_cell_run_saves_a_note_and_loads_with_model_given(tmp_path, capsys):
  import types
  import rnn_jax
  gru = cells.gru()
  own = types.SimpleNamespace(init=gru.init, initial_carry=gru.initial_carry, step=gru.step)
  model = layers.Sequential([layers.RNN(own, 4), layers.Dense(1)])
  result = train.fit(model, _data(), loss="mse", options=_options(tmp_path, epochs=1))
  assert "holds no architecture" in capsys.readouterr().out
  with pytest.raises(Exception, match="pass model="):
    rnn_jax.load(tmp_path)
  predictor = rnn_jax.load(tmp_path, model=model)
  x = _data().x_test
  np.testing.assert_allclose(predictor.predict(x), model.apply(result.params, x), atol=1e-6)


IND_RNN = """
import types
import jax
import jax.numpy as jnp

def init(key, input_size, units):
  k_w, k_u = jax.random.split(key)
  return {"w": jax.random.normal(k_w, (input_size, units)) / jnp.sqrt(input_size),
          "u": jax.random.uniform(k_u, (units,), minval=-1.0, maxval=1.0),
          "b": jnp.zeros((units,))}

def initial_carry(batch_size, units, dtype=jnp.float32):
  return jnp.zeros((batch_size, units), dtype)

def step(params, h, x_t):
  h = jnp.tanh(x_t @ params["w"] + params["u"] * h + params["b"])
  return h, h

ind_rnn = types.SimpleNamespace(init=init, initial_carry=initial_carry, step=step)
"""


def test_a_user_cell_in_a_module_is_written_and_loads_back(tmp_path, monkeypatch):
  import importlib
  import sys
  import rnn_jax
  (tmp_path / "my_cells_for_test.py").write_text(IND_RNN)
  monkeypatch.syspath_prepend(str(tmp_path))
  my_cells = importlib.import_module("my_cells_for_test")
  model = layers.Sequential([layers.RNN(my_cells.ind_rnn, 4, implementation="scan"),
                             layers.Dense(1)])
  config = serialize.to_config(model)
  assert config["layers"][0]["cell"] == {"cell": "my_cells_for_test:ind_rnn"}
  assert config["layers"][0]["implementation"] == "scan"
  run = tmp_path / "run"
  result = train.fit(model, _data(), loss="mse", options=_options(run, epochs=1))
  del sys.modules["my_cells_for_test"]  # loading imports it again
  from rnn_jax.errors import UserError
  with pytest.raises(UserError, match=r"holds the runs run: pass one of them"):
    rnn_jax.load(tmp_path)  # the parent (an experiment's --workdir), not a run
  predictor = rnn_jax.load(run)
  assert serialize.to_config(predictor.model) == config
  x = _data().x_test
  np.testing.assert_allclose(predictor.predict(x), model.apply(result.params, x), atol=1e-6)


def test_cells_initialize_in_bfloat16():
  for make in cells.CELLS.values():
    params = make().init(jax.random.key(0), 3, 4, jnp.bfloat16)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    in_f32 = make().init(jax.random.key(0), 3, 4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        np.asarray(a, np.float32), b, rtol=1e-2, atol=1e-2), params, in_f32)


# --- losses, metrics, optimizers ---------------------------------------------------------

def test_sparse_categorical_crossentropy_and_accuracy_of_classes():
  import keras
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(6,))
  ours = metrics.per_example("sparse_categorical_crossentropy", jnp.asarray(logits), labels)
  theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(
      labels, logits)
  np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-6)
  accuracy = metrics.per_example("accuracy", jnp.asarray(logits), labels[:, None])
  np.testing.assert_array_equal(accuracy, logits.argmax(-1) == labels)
  # One output per target stays binary accuracy.
  np.testing.assert_array_equal(metrics.per_example("accuracy", jnp.array([[1.0], [-1.0]]),
                                                    jnp.array([1.0, 1.0])), [1.0, 0.0])


def test_schedules():
  cosine = optim.schedule("cosine", 1.0, total_steps=110, warmup_steps=10)
  np.testing.assert_allclose([cosine(0), cosine(5), cosine(10), cosine(60), cosine(110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  exponential = optim.schedule("exponential", 1.0, total_steps=100, steps_per_epoch=10,
                               decay_rate=0.5)
  np.testing.assert_allclose([exponential(0), exponential(10), exponential(20)],
                             [1.0, 0.5, 0.25], rtol=1e-6)
  assert optim.schedule("constant", 0.1, total_steps=5) == 0.1
  # Keras's Adam and RMSprop take a schedule.
  for name in optim.OPTIMIZERS:
    opt = optim.make(name, optim.schedule("cosine", 1e-3, total_steps=4, warmup_steps=1))
    params = jnp.ones(3)
    updates, _ = opt.update(jnp.ones(3), opt.init(params), params)
    np.testing.assert_array_equal(updates, 0.0)  # warm-up: zero learning rate at step 0


# --- fit ---------------------------------------------------------------------------------

def test_fit_takes_an_optax_chain_and_a_loss_function(tmp_path):
  def huber(pred, y):
    return optax.huber_loss(pred.reshape(y.shape), y).mean(axis=-1)

  def max_error(pred, y):
    return jnp.abs(pred.reshape(y.shape) - y).max(axis=-1)

  schedule = optax.cosine_decay_schedule(3e-2, 4 * 6)
  chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
  result = train.fit(MODEL, _data(), loss=huber, metrics=(max_error, "mae"), optimizer=chain,
                     options=_options(tmp_path, epochs=4))
  history = result.results["history"]
  assert set(history[0]) >= {"loss", "max_error", "mae", "val_loss", "val_max_error"}
  assert history[-1]["loss"] < 0.5 * history[0]["loss"]
  assert set(result.results["test"]) == {"loss", "max_error", "mae"}


def test_flag_schedule_trains(tmp_path):
  result = train.fit(MODEL, _data(), loss="mse", options=_options(
      tmp_path, epochs=3, lr_schedule="cosine", warmup_steps=3))
  history = result.results["history"]
  assert history[-1]["loss"] < history[0]["loss"]


def test_early_stopping_restores_the_best_epoch(tmp_path, capsys):
  # Validation targets are the negated training targets: the better the fit, the worse
  # the validation loss, which rises from the first epoch on.
  result = train.fit(MODEL, _data(val_sign=-1.0), loss="mse",
                     options=_options(tmp_path, epochs=20, early_stopping_patience=2))
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["early_stopping"] == {"patience": 2, "stopped_epoch": 3, "restored_epoch": [1]}
  assert len(results["history"]) == 3 and results["best_epoch"] == [1]
  assert "early stopping after epoch 3" in capsys.readouterr().out
  # The parameters kept are epoch 1's: the test loss is computed with them.
  assert results["val"]["loss"] == results["history"][0]["val_loss"]
  del result


def test_bfloat16_compute_keeps_float32_params(tmp_path):
  result = train.fit(MODEL, _data(), loss="mse", options=_options(
      tmp_path, epochs=3, compute_dtype="bfloat16"))
  assert {p.dtype for p in jax.tree.leaves(result.params)} == {jnp.dtype(jnp.float32)}
  history = result.results["history"]
  assert history[-1]["loss"] < history[0]["loss"]
  record = json.loads((tmp_path / "model.json").read_text())
  assert record["compute_dtype"] == "bfloat16"
  wrapped = precision.with_compute_dtype(MODEL, "bfloat16")
  x = _data().x_test
  y = wrapped.apply(result.params, x)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, MODEL.apply(result.params, x), atol=0.05)

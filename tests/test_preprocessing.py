"""Preprocessing kinds are registered objects: a run records its kind by name and
`rnn_jax.load` rebuilds it from the registry, so a kind of one's own needs no change to
the loader."""
import json

import numpy as np
import pytest

import rnn_jax
from helpers import sum_batches
from rnn_jax import layers, train
from rnn_jax.data import preprocessing
from rnn_jax.errors import UserError
from rnn_jax.io import run_files


class Scaled(preprocessing.Preprocessing):
  """Raw sequences in another unit: divided by the run's `scale` on the way in, the
  outputs multiplied by it on the way out."""
  kind = "scaled"

  def problem(self, record):
    scale = record.get("scale")
    return None if isinstance(scale, (int, float)) and scale > 0 else "'scale' is not positive"

  def preprocess(self, predictor, raw):
    return np.asarray(raw, np.float32) / predictor.preprocessing["scale"]

  def postprocess(self, predictor, outputs):
    return outputs * predictor.preprocessing["scale"]


@pytest.fixture(name="registry")
def _registry(monkeypatch):
  """The registry as it is, restored after the test."""
  monkeypatch.setattr(preprocessing, "_KINDS", dict(preprocessing._KINDS))  # pylint: disable=protected-access


def test_built_in_kinds_are_registered():
  assert set(preprocessing.kinds()) >= {"arrays", "imdb", "forecast"}
  assert isinstance(preprocessing.get("forecast"), preprocessing.Windows)
  with pytest.raises(ValueError, match="must be one of .*, got 'images'.*register"):
    preprocessing.get("images")
  with pytest.raises(TypeError, match="a Preprocessing instance"):
    preprocessing.register(object())


def test_a_kind_of_ones_own_is_rebuilt_by_load(tmp_path, registry):
  del registry
  workdir = tmp_path / "run"
  options = train.TrainOptions(experiment="test", model_name="gru", workdir=str(workdir),
                               epochs=1, optimizer="adam", learning_rate=1e-2)
  model = layers.Sequential([layers.GRU(4), layers.Dense(1)])
  result = train.fit(model, sum_batches(64, 16), loss="mse", options=options,
                     preprocessing={"kind": "scaled", "scale": 10.0})
  assert json.loads((workdir / "preprocessing.json").read_text()) == {"kind": "scaled",
                                                                        "scale": 10.0}
  with pytest.raises(UserError, match=r"preprocessing.json: not a preprocessing file: 'kind' "
                                      r"is 'scaled', not one of"):
    rnn_jax.load(workdir)  # not registered yet: named, not guessed

  preprocessing.register(Scaled())
  predictor = rnn_jax.load(workdir)
  raw = np.random.default_rng(1).uniform(0, 10, size=(3, 5, 2)).astype(np.float32)
  expected = np.asarray(model.apply(result.params, raw / 10.0, training=False)) * 10.0
  np.testing.assert_allclose(predictor.predict(raw), expected, rtol=1e-5, atol=1e-5)

  # A record the kind refuses, written as a run writes it (its checksum in model.json).
  run_files.write_run_files(workdir, model, raw, options, {"kind": "scaled", "scale": -1},
                            print)
  with pytest.raises(UserError, match="preprocessing.json: not a preprocessing file: 'scale' "
                                      "is not positive"):
    rnn_jax.load(workdir)

"""The lecture's variants: the reversed-review LSTM, and --activation, --reset_after and
--head=maxout in every experiment."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import training_runs as runs
from experiments import imdb_sentiment, variants
from rnn_jax import activations, layers
from rnn_jax.data import imdb
from test_imdb import REVIEWS, make_archive
from test_jena_forecast import jena_csv


def test_reversed_lstm_reads_each_review_reversed_then_padded(tmp_path):
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz")
  maxlen = 4  # shorter than most reviews: truncation keeps each review's first words
  reversed_data = imdb.load(archive, maxlen=maxlen, reverse=True, cache_dir=tmp_path / "c")
  whole = imdb.load(archive, maxlen=None, padding="post", cache_dir=tmp_path / "c")
  reviews = [row[row != 0] for row in whole.x_train]
  expected = imdb.pad_sequences([r[::-1] for r in reviews], maxlen)  # the lecture's recipe
  np.testing.assert_array_equal(reversed_data.x_train, expected)
  model = imdb_sentiment.build_model("reversed_lstm", max_features=100, embedding_dim=4,
                                     units=3)
  lstm = imdb_sentiment.build_model("lstm", max_features=100, embedding_dim=4, units=3)
  assert not model.layers[1].go_backwards  # the data is reversed, not the loop
  params = model.init(jax.random.PRNGKey(0), reversed_data.x_train)
  np.testing.assert_array_equal(model.apply(params, reversed_data.x_train),
                                lstm.apply(params, jnp.asarray(expected)))


def test_lecture_options_reach_the_layers():
  build = lambda **options: layers.Sequential([
      layers.GRU(4, **variants.lecture_options("gru", **options)), *variants.head("maxout", 4)])
  model = build(activation="leaky_relu", reset_after=False)
  gru, maxout, dense = model.layers
  assert isinstance(maxout, layers.Maxout) and maxout.units == 4
  params = model.init(jax.random.PRNGKey(0), jnp.ones((2, 5, 2)))
  assert params[0]["bias"].shape == (12,)  # reset_after=False: one bias
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 2))
  tanh_gru = build(reset_after=False)
  assert not np.allclose(model.apply(params, x), tanh_gru.apply(params, x))
  assert variants.lecture_options("lstm", "elu", False) == {"activation": "elu"}
  assert variants.lecture_options("min_gru", "elu", False) == {}
  assert activations.get("leaky_relu")(jnp.float32(-1.0)) == pytest.approx(-0.1)


LECTURE = ["--activation=leaky_relu", "--reset_after=false", "--head=maxout"]


@pytest.mark.slow  # three experiment processes: ~75 s (the options are tested in-process)
@pytest.mark.parametrize("experiment", ["adding_problem", "imdb_sentiment", "jena_forecast"])
def test_each_experiment_takes_the_lecture_flags(tmp_path, experiment):
  if experiment == "adding_problem":
    args = [*runs.TINY, "--epochs=1"]
  elif experiment == "imdb_sentiment":
    archive = make_archive(tmp_path / "aclImdb_v1.tar.gz",
                           {k: v * 4 for k, v in REVIEWS.items()})
    args = [f"--data_path={archive}", "--model=gru", "--maxlen=12", "--max_features=30",
            "--units=4", "--embedding_dim=4", "--batch_size=8", "--epochs=1"]
  else:
    data = jena_csv(tmp_path / "jena_climate_2009_2016.csv")
    args = [f"--data_path={data}", "--model=gru", "--lookback=12", "--step=2", "--delay=3",
            "--batch_size=8", "--steps_per_epoch=1", "--validation_steps=1", "--epochs=1",
            "--units=4", "--train_end=300", "--val_end=450"]
  done = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", *args, *LECTURE,
                         f"--workdir={tmp_path / 'run'}"], cwd=runs.REPO, capture_output=True,
                        text=True, timeout=600, env=runs.environment(
                            RNN_JAX_DATA_CACHE=str(tmp_path / "cache")))
  assert done.returncode == 0, done.stderr[-2000:]
  found = list((tmp_path / "run").rglob("results.json"))
  results = json.loads(found[0].read_text())
  assert results["flags"]["activation"] == "leaky_relu"
  assert results["flags"]["reset_after"] is False and results["flags"]["head"] == "maxout"
  assert np.isfinite(results["history"][0]["loss"])

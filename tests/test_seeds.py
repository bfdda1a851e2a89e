"""--num_seeds: N replicas in one vmapped program, each exactly its own single-seed run."""
import json
import math

import jax
import numpy as np
import pytest

from experiments import train_flags
from helpers import sum_batches
from rnn_jax import layers, train
from rnn_jax.io import checkpoints
from rnn_jax.errors import UserError

TIMINGS = ("seconds", "steps_per_s")
# Dropout and recurrent dropout: the replicas' dropout keys matter too.
MODEL = layers.Sequential([layers.GRU(4, dropout=0.2, recurrent_dropout=0.2), layers.Dense(1)])


def _data():
  return sum_batches(72, 20)


def _fit(workdir, seed, num_seeds=1, **kwargs):
  settings = dict(experiment="test", model_name="gru", workdir=str(workdir), seed=seed,
                  num_seeds=num_seeds, epochs=3, optimizer="adam", learning_rate=1e-2,
                  flags={"seed": seed})
  options = train.TrainOptions(**{**settings, **kwargs})
  return train.fit(MODEL, _data(), loss="mse", metrics=("mae",), options=options,
                   target_unit=("degC", 2.0))


def _close(a, b, rel=1e-5):
  """Same structure; floats equal within `rel` (timings ignored)."""
  if isinstance(a, dict):
    assert a.keys() == b.keys()
    for k in a:
      if k not in TIMINGS:
        _close(a[k], b[k], rel)
  elif isinstance(a, list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
      _close(x, y, rel)
  elif isinstance(a, float):
    assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-7), (a, b)
  else:
    assert a == b


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("seeds")
  many = _fit(root / "many", seed=5, num_seeds=3)
  single = [_fit(root / f"single{r}", seed=5 + r) for r in range(3)]
  return root, many, single


def test_each_replica_is_its_single_seed_run(runs):
  root, many, single = runs
  results = json.loads((root / "many" / "results.json").read_text())
  assert results == many.results
  assert [r["seed"] for r in results["replicas"]] == [5, 6, 7]
  for replica, alone in zip(results["replicas"], single):
    _close({k: replica[k] for k in ("history", "val", "test")},
           {k: alone.results[k] for k in ("history", "val", "test")})
    assert [replica["best_epoch"]] == alone.results["best_epoch"]  # a list per run
  # The returned (best) params: replica r's are those of run r's best epoch.
  for r, alone in enumerate(single):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[r], b, rtol=1e-5, atol=1e-6),
                 many.params, alone.params)


def test_replicas_differ_and_are_summarized(runs):
  root, many, _ = runs
  results = many.results
  finals = [r["history"][-1]["loss"] for r in results["replicas"]]
  assert len(set(finals)) == 3  # different initialisation, dropout and batch order
  first_weights = [np.asarray(leaf) for leaf in jax.tree.leaves(many.params)][0]
  assert not np.allclose(first_weights[0], first_weights[1])
  val_maes = [r["val"]["mae"] for r in results["replicas"]]
  assert results["mean"]["val"]["mae"] == pytest.approx(np.mean(val_maes))
  assert results["std"]["val"]["mae"] == pytest.approx(np.std(val_maes, ddof=1))
  assert results["std"]["val"]["mae"] > 0
  assert results["mean"]["test"]["mae_degC"] == pytest.approx(
      np.mean([r["test"]["mae_degC"] for r in results["replicas"]]))
  # The top level: the mean over replicas, per epoch.
  assert results["val"] == results["mean"]["val"] and results["test"] == results["mean"]["test"]
  assert results["best_epoch"] == [r["best_epoch"] for r in results["replicas"]]
  assert results["history"][1]["val_loss"] == pytest.approx(
      np.mean([r["history"][1]["val_loss"] for r in results["replicas"]]))
  assert (root / "many" / "history.png").stat().st_size > 0
  # One best checkpoint holds every replica's best params and their best epochs.
  name, state, meta = checkpoints.restore(root / "many" / "checkpoints" / "best",
                                          {"params": many.params})
  assert meta["best_epochs"] == results["best_epoch"]
  jax.tree.map(np.testing.assert_array_equal, state["params"], many.params)


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_resume_of_many_seeds_gives_the_same_results(runs, tmp_path):
  _, many, _ = runs
  _fit(tmp_path, seed=5, num_seeds=3, epochs=1)
  (tmp_path / "results.json").unlink()  # as if killed after epoch 1
  resumed = _fit(tmp_path, seed=5, num_seeds=3, resume=True).results
  _close({k: resumed[k] for k in ("history", "replicas", "mean", "std")},
         {k: many.results[k] for k in ("history", "replicas", "mean", "std")}, rel=1e-6)


def test_bad_num_seeds_is_named():
  values = dict(epochs=1, batch_size=8, steps_per_epoch=None, validation_steps=None,
                num_devices=None, validation_split=0.2, learning_rate=1e-3, clip_norm=None)
  with pytest.raises(UserError, match="--num_seeds must be a positive integer, got 0"):
    train_flags.check_values({**values, "num_seeds": 0})


def test_summarize_shows_mean_and_std_of_replicas(runs):
  from experiments import summarize
  root, many, _ = runs
  found = [r for r in summarize.load_results(root) if r["path"].endswith("many/results.json")]
  (line,) = [l for l in summarize.table(found).splitlines() if l.startswith("| gru")]
  mean, std = many.results["mean"]["val"], many.results["std"]["val"]
  best = ",".join(map(str, many.results["best_epoch"]))
  assert line.startswith(f"| gru | {best} | {mean['loss']:.4g} ± {std['loss']:.2g} | "
                         f"{mean['mae']:.4g} ± {std['mae']:.2g} | "
                         f"{mean['mae_degC']:.4g} ± {std['mae_degC']:.2g} | ")
  assert line.endswith(" | many |")

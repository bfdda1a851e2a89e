"""From a run to a model you can use: an IMDB and a forecasting run trained on 2 devices,
loaded in a new process on 1 device (rnn_jax.load), their test metrics reproduced from
raw inputs; experiments.predict on new inputs; the jax.export artifact in a process that
imports only jax and numpy."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_imdb import many_reviews_archive
from test_jena_forecast import jena_csv

REPO = Path(__file__).resolve().parents[1]
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _run(args, *, env=None, cwd=REPO, timeout=600):
  environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # 1 device...
  environment.update({"JAX_PLATFORMS": "cpu", **(env or {})})  # ...unless env says 2
  done = subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True,
                        text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _python(code, **kwargs):
  """Runs `code` in a new process; returns its last stdout line as JSON."""
  done = _run(["-c", textwrap.dedent(code)], **kwargs)
  return json.loads(done.stdout.strip().splitlines()[-1])


JAX_ONLY = """
import json, sys
import jax, numpy as np
exported = jax.export.deserialize(open({artifact!r}, "rb").read())
x = np.load({inputs!r})
y = np.asarray(exported.call(x))
halves = np.concatenate([np.asarray(exported.call(x[:3])), np.asarray(exported.call(x[3:]))])
others = sorted({{m.split(".")[0] for m in sys.modules}} & {{"rnn_jax", "flax", "optax", "orbax", "pandas"}})
print(json.dumps({{"y": y.tolist(), "halves": halves.tolist(), "others": others}}))
"""


def _check_export(tmp_path, artifact, inputs, expected):
  """The artifact in a jax+numpy-only process: the predictor's outputs, any batch size."""
  got = _python(JAX_ONLY.format(artifact=str(artifact), inputs=str(inputs)), cwd=tmp_path)
  assert got["others"] == []
  np.testing.assert_allclose(got["y"], expected, atol=1e-6, rtol=0)
  np.testing.assert_allclose(got["halves"], expected, atol=1e-6, rtol=0)


# --- IMDB --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imdb_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("imdb")
  archive = many_reviews_archive(tmp / "aclImdb_v1.tar.gz")
  _run(["-m", "experiments.imdb_sentiment", f"--data_path={archive}", f"--workdir={tmp / 'run'}",
        "--maxlen=20", "--max_features=30", "--units=4", "--embedding_dim=4", "--batch_size=8",
        "--epochs=2"], env={**TWO_DEVICES, "RNN_JAX_DATA_CACHE": str(tmp / "cache")})
  return tmp, archive


LOAD_IMDB = """
import json
import jax, numpy as np, optax
import rnn_jax
from rnn_jax.data import imdb
predictor = rnn_jax.load({run!r})
reviews = imdb.read_archive({archive!r})
texts = [text for label in ("neg", "pos") for _, text in reviews["test", label]]
labels = np.array([label == "pos" for label in ("neg", "pos")
                   for _ in reviews["test", label]], np.float32)
x = predictor.preprocess(texts)
logits = predictor.apply(x)[:, 0]
np.save({inputs!r}, x[:7])
print(json.dumps({{
    "devices": len(jax.devices()),
    "loss": float(np.mean(optax.sigmoid_binary_cross_entropy(logits, labels))),
    "accuracy": float(np.mean((logits > 0) == (labels > 0.5))),
    "probabilities": predictor.predict(texts[:7]).tolist(),
    "new": predictor.predict({new!r}).tolist()}}))
"""
NEW_REVIEWS = ["A great film, I loved it!", "Boring and bad. Don't watch it.", "Unseen words only"]


@pytest.mark.e2e
def test_imdb_run_loads_predicts_and_exports(imdb_run, tmp_path):
  tmp, archive = imdb_run
  run = tmp / "run" / "lstm"  # --workdir is the parent of each --model's run
  assert {"model.json", "preprocessing.json", "vocabulary.txt"} <= set(os.listdir(run))
  results = json.loads((run / "results.json").read_text())
  inputs = tmp_path / "x.npy"
  got = _python(LOAD_IMDB.format(run=str(run), archive=str(archive), inputs=str(inputs),
                                 new=NEW_REVIEWS))
  assert got["devices"] == 1  # trained on 2
  assert abs(got["loss"] - results["test"]["loss"]) <= 1e-6
  assert abs(got["accuracy"] - results["test"]["accuracy"]) <= 1e-6

  reviews = tmp_path / "reviews.txt"
  reviews.write_text("\n".join(NEW_REVIEWS[:2] + ["", NEW_REVIEWS[2]]) + "\n")
  done = _run(["-m", "experiments.predict", f"--run={run}", f"--input={reviews}",
               f"--output={tmp_path / 'p.csv'}", f"--export={tmp_path / 'model.jax'}"])
  assert "wrote 3 predictions" in done.stdout
  import pandas as pd
  table = pd.read_csv(tmp_path / "p.csv")
  assert list(table.columns) == ["line", "probability_positive"]
  assert table["line"].tolist() == [1, 2, 4]
  np.testing.assert_allclose(table["probability_positive"], got["new"], atol=1e-6)
  _check_export(tmp_path, tmp_path / "model.jax", inputs, got["probabilities"])


# --- forecasting -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forecast_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("forecast")
  data = jena_csv(tmp / "weather.csv")
  _run(["-m", "experiments.jena_forecast", "--model=gru,reversed_gru", f"--data_path={data}",
        "--time_column=Date Time", "--lookback=12", "--step=2", "--delay=3", "--batch_size=8",
        "--steps_per_epoch=4", "--epochs=2", "--units=4", "--train_end=300", "--val_end=450",
        f"--workdir={tmp / 'runs'}"], env=TWO_DEVICES)
  return tmp, data


LOAD_FORECAST = """
import json
import jax, numpy as np, pandas as pd
import rnn_jax
from rnn_jax.data import windows
out = {{"devices": len(jax.devices())}}
for model in {models!r}:
  run = {runs!r} + "/" + model
  r = json.load(open(run + "/results.json"))
  predictor = rnn_jax.load(run)
  prep = predictor.preprocessing
  t = prep["columns"].index(prep["target"])
  raw = predictor.preprocessing_kind.values(predictor, {data!r})  # as training read them
  normalized = ((raw - np.array(prep["mean"])) / np.array(prep["std"])).astype(np.float32)
  _, _, test = windows.generator_bounds(len(raw), r["train_end"], r["val_end"], r["delay"])
  rows = np.concatenate(list(windows.ordered_rows(test, r["lookback"], r["config"]["batch_size"],
                                                  r["test_steps"])))
  x = predictor.preprocess({data!r})
  outputs = predictor.apply(x)[:, 0]
  in_unit = predictor.predict({data!r})
  frame = predictor.predict(pd.read_csv({data!r}))
  np.save({inputs!r} + model + ".npy", x[:7])
  out[model] = {{
      "windows": len(x), "rows": len(raw),
      "mae": float(np.mean(np.abs(outputs[rows - r["lookback"]] - normalized[rows + r["delay"], t]))),
      "mae_unit": float(np.mean(np.abs(in_unit[rows - r["lookback"]] - raw[rows + r["delay"], t]))),
      "frame_vs_csv": float(np.abs(frame - in_unit).max()),
      "first": in_unit[:7].tolist(), "new": predictor.predict({new!r}).tolist()}}
print(json.dumps(out))
"""


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
@pytest.mark.e2e
def test_forecast_runs_load_predict_and_export(forecast_runs, tmp_path):
  tmp, data = forecast_runs
  new = jena_csv(tmp_path / "new.csv", rows=60, seed=3)
  got = _python(LOAD_FORECAST.format(runs=str(tmp / "runs"), data=str(data), new=str(new),
                                     inputs=str(tmp_path / "x_"), models=("gru", "reversed_gru")))
  assert got["devices"] == 1
  for model in ("gru", "reversed_gru"):
    results = json.loads((tmp / "runs" / model / "results.json").read_text())
    mine = got[model]
    assert mine["windows"] == mine["rows"] - 12 + 1  # every row with `lookback` rows behind
    assert abs(mine["mae"] - results["test"]["mae"]) <= 1e-6
    assert abs(mine["mae_unit"] - results["test"]["mae_degC"]) <= 1e-5 * results["target_std"]
    assert mine["frame_vs_csv"] <= 1e-5
    assert len(mine["new"]) == 60 - 12 + 1

  out = tmp_path / "f.csv"
  _run(["-m", "experiments.predict", f"--run={tmp / 'runs' / 'reversed_gru'}", f"--input={new}",
        f"--output={out}", f"--export={tmp_path / 'model.jax'}"])
  import pandas as pd
  table = pd.read_csv(out)
  assert list(table.columns) == ["row", "time", "T (degC) forecast (degC)"]
  assert table["row"].tolist() == list(range(12 + 3, 60 + 1 + 3))
  assert table["time"].iloc[0] == "2009-01-01 02:40:00"  # row 15: 10 minutes a row from 00:10
  np.testing.assert_allclose(table["T (degC) forecast (degC)"], got["reversed_gru"]["new"],
                             atol=1e-5)
  _check_export(tmp_path, tmp_path / "model.jax", tmp_path / "x_reversed_gru.npy",
                got["reversed_gru"]["first"])


# --- the adding problem, and what a bad --run says ---------------------------------------

@pytest.mark.slow  # ~30 s: kept out of CI's 12 minutes (IMDB and forecasting stay in)
@pytest.mark.e2e
def test_adding_run_predicts_arrays_and_bad_runs_are_one_line(tmp_path):
  from training_runs import run
  done = run(tmp_path / "runs")
  assert done.returncode == 0, done.stderr[-2000:]
  x = np.random.default_rng(0).uniform(size=(5, 6, 2)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  _run(["-m", "experiments.predict", f"--run={tmp_path / 'runs' / 'gru'}",
        f"--input={tmp_path / 'x.npy'}", f"--output={tmp_path / 'y.csv'}"])
  import pandas as pd
  assert pd.read_csv(tmp_path / "y.csv").shape == (5, 1)
  bad = subprocess.run([sys.executable, "-m", "experiments.predict", f"--run={tmp_path / 'no'}",
                        "--export=m.jax"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'no'}: no such run directory"]


# --- the guide ---------------------------------------------------------------------------

@pytest.mark.e2e
def test_guide_loads_a_run_of_the_experiment(imdb_run, tmp_path, monkeypatch, capsys):
  """docs/guide/using-a-model.md's loading, export and jax-only blocks on a run that
  `experiments.imdb_sentiment` trained (test_docs runs them on the page's own tiny run)."""
  import shutil
  from test_docs import python_blocks
  tmp, _ = imdb_run
  shutil.copytree(tmp / "run" / "lstm", tmp_path / "runs" / "imdb_sentiment" / "lstm")
  monkeypatch.chdir(tmp_path)
  blocks = [b for b in python_blocks(REPO / "docs" / "guide" / "using-a-model.md")
            if "train.fit(" not in b.code]
  assert len(blocks) == 3
  namespace = {}
  for block in blocks:
    exec(compile(block.code, block.name, "exec"), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith("(2, 20) [")  # the run's maxlen
  assert printed[1] == "lstm {'bias': (16,), 'kernel': (4, 16), 'recurrent_kernel': (4, 16)}"
  assert printed[2] == str(namespace["probabilities"].round(3))  # the exported model's
  assert (tmp_path / "lstm.jax").is_file()


# --- on the real data (by hand: ./run.sh test -m slow tests/test_predict.py) ---------------

SHARED = REPO.parent / "shared" / "data"
ACLIMDB = SHARED / "aclImdb_v1.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not ACLIMDB.is_file(), reason=f"needs {ACLIMDB}")
def test_real_imdb_run_reloads_on_one_device(tmp_path):
  _run(["-m", "experiments.imdb_sentiment", f"--data_path={ACLIMDB}", f"--workdir={tmp_path / 'run'}",
        "--epochs=2"], env={**TWO_DEVICES, "RNN_JAX_DATA_CACHE": str(tmp_path / "cache")},
       timeout=3600)
  results = json.loads((tmp_path / "run" / "lstm" / "results.json").read_text())
  got = _python(LOAD_IMDB.format(run=str(tmp_path / "run" / "lstm"), archive=str(ACLIMDB),
                                 inputs=str(tmp_path / "x.npy"), new=NEW_REVIEWS), timeout=3600)
  assert got["devices"] == 1
  assert abs(got["loss"] - results["test"]["loss"]) <= 1e-6
  assert abs(got["accuracy"] - results["test"]["accuracy"]) <= 1e-6


@pytest.mark.slow
@pytest.mark.skipif(not ACLIMDB.is_file(), reason=f"needs {ACLIMDB}")
def test_bfloat16_lstm_within_a_point_of_float32(tmp_path):
  """The lecture's IMDB LSTM, 10 epochs, in float32 and with --compute_dtype=bfloat16.
  Hours on a CPU without bfloat16 arithmetic (docs/performance.md): for accelerators."""
  accuracy = {}
  for dtype in ("float32", "bfloat16"):
    _run(["-m", "experiments.imdb_sentiment", f"--data_path={ACLIMDB}",
          f"--workdir={tmp_path / dtype}", f"--compute_dtype={dtype}"],
         env={"RNN_JAX_DATA_CACHE": str(tmp_path / "cache")}, timeout=6 * 3600)
    results = json.loads((tmp_path / dtype / "lstm" / "results.json").read_text())
    accuracy[dtype] = results["test"]["accuracy"]
  assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.01, accuracy


PRSA = SHARED / "PRSA_Data_Aotizhongxin_20130301-20170228.csv"


@pytest.mark.slow
@pytest.mark.skipif(not PRSA.is_file(), reason=f"needs {PRSA}")
def test_real_weather_run_reloads_on_one_device(tmp_path):
  """Hourly Beijing weather (missing cells interpolated, times in four columns), a short
  GRU run on 2 devices: rnn_jax.load on 1 device reproduces its test MAE from the CSV."""
  _run(["-m", "experiments.jena_forecast", "--model=gru", f"--data_path={PRSA}",
        "--target=TEMP", "--time_columns=year,month,day,hour", "--exclude=No",
        "--fill_missing=interpolate", "--target_unit=degC", "--lookback=48", "--step=1",
        "--delay=24", "--train_fraction=0.5", "--val_fraction=0.25", "--epochs=1",
        "--steps_per_epoch=20", "--units=8", f"--workdir={tmp_path / 'runs'}"], env=TWO_DEVICES)
  got = _python(LOAD_FORECAST.format(runs=str(tmp_path / "runs"), data=str(PRSA), new=str(PRSA),
                                     inputs=str(tmp_path / "x_"), models=("gru",)))
  assert got["devices"] == 1
  results = json.loads((tmp_path / "runs" / "gru" / "results.json").read_text())
  assert abs(got["gru"]["mae"] - results["test"]["mae"]) <= 1e-6
  assert abs(got["gru"]["mae_unit"] - results["test"]["mae_degC"]) <= 1e-5 * results["target_std"]
  assert got["gru"]["frame_vs_csv"] <= 1e-4

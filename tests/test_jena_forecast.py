"""The Jena format and download, and every forecasting model end to end on a tiny CSV."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from rnn_jax.data import jena, timeseries
from rnn_jax.errors import UserError

HEADER = ("Date Time,p (mbar),T (degC),Tpot (K),Tdew (degC),rh (%),VPmax (mbar),VPact (mbar),"
          "VPdef (mbar),sh (g/kg),H2OC (mmol/mol),rho (g/m**3),wv (m/s),max. wv (m/s),wd (deg)")
MODELS = ["naive", "mlp", "gru", "gru_dropout", "stacked_gru", "reversed_gru",
          "bidirectional_gru", "lstm"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jena_csv(path, rows=600, seed=0):
  """A small file in the Jena CSV's format: 10-minute rows from 01.01.2009 00:10:00."""
  rng = np.random.default_rng(seed)
  minutes = 10 * np.arange(1, rows + 1)
  times = np.datetime64("2009-01-01T00:00") + minutes.astype("timedelta64[m]")
  daily = np.sin(2 * np.pi * minutes / 1440.0)
  temperature = -8 + 5 * daily + 0.3 * rng.normal(size=rows)
  lines = [HEADER]
  for t, temp in zip(times, temperature):
    stamp = t.astype(object).strftime("%d.%m.%Y %H:%M:%S")
    other = rng.normal(size=12).round(2)
    lines.append(",".join([stamp, "996.52", f"{temp:.2f}", *map(str, other)]))
  path.write_text("\n".join(lines) + "\n")
  return path


def test_parses_the_jena_format(tmp_path):
  series = timeseries.read_csv(jena_csv(tmp_path / "j.csv", rows=50), jena.csv_spec())
  assert len(series.columns) == 14 and series.columns[1] == "T (degC)"
  assert series.target_index == 1
  assert series.values.shape == (50, 14)
  assert str(series.times[0]) == "2009-01-01T00:10:00.000000000"
  assert str(series.times[-1]).startswith("2009-01-01T08:20")
  assert series.spacing == np.timedelta64(10, "m")


def test_git_blob_id_matches_git_and_fixtures_are_not_canonical(tmp_path):
  path = jena_csv(tmp_path / "j.csv", rows=5)
  git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True)
  if git.returncode == 0:
    with open(path, "rb") as f:
      assert jena.git_blob_id(f, path.stat().st_size) == git.stdout.strip()
  assert not jena.is_canonical(path)


def test_absent_and_undownloadable_file_says_where_to_put_it(tmp_path, monkeypatch):
  monkeypatch.setattr(jena, "URL", (tmp_path / "nowhere.zip").as_uri())
  with pytest.raises(UserError, match=f"cannot download .*; put {jena.CSV_NAME} or "
                                      f"{jena.CSV_NAME}.zip in {tmp_path / 'cache'}/"):
    jena.locate(cache_dir=tmp_path / "cache")
  assert not [p for p in (tmp_path / "cache").iterdir()]  # nothing half-written


def test_cached_zip_is_used_and_read(tmp_path):
  cache = tmp_path / "cache"
  cache.mkdir()
  with zipfile.ZipFile(cache / (jena.CSV_NAME + ".zip"), "w") as z:
    z.write(jena_csv(tmp_path / "j.csv", rows=20), jena.CSV_NAME)
  path = jena.locate(cache_dir=cache)
  assert path.name == jena.CSV_NAME + ".zip"
  assert timeseries.read_csv(path, jena.csv_spec()).values.shape == (20, 14)


def run(module, *args, timeout=600):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def all_models(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("forecast")
  data = jena_csv(tmp / jena.CSV_NAME)
  workdir = tmp / "runs"
  proc = run("experiments.jena_forecast", f"--model={','.join(MODELS)}", f"--data_path={data}",
             "--lookback=12", "--step=2", "--delay=3", "--batch_size=8", "--steps_per_epoch=2",
             "--validation_steps=2", "--epochs=1", "--units=4", "--train_end=300",
             "--val_end=450", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
@pytest.mark.e2e
def test_every_model_runs_end_to_end(all_models):
  assert (all_models / "target.png").is_file()
  assert (all_models / "target_first_10_days.png").is_file()
  for model in MODELS:
    results = json.loads((all_models / model / "results.json").read_text())
    assert results["model"] == model and results["experiment"] == "jena_forecast"
    assert results["val"]["mae"] > 0
    np.testing.assert_allclose(results["val"]["mae_degC"],
                               results["val"]["mae"] * results["target_std"], rtol=1e-5)
    assert results["test"] is not None
    assert (all_models / model / "predictions.png").is_file()
    if model != "naive":
      assert len(results["history"]) == 1 and results["best_epoch"] == [1]
      assert results["flags"]["epochs"] == 1


@pytest.mark.slow  # the all_models fixture trains every model (~45 s): CI stays within 12 minutes
@pytest.mark.e2e
def test_naive_baseline_is_the_lecture_s(all_models):
  """The lecture's evaluate_naive_method: mean |last target of the window - target|."""
  results = json.loads((all_models / "naive" / "results.json").read_text())
  series = timeseries.read_csv(results["data"], jena.csv_spec())
  data = timeseries.Normalization.fit(series.values[:300])(series.values)
  rows = np.arange(301 + 12, 301 + 12 + 2 * 8)  # the first two validation batches
  preds, targets = data[rows - 2, 1], data[rows + 3, 1]
  np.testing.assert_allclose(results["val"]["mae"], np.mean(np.abs(preds - targets)), rtol=1e-5)


@pytest.mark.slow  # the all_models fixture trains every model (~45 s): CI stays within 12 minutes
@pytest.mark.e2e
def test_summarize_builds_its_table_and_chart(all_models):
  proc = run("experiments.summarize", f"--workdir={all_models}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  table = proc.stdout.split("## jena_forecast\n", 1)[1].split("\nwrote")[0]
  assert "| val MAE (normalized) | val MAE (degC) |" in table.splitlines()[1]
  rows = table.strip().splitlines()[2:]
  assert [row.split("|")[1].strip() for row in rows] == ["naive", *sorted(MODELS[1:])]
  assert [row.split("|")[-2].strip() for row in rows] == ["naive", *sorted(MODELS[1:])]  # run
  assert (all_models / "val_mae.png").stat().st_size > 0
  assert (all_models / "val_mae.svg").stat().st_size > 0
  assert (all_models / "summary.md").read_text().strip() == proc.stdout.split("\nwrote")[0].strip()


@pytest.mark.e2e
def test_a_bad_cell_is_one_line_and_exit_2(tmp_path):
  data = jena_csv(tmp_path / "bad.csv", rows=30)
  lines = data.read_text().splitlines()
  lines[7] = lines[7].replace(",996.52,", ",oops,")
  data.write_text("\n".join(lines) + "\n")
  proc = run("experiments.jena_forecast", "--model=naive", f"--data_path={data}",
             f"--workdir={tmp_path / 'runs'}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: {data} line 8, column 'p (mbar)': not a number: 'oops'")
  assert not (tmp_path / "runs").exists()


PRSA = "/work/shared/data/PRSA_Data_Aotizhongxin_20130301-20170228.csv"


@pytest.mark.slow
@pytest.mark.parametrize("model,factor", [("gru", 0.95), ("min_gru", 1.0)])
def test_gru_beats_the_naive_baseline_on_real_hourly_weather(tmp_path, model, factor):
  """The issues' acceptance check (about 10 minutes on 2 CPU cores for the GRU)."""
  if not os.path.exists(PRSA):
    pytest.skip(f"needs the real hourly weather file {PRSA}")
  proc = run("experiments.jena_forecast", f"--model=naive,{model}", f"--data_path={PRSA}",
             "--target=TEMP", "--time_columns=year,month,day,hour", "--exclude=No",
             "--fill_missing=interpolate", "--target_unit=degC", "--lookback=240", "--step=1",
             "--delay=24", "--train_fraction=0.5", "--val_fraction=0.25", "--epochs=10",
             "--steps_per_epoch=200", f"--workdir={tmp_path}", timeout=3600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  val = {m: json.loads((tmp_path / m / "results.json").read_text())["val"]["mae"]
         for m in ("naive", model)}
  assert val[model] < factor * val["naive"], val
